"""Update bundle format: exact bytes, round trips, streaming, every corruption class, overhead."""
from __future__ import annotations

import errno
import io
import json
import re
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
import xxhash
import zstandard

from bench.fuzz_bundle import pack, split
from device_agent.device_model import DeviceModel, QuantizedWeight, canonical_json
from device_agent.diff import Diff, HashedDelta, SparseDelta, apply_diff
from device_agent.errors import BundleError, DiffError, DiskFullError, FileMissingError, WrongBaseError
from device_agent.model_config import ModelConfig, tensor_layout
from device_agent.model_format import encode_model
from device_agent.tokenizer import CharTokenizer
from device_agent import bundle as bundle_format
from packager import bundle as bundle_writer
from device_agent.bundle import (MAGIC, MAX_MANIFEST_BYTES, PREAMBLE, BundleReader, apply_bundle, bundle_overhead,
                                 decode_bundle, inspect_bundle, read_bundle_manifest, verify_bundle_for_model)
from packager.bundle import encode_diff_bundle, encode_full_bundle, save_bundle
from tests.tiny import tiny_device_model

# Pinned: any change to the byte layout, the encodings or the compression level
# changes these and must come with a format version bump and a docs update.
# Compressed bytes are those of the zstd release the `test` extra pins (pyproject.toml).
PINNED_BUNDLE_XXH64 = "58b2786e4170c878"
PINNED_MANIFEST = (
    b'{"base_hash":"11a8fa64040168e6e6359a5b0f2daddb","base_version":1,"kind":"diff","metadata":{"run":"pin"},'
    b'"method":"mixed","model_id":"tiny","sections":{'
    b'"joint.out.weight":{"count":3,"encoding":"index","length":16,"numel":232,"offset":0,"raw_length":7,'
    b'"xxh64":"a0b27f0b19e4603f"},'
    b'"predictor.embed.weight":{"encoding":"hashed","length":13,"num_buckets":4,"numel":116,"offset":16,'
    b'"raw_length":4,"xxh64":"8df25b2f47981dfa"}},'
    b'"seed":42,"target_hash":"bcc5ac816c61fc325531dcf6ae7b8656","target_version":2}')
PINNED_COMPACT_XXH64 = "23e946067e3e2170"  # the same diff in format 3 (manifest compressed)


# --- fixtures ---------------------------------------------------------------------------
def _finish(diff: Diff, base: DeviceModel) -> Diff:
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def _sparse(rng: np.random.Generator, numel: int, k: int) -> SparseDelta:
    values = rng.integers(1, 128, size=k) * rng.choice([-1, 1], size=k)
    return SparseDelta(np.sort(rng.choice(numel, size=k, replace=False)), values.astype(np.int8))


@pytest.fixture(scope="module")
def base() -> DeviceModel:
    return tiny_device_model()


@pytest.fixture(scope="module")
def sparse_diff(base: DeviceModel) -> Diff:
    rng = np.random.default_rng(5)
    # 1 change in a tensor picks the index coding, 60% picks the bitmask (the embedding: 116 entries, so
    # its bitmask has padding bits)
    deltas = {n: _sparse(rng, w.q.size, 1 if i % 2 and n != "predictor.embed.weight" else int(0.6 * w.q.size))
              for i, (n, w) in enumerate(sorted(base.weights.items()))}
    return _finish(Diff("sparse", base.model_id, 1, 2, base.content_hash(), "", deltas), base)


@pytest.fixture(scope="module")
def hashed_diff(base: DeviceModel) -> Diff:
    rng = np.random.default_rng(6)
    deltas = {n: HashedDelta(8, rng.integers(-4, 5, size=8).astype(np.int8)) for n in base.weights}
    return _finish(Diff("hashed", base.model_id, 1, 3, base.content_hash(), "", deltas, seed=2024), base)


@pytest.fixture(scope="module")
def sparse_bytes(sparse_diff: Diff, base: DeviceModel) -> bytes:
    return encode_diff_bundle(sparse_diff, base)


@pytest.fixture(scope="module")
def target() -> DeviceModel:
    model = tiny_device_model(9)
    model.version = 5
    return model


