"""Mutation fuzzing of update bundles: only our own errors, never a hang, bounded memory.

Builds real bundles from tiny models (a sparse diff using both position
codings, a hashed diff, a mixed diff, the mixed diff in format 3 with its
manifest compressed, a full bundle), then mutates them: blind
byte-level damage, lies in the preamble and manifest, table tricks
(overlaps, holes, duplicates, swaps), zstd decompression bombs, hostile JSON,
"re-signed" damage (payload changed, checksums and lengths fixed up so the
damage reaches the decompressor, the strict decoders, the .otam codec and
apply_diff), structure-aware lies (valid checksums and lengths with lying
semantics), canonical-form violations (64-bit-overflowing and overlong
varints, skippable and concatenated zstd frames), maximal declared sizes
(2^28-entry tensors whose 64 MiB sections compress to a few KB) and hostile
compressed manifests (bombs, lying or missing sizes, extra frames). Structural
mutations of the format-3 and format-4 (words) seeds are shipped with their
manifest compressed again, so every manifest lie also reaches the reader through a zstd frame. Each case
takes the device's path: `read_bundle` against the base model (full bundles:
no model installed), then `apply_bundle`. A case passes if it raises a
subclass of OtaError, or succeeds with the target hash verified.

    python bench/fuzz_bundle.py [--cases 100000] [--seed 0] [--time-limit 5]
"""
from __future__ import annotations

import io
import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xxhash
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fuzz_common import error_outcome, interesting, main, rle_frame, run_cases  # noqa: E402
from device_agent.device_model import DeviceModel, canonical_json  # noqa: E402
from device_agent.diff import Diff, HashedDelta, SparseDelta, apply_diff  # noqa: E402
from device_agent.model_format import encode_model  # noqa: E402
from device_agent.bundle import (COMPACT_FORMAT, MAGIC, MAX_MANIFEST_BYTES, PREAMBLE, WORDS_FORMAT,  # noqa: E402
                                 apply_bundle, read_bundle)
from packager.bundle import encode_diff_bundle, encode_full_bundle  # noqa: E402
from tests.tiny import tiny_device_model  # noqa: E402

GIB = 1 << 30


# --- seed bundles ---------------------------------------------------------------
@dataclass
class Seed:
    name: str
    data: bytes
    base: DeviceModel | None  # what the bundle applies to (full bundles: nothing)
    target_hash: str
    compact: int = 0  # its format version (3, 4) if the manifest is a zstd frame


def _finish(diff: Diff, base: DeviceModel) -> Diff:
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def _sparse(rng: np.random.Generator, numel: int, density: float) -> SparseDelta:
    k = max(1, int(density * numel))
    values = rng.integers(-127, 128, size=k).astype(np.int8)
    values[values == 0] = 1
    return SparseDelta(np.sort(rng.choice(numel, size=k, replace=False)), values)


def build_seeds(rng: np.random.Generator) -> list[Seed]:
    base = tiny_device_model(0)
    names = sorted(base.weights)
    densities = (0.02, 0.1, 0.6)  # very sparse picks index coding, dense picks bitmask
    sparse = {n: _sparse(rng, base.weights[n].q.size, densities[i % 3]) for i, n in enumerate(names)}
    hashed = {n: HashedDelta(b, rng.integers(-3, 4, size=b).astype(np.int8))
              for n, b in zip(names, rng.integers(1, 33, size=len(names)))}
    mixed = {n: (sparse[n] if i % 2 else hashed[n]) for i, n in enumerate(names)}
    seeds = []
    for name, deltas, method, seed in (("sparse", sparse, "sparse", 0), ("hashed", hashed, "hashed", 1234),
                                        ("mixed", mixed, "mixed", 99)):
        diff = _finish(Diff(method, base.model_id, 1, 2, base.content_hash(), "", deltas, seed,
                            {"source": "fuzz"}), base)
        seeds.append(Seed(name, encode_diff_bundle(diff, base), base, diff.target_hash))
        if name == "mixed":
            seeds.append(Seed("mixed_compact", encode_diff_bundle(diff, base, compact=True), base, diff.target_hash,
                              compact=COMPACT_FORMAT))
            worded = _finish(replace(diff, words=("grocery", "olive", "shampoo")), base)
            seeds.append(Seed("mixed_words", encode_diff_bundle(worded, base), base, worded.target_hash,
                              compact=WORDS_FORMAT))
    target = tiny_device_model(7)
    target.version = 2
    seeds.append(Seed("full", encode_full_bundle(encode_model(target), target), None, target.content_hash()))
    return seeds