@pytest.fixture(scope="module")
def full_bytes(target: DeviceModel) -> bytes:
    return encode_full_bundle(encode_model(target), target)


def pinned_diff(base: DeviceModel) -> Diff:
    deltas = {"joint.out.weight": SparseDelta([3, 50, 231], [1, -2, 127]),
              "predictor.embed.weight": HashedDelta(4, [1, -1, 0, 3])}
    return _finish(Diff("mixed", base.model_id, 1, 2, base.content_hash(), "", deltas, 42, {"run": "pin"}), base)


def manifest_of(data: bytes) -> dict:
    return split(data)[0]


def sections_of(data: bytes) -> list[bytes]:
    return split(data)[1]


repack = pack  # the attacker's re-encoding, shared with the fuzzer


def with_body(data: bytes, body: bytes) -> bytes:
    return PREAMBLE.pack(MAGIC, 1, 0, len(body)) + body + b"".join(sections_of(data))


# --- exact bytes and round trips ------------------------------------------------------------
def test_encoding_is_pinned_to_exact_bytes(base: DeviceModel) -> None:
    diff = pinned_diff(base)
    data = encode_diff_bundle(diff, base)
    magic, version, reserved, n = PREAMBLE.unpack_from(data)
    assert (magic, version, reserved) == (b"OTABNDL\0", 1, 0)
    assert data[PREAMBLE.size:PREAMBLE.size + n] == PINNED_MANIFEST
    assert len(data) == PREAMBLE.size + len(PINNED_MANIFEST) + 16 + 13
    assert xxhash.xxh64_hexdigest(data) == PINNED_BUNDLE_XXH64
    assert encode_diff_bundle(pinned_diff(base), base) == data  # deterministic
    # the index section's raw bytes: varint gaps 3, 46, 180 then int8 values 1, -2, 127
    raw = zstandard.ZstdDecompressor().decompress(sections_of(data)[0])
    assert raw == bytes([3, 46, 0xB4, 0x01]) + np.array([1, -2, 127], dtype=np.int8).tobytes()


def test_compact_format_is_pinned_and_differs_only_in_the_manifest(base: DeviceModel) -> None:
    diff = pinned_diff(base)
    data, plain = encode_diff_bundle(diff, base, compact=True), encode_diff_bundle(diff, base)
    magic, version, reserved, n = PREAMBLE.unpack_from(data)
    assert (magic, version, reserved) == (b"OTABNDL\0", 3, 0)
    frame = data[PREAMBLE.size:PREAMBLE.size + n]
    assert zstandard.get_frame_parameters(frame).content_size == len(PINNED_MANIFEST)
    assert zstandard.ZstdDecompressor().decompress(frame) == PINNED_MANIFEST
    assert data[PREAMBLE.size + n:] == plain[PREAMBLE.size + len(PINNED_MANIFEST):]  # the same sections
    assert xxhash.xxh64_hexdigest(data) == PINNED_COMPACT_XXH64
    assert len(data) < len(plain)


@pytest.mark.parametrize("fixture", ["sparse_diff", "hashed_diff"])
def test_compact_bundles_round_trip_and_apply(fixture: str, base: DeviceModel, request) -> None:
    diff = request.getfixturevalue(fixture)
    data = encode_diff_bundle(diff, base, compact=True)
    bundle = decode_bundle(data)
    assert bundle.format_version == 3 and bundle.diff is not None
    assert bundle.manifest_length == PREAMBLE.unpack_from(data)[3]
    assert apply_bundle(bundle, base).content_hash() == diff.target_hash
    assert read_bundle_manifest(io.BytesIO(data)).total_bytes == len(data)
    assert len(data) < len(encode_diff_bundle(diff, base))


def test_an_agent_that_reads_only_versions_1_and_2_refuses_a_compact_bundle(sparse_diff: Diff, base: DeviceModel,
                                                                           monkeypatch) -> None:
    """What a fleet's older agents do with format 3: refuse it with a clear error, before any section."""
    data = encode_diff_bundle(sparse_diff, base, compact=True)
    monkeypatch.setattr(bundle_format, "FORMAT_VERSIONS", (1, 2))
    with pytest.raises(BundleError, match="format version 3 is not supported; this reader supports 1, 2 "
                                          r"\(update the device agent\)"):
        decode_bundle(data)