# --- bundle surgery (no validation: this is the attacker's side) ------------------
def split(data: bytes) -> tuple[dict, list[bytes]]:
    _, version, _, n = PREAMBLE.unpack_from(data)
    body = data[PREAMBLE.size:PREAMBLE.size + n]
    if version >= COMPACT_FORMAT:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_MANIFEST_BYTES)
    manifest = json.loads(body)
    start = PREAMBLE.size + n
    entries = manifest["sections"].values()
    return manifest, [data[start + e["offset"]:start + e["offset"] + e["length"]] for e in entries]


def pack(manifest: dict, sections: list[bytes], *, fix: bool = True) -> bytes:
    """Re-encode; with `fix`, offsets, lengths and checksums agree with `sections` again."""
    if fix:
        offset = 0
        for e, s in zip(manifest["sections"].values(), sections):
            e.update(offset=offset, length=len(s), xxh64=xxhash.xxh64_hexdigest(s))
            offset += len(s)
    body = canonical_json(manifest)
    return PREAMBLE.pack(MAGIC, 1, 0, len(body)) + body + b"".join(sections)


def compact(data: bytes, version: int = COMPACT_FORMAT) -> bytes:
    """A version-1 bundle (valid or not) with its manifest bytes, whatever they say, in a zstd frame: format 3
    (or `version`, 4 for a bundle with words)."""
    _, _, _, n = PREAMBLE.unpack_from(data)
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(data[PREAMBLE.size:PREAMBLE.size + n])
    return PREAMBLE.pack(MAGIC, version, 0, len(frame)) + frame + data[PREAMBLE.size + n:]


def with_manifest_text(data: bytes, body: bytes) -> bytes:
    _, sections = split(data)
    return PREAMBLE.pack(MAGIC, 1, 0, len(body)) + body + b"".join(sections)


# --- mutators: (rng, seed) -> mutated bytes ---------------------------------------------
def m_bit_flip(rng: np.random.Generator, s: Seed) -> bytes:
    buf = bytearray(s.data)
    for _ in range(rng.integers(1, 9)):
        i = int(rng.integers(len(buf)))
        buf[i] ^= 1 << int(rng.integers(8))
    return bytes(buf)


def m_byte_insert(rng: np.random.Generator, s: Seed) -> bytes:
    i = int(rng.integers(len(s.data) + 1))
    return s.data[:i] + rng.bytes(int(rng.integers(1, 17))) + s.data[i:]


def m_byte_delete(rng: np.random.Generator, s: Seed) -> bytes:
    i = int(rng.integers(len(s.data)))
    return s.data[:i] + s.data[i + int(rng.integers(1, 17)):]


def m_truncate(rng: np.random.Generator, s: Seed) -> bytes:
    return s.data[:int(rng.integers(len(s.data)))]


def m_trailing(rng: np.random.Generator, s: Seed) -> bytes:
    junk = [b"\0", rng.bytes(int(rng.integers(1, 64))), b"PK\x03\x04" + rng.bytes(26), s.data, rle_frame(0, 0)]
    return s.data + junk[int(rng.integers(len(junk)))]


def m_preamble(rng: np.random.Generator, s: Seed) -> bytes:
    magic, version, reserved, n = PREAMBLE.unpack_from(s.data)
    field = int(rng.integers(4))
    if field == 0:
        magic = [b"OTAMODEL", b"OTABNDL\x01", rng.bytes(8), b"\0" * 8][int(rng.integers(4))]
    elif field == 1:
        version = int(rng.choice([0, 2, 255, 65535]))
    elif field == 2:
        reserved = int(rng.choice([1, 256, 65535]))
    else:
        n = int(rng.choice([0, 1, 2, n - 1, n + 1, n + 100, 256 << 10, (256 << 10) + 1, 2**31, 2**32 - 1]))
    return PREAMBLE.pack(magic, version, reserved, n) + s.data[PREAMBLE.size:]


def m_manifest_lie(rng: np.random.Generator, s: Seed) -> bytes:
    """A field of the manifest set to a lie; lengths and checksums left alone."""
    manifest, sections = split(s.data)
    if rng.random() < 0.6:
        entry = list(manifest["sections"].values())[int(rng.integers(len(manifest["sections"])))]
        key = sorted(entry)[int(rng.integers(len(entry)))]
        value = entry[key]
        entry[key] = interesting(rng, value if isinstance(value, int) else None)
        if key == "encoding" and rng.random() < 0.7:
            entry[key] = ["bitmask", "index", "hashed", "model", "sparse", ""][int(rng.integers(6))]
        if key == "xxh64" and rng.random() < 0.7:
            entry[key] = rng.bytes(8).hex()
    else:
        key = sorted(manifest)[int(rng.integers(len(manifest)))]
        choices: list[object] = [interesting(rng), "x" * 200, "", "full", "diff", "0" * 32, "A" * 32]
        manifest[key] = choices[int(rng.integers(len(choices)))]
    return pack(manifest, sections, fix=False)


def m_table(rng: np.random.Generator, s: Seed) -> bytes:
    """Overlaps, holes, swaps, duplicates, dropped and added sections."""
    manifest, sections = split(s.data)
    entries = list(manifest["sections"].items())
    trick = int(rng.integers(7))
    i = int(rng.integers(len(entries)))
    if trick == 0 and i > 0:  # overlap the previous section
        entries[i][1]["offset"] = entries[i - 1][1]["offset"]
    elif trick == 1:  # hole before a section
        entries[i][1]["offset"] += int(rng.integers(1, 8))
    elif trick == 2 and len(sections) > 1:  # payloads swapped, table unchanged
        j = (i + 1) % len(sections)
        sections[i], sections[j] = sections[j], sections[i]
        return pack(manifest, sections, fix=False)
    elif trick == 3:  # duplicate key in the table (text surgery: dicts cannot hold it)
        body = canonical_json(manifest)
        name, entry = entries[i]
        dup = json.dumps(name).encode() + b":" + canonical_json(entry)
        body = body.replace(b'"sections":{', b'"sections":{' + dup + b",", 1)
        return with_manifest_text(s.data, body)
    elif trick == 4:  # drop a section entry, keep its bytes
        del manifest["sections"][entries[i][0]]
        return pack(manifest, sections, fix=False)
    elif trick == 5:  # the same section listed twice under another name, pointing at the same bytes
        name, entry = entries[i]
        manifest["sections"][name + "_copy"] = dict(entry)
    else:  # lengths shifted between neighbours
        j = (i + 1) % len(entries)
        delta = int(rng.integers(1, 16))
        entries[i][1]["length"] += delta
        entries[j][1]["length"] -= delta
    return pack(manifest, sections, fix=False)