def _compact_with(frame: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """A format-3 bundle whose manifest field holds frame(manifest JSON)."""
    def mutate(d: bytes) -> bytes:
        manifest, sections = split(d)
        packed = frame(canonical_json(manifest))
        return PREAMBLE.pack(MAGIC, 3, 0, len(packed)) + packed + b"".join(sections)
    return mutate


def _zstd(body: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=content_size).compress(body)


COMPACT_CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "plain_json": (_compact_with(lambda body: body), "compressed manifest: does not start with a zstd data frame"),
    "no_content_size": (_compact_with(lambda body: _zstd(body, False)), "declares no size, expected a content size"),
    "over_the_limit": (_compact_with(lambda body: rle_frame(MAX_MANIFEST_BYTES + 1, MAX_MANIFEST_BYTES + 1)),
                       f"declares {MAX_MANIFEST_BYTES + 1} bytes, expected a content size of at most"),
    "bomb": (_compact_with(lambda body: rle_frame(len(body), 16 << 17)), "decompresses past|zstd data is corrupt"),
    "huge_window": (_compact_with(lambda body: rle_frame(len(body), 1, window_log=31)), "exceeds the limit"),
    "byte_after_frame": (_compact_with(lambda body: _zstd(body) + b"\0"), "bytes after the zstd frame"),
    "skippable_first": (_compact_with(lambda body: struct.pack("<II", 0x184D2A50, 0) + _zstd(body)),
                        "skippable frames are not allowed"),
    "dictionary": (_compact_with(lambda body: dict_frame(body[:200])), "needs dictionary 5"),  # one-byte size field
    "truncated_frame": (_compact_with(lambda body: _zstd(body)[:-3]), "zstd frame is truncated"),
    "not_canonical": (_compact_with(lambda body: _zstd(json.dumps(json.loads(body)).encode())),
                      "not canonical JSON"),
    "length_past_the_frame": (lambda d: d[:12] + struct.pack("<I", PREAMBLE.unpack_from(d)[3] + 1) + d[16:],
                              "bytes after the zstd frame|zstd data is corrupt"),
}


@pytest.mark.parametrize("name", sorted(COMPACT_CORRUPTIONS))
def test_a_hostile_compact_manifest_raises_a_helpful_bundle_error(name: str, sparse_diff: Diff,
                                                                 base: DeviceModel) -> None:
    mutate, message = COMPACT_CORRUPTIONS[name]
    data = mutate(encode_diff_bundle(sparse_diff, base, compact=True))
    with pytest.raises(BundleError, match=message if "|" in message else re.escape(message)) as info:
        decode_bundle(data)
    assert len(str(info.value)) < 400


def test_sparse_diff_round_trip_uses_both_codings(sparse_bytes: bytes, sparse_diff: Diff, base: DeviceModel) -> None:
    bundle = decode_bundle(sparse_bytes)
    assert {s.encoding for s in bundle.sections} == {"bitmask", "index"}
    assert bundle.kind == "diff" and bundle.diff is not None
    for name, delta in sparse_diff.deltas.items():
        got = bundle.diff.deltas[name]
        assert isinstance(got, SparseDelta)
        np.testing.assert_array_equal(got.positions, delta.positions)
        np.testing.assert_array_equal(got.values, delta.values)
    assert (bundle.model_id, bundle.base_hash, bundle.target_hash, bundle.base_version, bundle.target_version) == (
        base.model_id, base.content_hash(), sparse_diff.target_hash, 1, 2)
    assert apply_bundle(bundle, base).content_hash() == sparse_diff.target_hash


def test_hashed_diff_round_trip(hashed_diff: Diff, base: DeviceModel) -> None:
    bundle = decode_bundle(encode_diff_bundle(hashed_diff, base))
    assert bundle.seed == 2024 and bundle.method == "hashed"
    assert {s.encoding for s in bundle.sections} == {"hashed"}
    for name, delta in hashed_diff.deltas.items():
        np.testing.assert_array_equal(bundle.diff.deltas[name].buckets, delta.buckets)
    assert apply_diff(base, bundle.diff).content_hash() == hashed_diff.target_hash


def test_full_bundle_carries_the_model_file_as_is(full_bytes: bytes, target: DeviceModel) -> None:
    bundle = decode_bundle(full_bytes)
    assert bundle.kind == "full" and bundle.model_bytes == encode_model(target)
    assert (bundle.target_version, bundle.target_hash) == (5, target.content_hash())
    assert [s.encoding for s in bundle.sections] == ["model"]
    assert bundle.sections[0].length == bundle.sections[0].raw_length  # stored, not recompressed
    assert apply_bundle(bundle, None).content_hash() == target.content_hash()
    assert apply_bundle(bundle, tiny_device_model()).version == 5  # installs over any model of that id


def test_encoder_refuses_a_diff_that_does_not_fit_its_base(sparse_diff: Diff, base: DeviceModel) -> None:
    with pytest.raises(WrongBaseError, match="pass the model the diff was learned against"):
        encode_diff_bundle(sparse_diff, tiny_device_model(3))
    bad = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "0" * 32,
               {"joint.out.weight": SparseDelta([5, 5], [1, 1])})
    with pytest.raises(DiffError, match="strictly increasing"):
        encode_diff_bundle(bad, base)
    with pytest.raises(BundleError, match="does not have"):
        encode_diff_bundle(Diff("sparse", base.model_id, 1, 2, base.content_hash(), "0" * 32,
                                {"nope": SparseDelta([1], [1])}), base)
    with pytest.raises(BundleError, match="target_hash"):
        encode_diff_bundle(Diff("sparse", base.model_id, 1, 2, base.content_hash(), "", {}), base)
    with pytest.raises(BundleError, match="model bytes are"):
        encode_full_bundle(encode_model(base), tiny_device_model(4))


# --- streaming and manifest-only reads ----------------------------------------------------
class CountingStream(io.RawIOBase):
    """Non-seekable, returns short reads, and remembers the largest read asked for."""

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self._buf, self._chunk, self.largest, self.consumed = io.BytesIO(data), chunk, 0, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.largest = max(self.largest, n)
        out = self._buf.read(min(n, self._chunk) if n >= 0 else self._chunk)
        self.consumed += len(out)
        return out


def test_streaming_reader_yields_the_same_sections(sparse_bytes: bytes) -> None:
    decoded = decode_bundle(sparse_bytes)
    stream = CountingStream(sparse_bytes)
    reader = BundleReader(stream)  # not seekable: no size known up front
    seen = []
    for section in reader:
        want = decoded.diff.deltas[section.info.name]
        np.testing.assert_array_equal(section.payload.positions, want.positions)
        np.testing.assert_array_equal(section.payload.values, want.values)
        seen.append(section.info)
    assert seen == decoded.sections
    # bounded: never asked for more than one section (or the manifest) at a time
    assert stream.largest <= max(max(s.length for s in seen), reader.manifest.manifest_length, PREAMBLE.size)
    with pytest.raises(BundleError, match="already read"):
        list(reader)


def test_streaming_reader_finds_trailing_and_missing_bytes_at_the_end(sparse_bytes: bytes) -> None:
    with pytest.raises(BundleError, match="trailing bytes"):
        list(BundleReader(CountingStream(sparse_bytes + b"\0")))
    with pytest.raises(BundleError, match="truncated"):
        list(BundleReader(CountingStream(sparse_bytes[:-1])))


def test_manifest_only_reads_are_bounded(sparse_bytes: bytes, tmp_path) -> None:
    stream = CountingStream(sparse_bytes)
    manifest = read_bundle_manifest(stream)
    assert stream.consumed == PREAMBLE.size + manifest.manifest_length
    path = tmp_path / "b.otab"
    save_bundle(sparse_bytes, path)
    assert read_bundle_manifest(path) == manifest
    summary = inspect_bundle(path, verify=True)
    assert summary["kind"] == "diff" and summary["bytes"] == len(sparse_bytes) and summary["verified"]
    assert summary["overhead_bytes"] == bundle_overhead(sparse_bytes) == PREAMBLE.size + manifest.manifest_length
    json.dumps(summary)  # ready for `ota bundle inspect --json`
    path.write_bytes(sparse_bytes[:-3])
    with pytest.raises(BundleError, match="3 bytes missing"):  # caught before any section is read
        read_bundle_manifest(path)
    with pytest.raises(FileMissingError, match="absent.otab: not found"):
        read_bundle_manifest(tmp_path / "absent.otab")