def m_bomb(rng: np.random.Generator, s: Seed) -> bytes:
    """A delta section replaced by a tiny frame that expands to gigabytes; table fixed up."""
    manifest, sections = split(s.data)
    entries = list(manifest["sections"].values())
    i = int(rng.integers(len(entries)))
    e = entries[i]
    raw = e["raw_length"]
    variant = int(rng.integers(6))
    if variant == 5:  # fits the zstd bound (so it reaches the decompressor) yet holds ~MiBs
        bound = raw + (raw >> 8) + (((128 << 10) - raw) >> 11 if raw < (128 << 10) else 0)
        sections[i] = rle_frame(raw, max(1, (bound - 14) // 4) * (128 << 10))
    elif variant == 0:  # frame honest about its 3 GiB; manifest says raw_length
        sections[i] = rle_frame(3 * GIB, 3 * GIB)
    elif variant == 1:  # frame and manifest agree on the small size, the blocks hold gigabytes
        sections[i] = rle_frame(raw, 2 * GIB)
    elif variant == 2:  # no content size in the frame
        sections[i] = rle_frame(None, 2 * GIB)
    elif variant == 3:  # manifest raw_length lies upward to match the bomb
        sections[i] = rle_frame(3 * GIB, 3 * GIB)
        e["raw_length"] = 3 * GIB
    else:  # a huge window (memory for the decoder's history)
        sections[i] = rle_frame(raw, raw, window_log=31)
    if e["encoding"] == "model":  # stored sections need length == raw_length
        e["raw_length"] = len(sections[i])
    return pack(manifest, sections)


def m_json(rng: np.random.Generator, s: Seed) -> bytes:
    """Hostile manifest JSON."""
    body = s.data[PREAMBLE.size:PREAMBLE.size + struct.unpack_from("<I", s.data, 12)[0]]
    trick = int(rng.integers(10))
    if trick == 0:  # deep nesting, within the size limit
        depth = int(rng.choice([1000, 50_000, 130_000]))
        body = b"[" * depth + b"]" * depth
    elif trick == 1:  # deep nesting inside a valid field
        body = body.replace(b'"metadata":{', b'"metadata":{"x":' + b"[" * 5000 + b"]" * 5000 + b",", 1)
    elif trick == 2:  # duplicate top-level key
        body = b'{"kind":"full",' + body[1:]
    elif trick == 3:  # huge numbers
        digits = int(rng.choice([400, 4300, 5000, 100_000]))
        body = body.replace(b'"target_version":', b'"target_version":' + b"9" * digits + b",\"x\":", 1)
    elif trick == 4:
        body = body.replace(b'"target_version":', b'"target_version":NaN,"y":', 1)
    elif trick == 5:  # not canonical: whitespace
        body = body.replace(b",", b", ", 1)
    elif trick == 6:  # invalid UTF-8 / non-ASCII
        body = body.replace(b'"kind"', b'"k\xff\xfend"', 1) if rng.random() < 0.5 else body.replace(
            b'"kind"', '"kïnd"'.encode(), 1)
    elif trick == 7:  # too big
        body = body[:-1] + b',"pad":"' + b"a" * (256 << 10) + b'"}'
    elif trick == 8:  # not an object
        body = [b"[]", b"null", b"1", b'"x"', b"", b"{"][int(rng.integers(6))]
    else:  # float where an integer belongs
        body = body.replace(b'"target_version":2', b'"target_version":2.0', 1)
    return with_manifest_text(s.data, body)


def m_resigned(rng: np.random.Generator, s: Seed) -> bytes:
    """Damage inside a section, with raw_length/length/xxh64 fixed so it reaches the decoders."""
    manifest, sections = split(s.data)
    entries = list(manifest["sections"].values())
    i = int(rng.integers(len(entries)))
    e = entries[i]
    if e["encoding"] == "model":
        raw = bytearray(sections[i])
        for _ in range(rng.integers(1, 4)):
            j = int(rng.integers(len(raw)))
            raw[j] ^= 1 << int(rng.integers(8))
        sections[i] = bytes(raw)
        e["raw_length"] = len(raw)
        return pack(manifest, sections)
    raw = bytearray(zstandard.ZstdDecompressor().decompress(sections[i]))
    trick = int(rng.integers(6))
    if trick == 0 and raw:  # flip bits in the decoded payload
        for _ in range(rng.integers(1, 4)):
            j = int(rng.integers(len(raw)))
            raw[j] ^= 1 << int(rng.integers(8))
    elif trick == 1 and raw:  # a value becomes 0 or -128
        raw[len(raw) - 1 - int(rng.integers(min(len(raw), 4)))] = int(rng.choice([0, 0x80]))
    elif trick == 2:  # raw grows or shrinks, manifest follows (count untouched)
        raw = raw + rng.bytes(int(rng.integers(1, 4))) if rng.random() < 0.5 else raw[:-1]
    elif trick == 3 and e["encoding"] in ("bitmask", "index"):  # count lies, raw follows
        e["count"] = max(0, e["count"] + int(rng.choice([-1, 1])))
    elif trick == 4 and e["encoding"] == "index":  # overlong varint at the start
        raw = bytearray(b"\x80\x00") + raw[1:]
    elif trick == 5 and e["encoding"] == "bitmask" and e["numel"] % 8:  # padding bit set
        nb = (e["numel"] + 7) // 8
        raw[nb - 1] |= 0x80
    else:  # numel lies (positions may fall outside, bitmask size changes)
        e["numel"] = max(1, e["numel"] + int(rng.choice([-8, -1, 1, 8])))
    sections[i] = zstandard.ZstdCompressor(level=3).compress(bytes(raw))
    e["raw_length"] = len(raw)
    return pack(manifest, sections)


def m_semantic(rng: np.random.Generator, s: Seed) -> bytes:
    """A well-formed bundle that lies about what it is (identity, seed, sizes)."""
    manifest, sections = split(s.data)
    key = ["model_id", "target_hash", "base_hash", "seed", "target_version", "metadata"][int(rng.integers(6))]
    if key not in manifest:
        key = "target_hash"
    manifest[key] = {"model_id": "other-model", "target_hash": rng.bytes(16).hex(), "base_hash": rng.bytes(16).hex(),
                     "seed": int(rng.integers(2**63)), "target_version": 99, "metadata": {"a": "b"}}[key]
    return pack(manifest, sections)


def m_canonical_form(rng: np.random.Generator, s: Seed) -> bytes:
    """Checksums and lengths valid, encodings not canonical: overflowing or overlong varints,
    skippable or concatenated zstd frames (docs/bundle-format.md: only the canonical form)."""
    manifest, sections = split(s.data)
    entries = list(manifest["sections"].values())
    i = int(rng.integers(len(entries)))
    e = entries[i]
    if e["encoding"] == "model":
        return pack(manifest, sections[:i] + [struct.pack("<II", 0x184D2A50, 0)] + sections[i + 1:])
    raw = zstandard.ZstdDecompressor().decompress(sections[i])
    skippable = struct.pack("<II", 0x184D2A50 + int(rng.integers(16)), 4) + b"\0\0\0\0"
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True)
    trick = int(rng.integers(5))
    if trick == 0 and e["encoding"] == "index" and e.get("count"):
        # first gap re-encoded as a 10-byte varint whose top bits overflow 64 bits: it wraps to the same value
        first, rest = raw[0], raw[1:]
        if first < 0x80:
            raw = bytes([0x80 | first] + [0x80] * 8 + [0x02]) + rest
    elif trick == 1 and e["encoding"] == "index" and e.get("count"):
        raw = bytes([raw[0] | 0x80, 0x00]) + raw[1:] if raw[0] < 0x80 else raw  # overlong: same value
    elif trick == 2:
        sections[i] = skippable + sections[i]
        return pack(manifest, sections)
    elif trick == 3:
        sections[i] = sections[i] + skippable
        return pack(manifest, sections)
    else:  # the same raw bytes as two frames back to back
        cut = len(raw) // 2
        sections[i] = frame.compress(raw[:cut]) + frame.compress(raw[cut:])
        return pack(manifest, sections)
    sections[i] = frame.compress(raw)
    e["raw_length"] = len(raw)
    return pack(manifest, sections)


def m_max_declared(rng: np.random.Generator, s: Seed) -> bytes:
    """A delta section that declares the largest sizes the format allows, consistently:
    numel 2^28, count / buckets at their limits, raw_length up to 64 MiB, and a frame of
    that content size that compresses to a few KB. Only limits relative to the base
    (the tensor's real size) stop it before the decoder allocates."""
    manifest, sections = split(s.data)
    if manifest["kind"] != "diff":
        return m_bomb(rng, s)
    name = sorted(manifest["sections"])[int(rng.integers(len(manifest["sections"])))]
    e = manifest["sections"][name]
    numel = 1 << 28
    if e["encoding"] == "hashed":
        e.update(numel=numel, num_buckets=1 << 24)
        raw = 1 << 24
    else:
        count = int(rng.choice([0, 1 << 20, (1 << 25) - 1]))
        e.update(encoding="bitmask", numel=numel, count=count)
        raw = numel // 8 + count
    e["raw_length"] = raw
    sections[sorted(manifest["sections"]).index(name)] = rle_frame(raw, raw)
    return pack(manifest, sections)


def m_splice(rng: np.random.Generator, s: Seed, others: list[Seed]) -> bytes:
    """Manifest from one bundle, payload from another (fixed up or not)."""
    other = others[int(rng.integers(len(others)))]
    manifest, _ = split(s.data)
    _, sections = split(other.data)
    if len(sections) == len(manifest["sections"]) and rng.random() < 0.5:
        return pack(manifest, sections)
    return pack(manifest, sections, fix=False)


def m_compact_manifest(rng: np.random.Generator, s: Seed) -> bytes:
    """A format-3 bundle whose manifest frame is hostile: bombs, lying or missing sizes, extra frames."""
    manifest, sections = split(s.data)
    body = canonical_json(manifest)
    good = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(body)
    frames = [
        zstandard.ZstdCompressor(write_content_size=False).compress(body),  # no declared size
        rle_frame(MAX_MANIFEST_BYTES + 1, MAX_MANIFEST_BYTES + 1),  # over the manifest limit
        rle_frame(len(body), 16 << 17),  # declares the JSON's size, decodes to 2 MiB
        rle_frame(1 << 40, 1 << 20),  # declares a terabyte
        rle_frame(len(body), 1, window_log=31),  # huge window
        good + b"\0",  # a byte after the frame
        good + zstandard.ZstdCompressor().compress(b""),  # a second frame
        struct.pack("<II", 0x184D2A50, 4) + b"\0\0\0\0" + good,  # a skippable frame first
        body,  # JSON not compressed at all
        zstandard.ZstdCompressor(write_content_size=True).compress(json.dumps(manifest).encode()),  # not canonical
        good[:-int(rng.integers(1, 4))],  # truncated frame
    ]
    frame = frames[int(rng.integers(len(frames)))]
    return PREAMBLE.pack(MAGIC, s.compact or COMPACT_FORMAT, 0, len(frame)) + frame + b"".join(sections)


MUTATORS: dict[str, Callable[..., bytes]] = {
    "bit_flip": m_bit_flip, "byte_insert": m_byte_insert, "byte_delete": m_byte_delete, "truncate": m_truncate,
    "trailing_bytes": m_trailing, "preamble_lie": m_preamble, "manifest_lie": m_manifest_lie,
    "table_overlap_dup": m_table, "zstd_bomb": m_bomb, "json_abuse": m_json, "resigned_payload": m_resigned,
    "semantic_lie": m_semantic, "splice": m_splice, "canonical_form": m_canonical_form,
    "max_declared_sizes": m_max_declared, "compact_manifest": m_compact_manifest,
}


# --- one case -------------------------------------------------------------------------
def run_case(data: bytes, seed: Seed) -> str:
    """-> outcome: 'ok' (target hash verified), '<stage>:<OtaError subclass>', or 'UNEXPECTED:...'.

    The device's path: `read_bundle` against the model it would be applied to (sizes
    relative to its tensors, checked before any section is read), then `apply_bundle`."""
    stage = "decode"
    try:
        bundle = read_bundle(io.BytesIO(data), seed.base)
        stage = "apply"
        result = apply_bundle(bundle, seed.base)  # base and target hashes; full bundles: decode_model
        if result.content_hash() != bundle.target_hash:
            return "UNEXPECTED:unverified-success"
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything foreign
        return error_outcome(stage, exc)


def mutate(cls: str, rng: np.random.Generator, s: Seed, seeds: Sequence[Seed]) -> bytes:
    try:
        if cls == "splice":
            return m_splice(rng, s, [o for o in seeds if o is not s])
        data = MUTATORS[cls](rng, s)
    except (KeyError, IndexError, ValueError, zstandard.ZstdError):
        return m_bit_flip(rng, s)  # a mutator that does not fit this seed falls back to bit flips
    if s.compact and len(data) >= PREAMBLE.size and PREAMBLE.unpack_from(data)[1] == 1:
        return compact(data, s.compact)  # a structural lie, shipped the way this seed ships its manifest
    return data


def fuzz(cases: int, seed: int, time_limit: float = 5.0, progress: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    seeds = build_seeds(rng)
    return run_cases(cases=cases, seed=seed, rng=rng, seeds=seeds, classes=list(MUTATORS), mutate=mutate,
                     run_case=run_case, time_limit=time_limit, seed_key="seed_bundle",
                     seed_info={"seed_bundles": {s.name: len(s.data) for s in seeds}},
                     progress_every=1000 if progress else 0)


if __name__ == "__main__":
    sys.exit(main("fuzz_bundle", __doc__.split("\n")[0], fuzz, default_cases=10_000, what="bundles",
                  seed_key="seed_bundle"))