def test_save_bundle_maps_enospc_to_disk_full(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def full(path, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(bundle_writer, "write_atomic", full)
    with pytest.raises(DiskFullError, match="no space left"):
        save_bundle(b"x", tmp_path / "b.otab")


# --- checks against a model ----------------------------------------------------------------
def test_verify_bundle_for_model(sparse_bytes: bytes, base: DeviceModel, full_bytes: bytes) -> None:
    bundle = decode_bundle(sparse_bytes)
    verify_bundle_for_model(bundle, base)
    with pytest.raises(WrongBaseError, match="expects base model"):
        verify_bundle_for_model(bundle, tiny_device_model(2))
    other = tiny_device_model()
    other.model_id = "other"
    with pytest.raises(BundleError, match="bundle is for model 'tiny'"):
        verify_bundle_for_model(bundle, other)
    with pytest.raises(BundleError, match="needs an installed base model"):
        verify_bundle_for_model(bundle, None)
    bundle.sections[0] = bundle_format.SectionInfo(**{**bundle.sections[0].__dict__, "numel": 7})
    with pytest.raises(BundleError, match="of 7 entries"):
        verify_bundle_for_model(bundle, base)
    verify_bundle_for_model(decode_bundle(full_bytes), None)


# --- corruption classes: each one a BundleError that says what was expected -----------------
def _set(path: str, value: object) -> Callable[[bytes], bytes]:
    """Set manifest field `path` ('sections.0.offset' = first section) and re-encode, lengths as they were."""
    def mutate(data: bytes) -> bytes:
        m = manifest_of(data)
        target, *rest = path.split(".")
        if target == "sections":
            entry = list(m["sections"].values())[int(rest[0])]
            entry[rest[1]] = value
        else:
            m[target] = value
        return repack(m, sections_of(data), fix=False)
    return mutate


def _section(i: int, payload: Callable[[dict, bytes], bytes],
             raw_length: int | None = None) -> Callable[[bytes], bytes]:
    """Replace section i's stored bytes; fix offsets/lengths/checksums so the damage reaches the decoder."""
    def mutate(data: bytes) -> bytes:
        m, sections = manifest_of(data), sections_of(data)
        entry = list(m["sections"].values())[i]
        sections[i] = payload(entry, sections[i])
        if raw_length is not None:
            entry["raw_length"] = raw_length
        return repack(m, sections)
    return mutate


def _raw(i: int, edit: Callable[[dict, bytearray], bytes]) -> Callable[[bytes], bytes]:
    """Edit section i's decompressed bytes, recompress, fix everything else."""
    def mutate(data: bytes) -> bytes:
        m, sections = manifest_of(data), sections_of(data)
        entry = list(m["sections"].values())[i]
        raw = edit(entry, bytearray(zstandard.ZstdDecompressor().decompress(sections[i])))
        sections[i] = zstandard.ZstdCompressor().compress(raw)
        entry["raw_length"] = len(raw)
        return repack(m, sections)
    return mutate


def rle_frame(content_size: int | None, total: int, window_log: int = 17) -> bytes:
    fhd, fcs = (0x00, b"") if content_size is None else (0xC0, struct.pack("<Q", content_size))
    head = struct.pack("<IBB", 0xFD2FB528, fhd, (window_log - 10) << 3) + fcs
    n = max(1, -(-total // (128 << 10)))
    return head + b"".join(((i == n - 1) | (1 << 1) | ((128 << 10) << 3)).to_bytes(3, "little") + b"\x07"
                           for i in range(n))


def dict_frame(raw: bytes) -> bytes:
    """Single-segment frame that names dictionary 5, one raw block."""
    return struct.pack("<IBBB", 0xFD2FB528, 0x21, 5, len(raw)) + (1 | (len(raw) << 3)).to_bytes(3, "little") + raw


def _first_index(data: bytes) -> int:
    return [e["encoding"] for e in manifest_of(data)["sections"].values()].index("index")


def _first_bitmask(data: bytes, padded: bool = False) -> int:
    return [e["encoding"] == "bitmask" and (not padded or e["numel"] % 8 != 0)
            for e in manifest_of(data)["sections"].values()].index(True)


def _set_padding_bit(entry: dict, raw: bytearray) -> bytes:
    raw[(entry["numel"] + 7) // 8 - 1] |= 0x80  # the last bitmask byte's top bit lies past numel
    return bytes(raw)


def _deep(data: bytes) -> bytes:
    return with_body(data, b"[" * 100_000 + b"]" * 100_000)


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # preamble
    "truncated_preamble": (lambda d: d[:10], "shorter than the 16-byte preamble"),
    "bad_magic": (lambda d: b"OTAMODEL" + d[8:], "bad magic b'OTAMODEL': expected"),
    "future_version": (lambda d: d[:8] + struct.pack("<H", 5) + d[10:], "format version 5 is not supported"),
    "version_3_manifest_not_compressed": (lambda d: d[:8] + struct.pack("<H", 3) + d[10:],
                                          "compressed manifest: does not start with a zstd data frame"),
    "reserved_set": (lambda d: d[:10] + b"\1\0" + d[12:], "reserved preamble field is 1, expected 0"),
    "manifest_length_over_limit": (lambda d: d[:12] + struct.pack("<I", MAX_MANIFEST_BYTES + 1) + d[16:],
                                   "manifest length 262145 outside [2, 262144]"),
    "manifest_truncated": (lambda d: d[:PREAMBLE.size + 20], "the bundle ended after 20"),
    # manifest JSON
    "duplicate_key": (lambda d: with_body(d, b'{"kind":"full",' + d[PREAMBLE.size + 1:PREAMBLE.size + len(
        canonical_json(manifest_of(d)))]), "repeats keys ['kind']"),
    "not_canonical": (lambda d: with_body(d, json.dumps(manifest_of(d)).encode()), "not canonical JSON"),
    "deep_nesting": (_deep, "nested too deeply"),
    "huge_number": (lambda d: with_body(d, canonical_json(manifest_of(d)).replace(
        b'"target_version":2', b'"target_version":' + b"9" * 5000)), "Exceeds the limit"),
    "nan": (lambda d: with_body(d, canonical_json(manifest_of(d)).replace(b'"seed":0', b'"seed":NaN')),
            "contains NaN"),
    "float": (lambda d: with_body(d, canonical_json(manifest_of(d)).replace(b'"seed":0', b'"seed":0.0')),
              "contains the number 0.0; only integers"),
    "not_an_object": (lambda d: with_body(d, b"[]"), "must be a JSON object, got list"),
    "invalid_utf8": (lambda d: with_body(d, canonical_json(manifest_of(d)).replace(b'"kind"', b'"k\xffnd"')),
                     "not valid UTF-8"),
    # schema
    "unknown_key": (_set("extra", 1), "differ from the expected"),
    "bad_kind": (_set("kind", "patch"), "manifest kind 'patch', expected 'diff' or 'full'"),
    "kind_not_a_string": (_set("kind", {}), "manifest kind {}, expected"),  # found by the fuzzer (TypeError)
    "bad_hash": (_set("base_hash", "XYZ"), "base_hash 'XYZ' must be 32 lowercase hex digits"),
    "seed_too_big": (_set("seed", 2**64), "seed 18446744073709551616 must be an integer in [0, 2^64)"),
    "version_bool": (_set("target_version", True), "target_version True must be an integer"),
    "bad_encoding": (_set("sections.0.encoding", "lzma"), "encoding 'lzma' not in"),
    "missing_section_key": (lambda d: repack({**manifest_of(d), "sections": {
        k: {kk: vv for kk, vv in v.items() if kk != "xxh64"} for k, v in manifest_of(d)["sections"].items()}},
        sections_of(d), fix=False), "entry keys"),
    "bad_section_name": (lambda d: repack({**manifest_of(d), "sections": {
        ("../" + k if i == 0 else k): v for i, (k, v) in enumerate(manifest_of(d)["sections"].items())}},
        sections_of(d), fix=False), "name '../"),
    "model_section_in_diff": (_set("sections.0.encoding", "model"), "must not contain a 'model' section"),
    # section table: sizes, offsets, lengths
    "count_above_numel": (_set("sections.0.count", 10**6), "count 1000000 outside [0, numel="),
    "numel_over_limit": (_set("sections.0.numel", 2**40), "numel 1099511627776 outside [1, 268435456]"),
    "raw_length_lie": (_set("sections.0.raw_length", 2**32), "raw_length 4294967296 outside"),
    "offset_overlap": (_set("sections.1.offset", 0), "offset 0, expected"),
    "offset_hole": (lambda d: _set("sections.1.offset", list(manifest_of(d)["sections"].values())[1]["offset"] + 1)(d),
                    "without holes or overlaps"),
    "length_over_zstd_bound": (_set("sections.0.length", 2**31), "the zstd bound for"),
    "trailing_bytes": (lambda d: d + b"PK\x03\x04", "4 trailing bytes after the last section"),
    "truncated_section": (lambda d: d[:-5], "5 bytes missing (truncated?)"),
    "checksum": (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum mismatch (expected xxh64"),
    # zstd frames: bombs and oddities (checksums fixed so the frame is what gets judged)
    "bomb_declared_gigabytes": (_section(0, lambda e, s: rle_frame(3 << 30, 1)),
                                "zstd frame declares 3221225472 bytes"),
    "bomb_no_content_size": (_section(0, lambda e, s: rle_frame(None, 1)), "declares no size"),
    "bomb_lies_about_content_size": (_section(0, lambda e, s: rle_frame(e["raw_length"], 16 << 17)),
                                     "decompresses past|zstd data is corrupt"),
    "bomb_huge_window": (_section(0, lambda e, s: rle_frame(e["raw_length"], 1, window_log=31)),
                         "zstd window 2147483648 exceeds"),
    "zstd_dictionary": (_section(0, lambda e, s: dict_frame(zstandard.ZstdDecompressor().decompress(s))),
                        "needs dictionary 5"),
    "bytes_after_frame": (_section(0, lambda e, s: s + b"\0"), "bytes after the zstd frame"),
    "two_frames": (_section(0, lambda e, s: s + zstandard.ZstdCompressor().compress(b"")),
                   "bytes after the zstd frame"),
    "not_zstd": (_section(0, lambda e, s: b"\0" * len(s)), "does not start with a zstd data frame"),
    "truncated_frame": (_section(0, lambda e, s: s[:-3]), "zstd frame is truncated"),
    # decoded payloads
    "index_overlong_varint": (lambda d: _raw(_first_index(d), lambda e, r: bytes([r[0] | 0x80, 0]) + r[1:])(d),
                              "overlong"),
    "index_position_out_of_range": (lambda d: _raw(_first_index(d), lambda e, r: bytes([0xFF, 0x7F]) + r[1:])(d),
                                    "outside a tensor|exceeds the tensor size"),
    "bitmask_padding_bits": (lambda d: _raw(_first_bitmask(d, padded=True), _set_padding_bit)(d), "padding bits"),
    "bitmask_count_mismatch": (lambda d: _raw(_first_bitmask(d), lambda e, r: bytes([r[0] ^ 1]) + bytes(r[1:]))(d),
                               "bitmask marks"),
    "zero_delta_value": (lambda d: _raw(0, lambda e, r: bytes(r[:-1]) + b"\0")(d), "must be nonzero"),
    "value_minus_128": (lambda d: _raw(0, lambda e, r: bytes(r[:-1]) + b"\x80")(d), "must be nonzero and within"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_class_raises_a_helpful_bundle_error(name: str, sparse_bytes: bytes) -> None:
    mutate, message = CORRUPTIONS[name]
    data = mutate(sparse_bytes)
    assert data != sparse_bytes
    with pytest.raises(BundleError, match=message if "|" in message else re.escape(message)) as info:
        decode_bundle(data)
    assert len(str(info.value)) < 400  # one readable line, not a dump of the input


def test_bucket_value_minus_128(hashed_diff: Diff, base: DeviceModel) -> None:
    data = _raw(0, lambda e, r: b"\x80" + bytes(r[1:]))(encode_diff_bundle(hashed_diff, base))
    with pytest.raises(BundleError, match="found -128"):
        decode_bundle(data)


def test_full_bundle_corruptions(full_bytes: bytes, base: DeviceModel) -> None:
    other = encode_model(base)
    swapped = _section(0, lambda e, s: other, raw_length=len(other))(full_bytes)  # a different model, re-signed
    with pytest.raises(BundleError, match="the manifest promises"):
        decode_bundle(swapped)
    with pytest.raises(BundleError, match="length must equal raw_length"):
        decode_bundle(_set("sections.0.length", 10)(full_bytes))
    with pytest.raises(BundleError, match="not a valid .otam file: bad magic"):
        decode_bundle(_section(0, lambda e, s: b"X" * len(s), raw_length=len(full_bytes) - bundle_overhead(
            full_bytes))(full_bytes))
    two = manifest_of(full_bytes)
    two["sections"]["model2"] = dict(two["sections"]["model"])
    with pytest.raises(BundleError, match="exactly one section"):
        decode_bundle(repack(two, sections_of(full_bytes) * 2))


def test_decompression_bomb_is_refused_quickly_without_allocating(sparse_bytes: bytes) -> None:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for frame in (rle_frame(4 << 30, 4 << 30), rle_frame(None, 4 << 30)):
        with pytest.raises(BundleError):
            decode_bundle(_section(0, lambda e, s: frame)(sparse_bytes))
    m = manifest_of(sparse_bytes)
    next(iter(m["sections"].values()))["raw_length"] = 4 << 30  # the manifest lies upward too
    with pytest.raises(BundleError, match="raw_length 4294967296 outside"):
        decode_bundle(repack(m, [rle_frame(4 << 30, 4 << 30)] + sections_of(sparse_bytes)[1:]))
    assert time.perf_counter() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: < 64 MiB grown


def test_decompressor_stops_at_raw_length_even_if_zstd_would_go_on() -> None:
    info = bundle_format.SectionInfo("t", "hashed", 0, 0, 100, "0" * 16, numel=1000, num_buckets=100)
    with pytest.raises(BundleError, match="decompresses past|zstd data is corrupt"):
        bundle_format._decompress(info, rle_frame(100, 64 << 17))


# --- overhead -------------------------------------------------------------------------------
def default_size_model(seed: int = 0) -> DeviceModel:
    """ModelConfig() layout (~2.1 M int8 weights) with random weights."""
    rng = np.random.default_rng(seed)
    cfg = ModelConfig()
    weights, floats = {}, {}
    for name, (kind, shape) in tensor_layout(cfg).items():
        if kind == "int8":
            weights[name] = QuantizedWeight(rng.integers(-127, 128, size=shape).astype(np.int8),
                                            (rng.random(shape[0]) * 0.02 + 0.001).astype(np.float32))
        else:
            floats[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return DeviceModel(cfg, CharTokenizer(), weights, floats, "speech-commands", 1)


def test_overhead_of_a_realistic_diff_bundle_is_small() -> None:
    base = default_size_model()
    rng = np.random.default_rng(1)
    total = sum(w.q.size for w in base.weights.values())
    assert total > 2_000_000
    deltas = {n: _sparse(rng, w.q.size, int(0.02 * w.q.size)) for n, w in base.weights.items()}  # 2% of entries
    diff = _finish(Diff("sparse", base.model_id, 1, 2, base.content_hash(), "", deltas), base)
    data = encode_diff_bundle(diff, base)
    manifest = read_bundle_manifest(io.BytesIO(data))
    overhead = bundle_overhead(data)
    print(f"\n{len(deltas)} sections, payload {manifest.payload_bytes} B, overhead {overhead} B")
    assert overhead == len(data) - manifest.payload_bytes
    assert overhead <= max(2048, manifest.payload_bytes // 100)
    assert apply_bundle(decode_bundle(data), base).content_hash() == diff.target_hash
