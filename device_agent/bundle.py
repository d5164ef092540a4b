"""Update bundles (`.otab`): the format and its reader, as a device runs it.

The byte layout is specified in docs/bundle-format.md; this module and its
writer (packager/bundle.py, server side) are its only implementation. Every
problem is a BundleError that says what was expected and what arrived.

Parsing validates in a fixed order and checks every length against a limit
and against the bytes present before using it:
 1) preamble present       2) magic            3) version, reserved
 4) manifest length limit  5) manifest bytes present (version 3: one zstd frame whose
    declared content size is within the same limit, decompressed with the bounds of step 10)
 6) manifest JSON: UTF-8, no duplicate keys, no NaN, bounded nesting, canonical
 7) manifest schema: kind, identity fields, ranges
 8) section table: count, keys per encoding, shape-derived raw limits,
    contiguous offsets, total size limit (names are unique and sorted by 6)
 9) bundle size: ends exactly at the last section (when the size is known)
10) per section, one at a time: read exactly `length` bytes, xxh64, zstd frame
    header (content size == raw_length, window, no dictionary), bounded
    decompression, strict decoding of the encoding
11) no trailing bytes after the last section
With the model it will be applied to (`read_bundle`, `BundleReader(installed_on=)`),
sizes are also checked against that model's real tensors after step 8, before
any section is read. `apply_diff` later checks the deltas against the actual
model (DiffError).
"""
from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import xxhash

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import (BIAS_STEP_EXPS, MAX_BUCKETS, ChannelDeltas, Diff, HashedDelta, SparseDelta, TensorDelta,
                               apply_diff, channel_tensors)
from device_agent.errors import BundleError, ModelFormatError, SparseCodingError, WrongBaseError, os_error
from device_agent.model_format import MAX_FILE_BYTES as MAX_MODEL_BYTES
from device_agent.model_format import parse_header as parse_model_header  # the .otam header checks, not a copy
from device_agent.model_format import decode_model, decoded_bytes
from device_agent.sparse_coding import decode_sparse, varint_len
from device_agent.strict_header import (CONTENT_HASH, MAX_NAME_CHARS, NAME, XXH64, is_int,
                                        parse_canonical_json)
from device_agent.tokenizer import MAX_WORD_CHARS, MAX_WORDS
from device_agent.version import parse_version
from device_agent.zstd_frames import decompress_declared, decompress_exact

MAGIC = b"OTABNDL\0"
# 2 added the channels section; a bundle without one is written as version 1, so agents that read
# only version 1 still take every update they can apply. 3 stores the manifest as a zstd frame
# (compact: 1.3 KB less per diff of the shipped model); written only when asked, for fleets whose
# agents all read it (their heartbeats say so: `bundle_formats`). 4 is 3 plus the words section:
# words a diff adds to the model's word list.
FORMAT_VERSION = 2
COMPACT_FORMAT = 3
WORDS_FORMAT = 4
FORMAT_VERSIONS = (1, 2, 3, 4)
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, reserved, manifest length

# --- limits (docs/bundle-format.md, "Limits") ---------------------------------
MAX_MANIFEST_BYTES = 256 << 10
MAX_SECTIONS = 4096
MAX_NUMEL = 1 << 28  # 4 * 8192 * 8192: the largest matrix ModelConfig allows
MAX_SECTION_RAW_BYTES = 64 << 20  # a delta bigger than this should ship as a full bundle
MAX_BUNDLE_BYTES = 1 << 30
MAX_METADATA_ENTRIES = 64
MAX_SEED = 2**64 - 1
FULL_MODEL_GROWTH = 4  # a full bundle may decode to at most this many times the installed model's tensors

# Sparse position codings are named as in .otam files ("bitmask", "index").
SPARSE_ENCODINGS = ("bitmask", "index")
ENCODINGS = (*SPARSE_ENCODINGS, "hashed", "channels", "words", "model")
CHANNELS = "channels"  # the one section (name and encoding) of a diff's per-channel scale and bias deltas
WORDS = "words"  # the one section (name and encoding) of the words a diff adds to the word list
_ENTRY_COMMON = {"encoding", "offset", "length", "raw_length", "xxh64"}
SECTION_KEYS = {  # the section table maps tensor name -> entry (safetensors style)
    "bitmask": _ENTRY_COMMON | {"numel", "count"},
    "index": _ENTRY_COMMON | {"numel", "count"},
    "hashed": _ENTRY_COMMON | {"numel", "num_buckets"},
    "channels": _ENTRY_COMMON | {"numel", "count"},  # numel: channels, count: tensors
    "words": _ENTRY_COMMON | {"count"},  # count: words
    "model": _ENTRY_COMMON,
}
MANIFEST_KEYS = {
    "diff": {"kind", "model_id", "base_version", "base_hash", "target_version", "target_hash", "method", "seed",
             "metadata", "sections"},
    "full": {"kind", "model_id", "target_version", "target_hash", "sections"},
}
_NAME, _CONTENT_HASH, _XXH64 = NAME, CONTENT_HASH, XXH64  # one set of patterns for .otam and .otab
_METHOD = re.compile(r"[a-z0-9_\-]{1,64}")


# --- data types -----------------------------------------------------------------
@dataclass(frozen=True)
class SectionInfo:
    """One row of the section table. `offset` is relative to the end of the manifest."""

    name: str
    encoding: str
    offset: int
    length: int  # stored (compressed) bytes
    raw_length: int  # decompressed bytes
    xxh64: str  # of the stored bytes
    numel: int | None = None  # delta sections: entries of the tensor they change (channels: all channels)
    count: int | None = None  # sparse: changed entries; channels: tensors covered
    num_buckets: int | None = None  # hashed

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (without the name, which is its key)."""
        return {k: getattr(self, k) for k in sorted(SECTION_KEYS[self.encoding])}


@dataclass
class BundleManifest:
    kind: str  # "diff" | "full"
    model_id: str
    target_version: int
    target_hash: str
    base_version: int | None  # diff only
    base_hash: str | None  # diff only
    method: str | None  # diff only
    seed: int | None  # diff only (hashed deltas use it)
    metadata: dict[str, str]  # diff only; {} for full bundles
    sections: list[SectionInfo]
    manifest_length: int  # stored manifest bytes (version 3: the zstd frame of its JSON)
    format_version: int = 1

    @property
    def data_offset(self) -> int:
        return PREAMBLE.size + self.manifest_length

    @property
    def payload_bytes(self) -> int:
        return sum(s.length for s in self.sections)

    @property
    def total_bytes(self) -> int:
        return self.data_offset + self.payload_bytes


@dataclass
class Bundle(BundleManifest):
    """A decoded bundle: the manifest fields plus `diff` (kind diff) or `model_bytes` (kind full)."""

    diff: Diff | None = None
    model_bytes: bytes | None = None


@dataclass
class Section:
    """One decoded section: a tensor delta, or the `.otam` bytes of a full bundle."""

    info: SectionInfo
    payload: TensorDelta | ChannelDeltas | tuple[str, ...] | bytes


# --- manifest parsing (steps 1-8) -------------------------------------------------
def _parse_preamble(pre: bytes) -> tuple[int, int]:
    """Steps 1-4 -> (format version, manifest length)."""
    # 1) preamble present
    if len(pre) < PREAMBLE.size:
        raise BundleError(f"bundle is {len(pre)} bytes, shorter than the {PREAMBLE.size}-byte preamble (truncated?)")
    magic, version, reserved, manifest_len = PREAMBLE.unpack_from(pre)
    # 2) magic
    if magic != MAGIC:
        raise BundleError(f"bad magic {magic!r}: expected {MAGIC!r} (is this an .otab update bundle?)")
    # 3) version, reserved
    if version not in FORMAT_VERSIONS:
        raise BundleError(f"bundle format version {version} is not supported; this reader supports "
                          f"{', '.join(map(str, FORMAT_VERSIONS))} (update the device agent)")
    if reserved != 0:
        raise BundleError(f"reserved preamble field is {reserved}, expected 0")
    # 4) manifest length limit
    if not 2 <= manifest_len <= MAX_MANIFEST_BYTES:
        raise BundleError(f"manifest length {manifest_len} outside [2, {MAX_MANIFEST_BYTES}] bytes")
    return version, manifest_len


def _parse_json(body: bytes) -> dict[str, Any]:
    """Step 6: strict, canonical JSON object, integers only, no arrays (the parser .otam headers use too)."""
    return parse_canonical_json(body, "manifest", BundleError, arrays=False)


def check_identity(m: dict[str, Any]) -> None:
    """Step 7: top-level fields (the encoders run it too, before compressing anything)."""
    kind = m.get("kind")
    if not isinstance(kind, str) or kind not in MANIFEST_KEYS:  # a dict here would be unhashable
        raise BundleError(f"manifest kind {kind!r:.40}, expected 'diff' or 'full'")
    expected = MANIFEST_KEYS[kind]
    if set(m) != expected:
        raise BundleError(f"{kind} manifest keys {sorted(m)[:12]} differ from the expected {sorted(expected)}")
    if not isinstance(m["model_id"], str) or not _NAME.fullmatch(m["model_id"]):
        raise BundleError(f"model_id {m['model_id']!r:.80} must be 1-{MAX_NAME_CHARS} characters of [A-Za-z0-9_.-]")
    diff = kind == "diff"
    for key in ("base_hash", "target_hash") if diff else ("target_hash",):
        if not isinstance(m[key], str) or not _CONTENT_HASH.fullmatch(m[key]):
            raise BundleError(f"{key} {m[key]!r:.80} must be 32 lowercase hex digits (a model content hash)")
    for key in ("base_version", "target_version") if diff else ("target_version",):
        parse_version(m[key], key, BundleError)
    if diff:
        _check_diff_fields(m)


def _check_diff_fields(m: dict[str, Any]) -> None:
    """Step 7, diff bundles: the learner's method name, seed and metadata."""
    if not isinstance(m["method"], str) or not _METHOD.fullmatch(m["method"]):
        raise BundleError(f"method {m['method']!r:.80} must be 1-64 characters of [a-z0-9_-]")
    if not is_int(m["seed"], 0, MAX_SEED):
        raise BundleError(f"seed {m['seed']!r:.40} must be an integer in [0, 2^64)")
    md = m["metadata"]
    if not isinstance(md, dict) or len(md) > MAX_METADATA_ENTRIES or not all(
            isinstance(v, str) for v in md.values()):
        raise BundleError(f"metadata must be an object of at most {MAX_METADATA_ENTRIES} string values")


def _zstd_bound(raw: int) -> int:
    """ZSTD_COMPRESSBOUND: the most a single frame of `raw` bytes can take."""
    return raw + (raw >> 8) + (((128 << 10) - raw) >> 11 if raw < (128 << 10) else 0)


def _raw_range(e: dict[str, Any]) -> tuple[int, int]:
    """Shape-derived bounds of a section's decompressed size."""
    enc = e["encoding"]
    if enc == "model":
        return 1, MAX_MODEL_BYTES
    if enc == "hashed":
        return e["num_buckets"], e["num_buckets"]
    if enc == WORDS:  # UTF-8 words joined by newlines, 1-4 bytes per character
        return 2 * e["count"] - 1, e["count"] * (4 * MAX_WORD_CHARS + 1) - 1
    numel, count = e["numel"], e["count"]
    if enc == CHANNELS:
        return count + numel, count + numel
    if enc == "bitmask":
        return (numel + 7) // 8 + count, (numel + 7) // 8 + count
    return 2 * count, count * (1 + varint_len(numel - 1))  # index: >= 1 byte per varint + 1 per value


def _check_entry(i: int, name: str, e: Any, expected_offset: int, room: int) -> SectionInfo:
    """Step 8 for one entry; `room` = bytes the bundle size limit leaves from `expected_offset`."""
    if not _NAME.fullmatch(name):
        raise BundleError(f"section {i}: name {name!r:.80} must be 1-{MAX_NAME_CHARS} characters of [A-Za-z0-9_.-]")
    where = f"section {i} ({name})"
    enc = _check_entry_keys(where, e)
    if enc != "model":
        _check_entry_sizes(where, name, e)
    _check_entry_span(where, e, expected_offset, room)
    if not isinstance(e["xxh64"], str) or not _XXH64.fullmatch(e["xxh64"]):
        raise BundleError(f"{where}: xxh64 {e['xxh64']!r:.40} must be 16 lowercase hex digits")
    return SectionInfo(name, enc, e["offset"], e["length"], e["raw_length"], e["xxh64"],
                       e.get("numel"), e.get("count"), e.get("num_buckets"))


def _check_entry_keys(where: str, e: Any) -> str:
    """A known encoding with exactly its keys; returns the encoding."""
    if not isinstance(e, dict) or e.get("encoding") not in ENCODINGS:
        got = e.get("encoding") if isinstance(e, dict) else type(e).__name__
        raise BundleError(f"{where}: encoding {got!r:.40} not in {ENCODINGS}")
    enc = e["encoding"]
    if set(e) != SECTION_KEYS[enc]:
        raise BundleError(f"{where}: {enc} entry keys {sorted(e)[:12]} differ from the expected "
                          f"{sorted(SECTION_KEYS[enc])}")
    return enc


def _check_entry_sizes(where: str, name: str, e: dict[str, Any]) -> None:
    """A delta section's shape fields: numel, buckets or count, and the channels and words sections' names."""
    enc = e["encoding"]
    if (enc == WORDS) != (name == WORDS):
        raise BundleError(f"{where}: encoding {WORDS!r} goes with the section named {WORDS!r} only")
    if enc == WORDS:
        if not is_int(e["count"], 1, MAX_WORDS):
            raise BundleError(f"{where}: count {e['count']!r:.40} (words) outside [1, {MAX_WORDS}]")
        return
    if not is_int(e["numel"], 1, MAX_NUMEL):
        raise BundleError(f"{where}: numel {e['numel']!r:.40} outside [1, {MAX_NUMEL}]")
    if enc == "hashed" and not is_int(e["num_buckets"], 1, MAX_BUCKETS):
        raise BundleError(f"{where}: num_buckets {e['num_buckets']!r:.40} outside [1, {MAX_BUCKETS}]")
    if enc in SPARSE_ENCODINGS and not is_int(e["count"], 0, e["numel"]):
        raise BundleError(f"{where}: count {e['count']!r:.40} outside [0, numel={e['numel']}]")
    if enc == CHANNELS and not is_int(e["count"], 1, min(e["numel"], MAX_SECTIONS)):
        raise BundleError(f"{where}: count {e['count']!r:.40} (tensors) outside "
                          f"[1, {min(e['numel'], MAX_SECTIONS)}]")
    if (enc == CHANNELS) != (name == CHANNELS):
        raise BundleError(f"{where}: encoding {CHANNELS!r} goes with the section named {CHANNELS!r} only")


def _check_entry_span(where: str, e: dict[str, Any], expected_offset: int, room: int) -> None:
    """raw_length within what the shape allows, contiguous offset, stored length within its bound and the room."""
    enc = e["encoding"]
    low, high = _raw_range(e)
    if enc != "model":
        high = min(high, MAX_SECTION_RAW_BYTES)
    if not is_int(e["raw_length"], low, high):
        raise BundleError(f"{where}: raw_length {e['raw_length']!r:.40} outside [{low}, {high}], the range its "
                          f"{enc} encoding allows for these sizes")
    if not is_int(e["offset"], expected_offset, expected_offset):
        raise BundleError(f"{where}: offset {e['offset']!r:.40}, expected {expected_offset} "
                          "(sections must be contiguous, in table order, without holes or overlaps)")
    if enc == "model":
        if not is_int(e["length"], e["raw_length"], e["raw_length"]):
            raise BundleError(f"{where}: model sections are stored uncompressed, so length must equal raw_length "
                              f"{e['raw_length']}, got {e['length']!r:.40}")
    elif not is_int(e["length"], 1, _zstd_bound(e["raw_length"])):
        raise BundleError(f"{where}: length {e['length']!r:.40} outside [1, {_zstd_bound(e['raw_length'])}], "
                          f"the zstd bound for {e['raw_length']} raw bytes")
    if e["length"] > room:
        raise BundleError(f"{where}: length {e['length']} takes the bundle past its limit of {MAX_BUNDLE_BYTES} bytes")


def _check_table(m: dict[str, Any], manifest_len: int) -> list[SectionInfo]:
    """Step 8: the section table, in key order (sorted by name: the manifest is canonical)."""
    table = m["sections"]
    if not isinstance(table, dict) or len(table) > MAX_SECTIONS:
        got = f"{len(table)} entries" if isinstance(table, dict) else type(table).__name__
        raise BundleError(f"sections must be an object of at most {MAX_SECTIONS} entries, got {got}")
    is_model = [isinstance(e, dict) and e.get("encoding") == "model" for e in table.values()]
    if m["kind"] == "full" and (list(table) != ["model"] or not is_model[0]):
        raise BundleError(f"a full bundle must have exactly one section, 'model' with encoding 'model'; "
                          f"got {list(table)[:4]}")
    if m["kind"] == "diff" and any(is_model):
        raise BundleError("a diff bundle must not contain a 'model' section (use kind 'full')")
    infos: list[SectionInfo] = []
    offset, room = 0, MAX_BUNDLE_BYTES - PREAMBLE.size - manifest_len
    for i, (name, e) in enumerate(table.items()):
        info = _check_entry(i, name, e, offset, room - offset)
        infos.append(info)
        offset += info.length
    return infos


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    """Exactly n bytes (n already bounded by a limit), looping over short reads."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    data = b"".join(parts)
    if len(data) != n:
        raise BundleError(f"{what}: expected {n} bytes, the bundle ended after {len(data)} (truncated download?)")
    return data


def _read_manifest(stream: BinaryIO) -> BundleManifest:
    """Steps 1-8 from a stream positioned at the start of a bundle."""
    pre = b""
    while len(pre) < PREAMBLE.size:  # streams may return short reads
        chunk = stream.read(PREAMBLE.size - len(pre))
        if not chunk:
            break
        pre += chunk
    version, manifest_len = _parse_preamble(pre)
    # 5) manifest bytes present
    body = _read_exact(stream, manifest_len, f"manifest of {manifest_len} bytes")
    if version >= COMPACT_FORMAT:  # the JSON inside one bounded zstd frame
        body = bytes(decompress_declared(body, MAX_MANIFEST_BYTES, "compressed manifest", BundleError))
    m = _parse_json(body)
    check_identity(m)
    sections = _check_table(m, manifest_len)
    if version < 2 and any(s.encoding == CHANNELS for s in sections):
        raise BundleError(f"a {CHANNELS!r} section needs bundle format version 2, the preamble says {version}")
    if version < WORDS_FORMAT and any(s.encoding == WORDS for s in sections):
        raise BundleError(f"a {WORDS!r} section needs bundle format version {WORDS_FORMAT}, the preamble says "
                          f"{version}")
    diff = m["kind"] == "diff"
    return BundleManifest(m["kind"], m["model_id"], m["target_version"], m["target_hash"],
                          m["base_version"] if diff else None, m["base_hash"] if diff else None,
                          m["method"] if diff else None, m["seed"] if diff else None,
                          dict(m["metadata"]) if diff else {}, sections, manifest_len, version)


# --- section decoding (step 10) ---------------------------------------------------
def _decompress(info: SectionInfo, packed: bytes) -> bytearray:
    return decompress_exact(packed, info.raw_length, f"section {info.name}", BundleError)


def _decode_words(where: str, raw: bytearray, count: int) -> tuple[str, ...]:
    """UTF-8 words joined by newlines: `count` of them, sorted, unique, each 1-MAX_WORD_CHARS characters
    with no whitespace (whether the model's symbols spell them is checked at apply)."""
    try:
        words = tuple(bytes(raw).decode("utf-8").split("\n"))
    except UnicodeDecodeError:
        raise BundleError(f"{where}: words must be UTF-8") from None
    if len(words) != count:
        raise BundleError(f"{where}: {len(words)} words, the section table says {count}")
    for i, word in enumerate(words):
        if not 1 <= len(word) <= MAX_WORD_CHARS or any(ch.isspace() or not ch.isprintable() for ch in word):
            raise BundleError(f"{where}: word {i} ({word!r:.40}) must be 1-{MAX_WORD_CHARS} printable characters "
                              "without whitespace")
        if i and word <= words[i - 1]:
            raise BundleError(f"{where}: words must be sorted and unique: {word!r:.40} follows {words[i - 1]!r:.40}")
    return words


def _decode_delta(info: SectionInfo, raw: bytearray,
                  keep: bool = True) -> TensorDelta | ChannelDeltas | tuple[str, ...]:
    where = f"section {info.name}"
    if info.encoding == WORDS:
        assert info.count is not None  # guaranteed by _check_entry
        return _decode_words(where, raw, info.count)
    if info.encoding == CHANNELS:
        assert info.count is not None  # guaranteed by _check_entry
        exps, codes = np.frombuffer(raw, dtype=np.int8)[:info.count], np.frombuffer(raw, dtype=np.int8)[info.count:]
        if np.any(codes < -QMAX):
            raise BundleError(f"{where}: channel codes must be within [-{QMAX}, {QMAX}], found -128")
        if np.any((exps < BIAS_STEP_EXPS[0]) | (exps > 0)):
            raise BundleError(f"{where}: step exponents must be within [{BIAS_STEP_EXPS[0]}, 0]")
        return ChannelDeltas(exps.copy(), codes.copy())
    if info.encoding == "hashed":
        buckets = np.frombuffer(raw, dtype=np.int8).copy()
        if np.any(buckets < -QMAX):
            raise BundleError(f"{where}: bucket values must be within [-{QMAX}, {QMAX}], found -128")
        return HashedDelta(info.num_buckets, buckets)
    count, numel = info.count, info.numel
    assert count is not None and numel is not None  # guaranteed by _check_entry
    try:
        view = memoryview(raw)  # slices without copies: a section's raw bytes are held once
        positions, values = decode_sparse(info.encoding, view[:len(raw) - count], view[len(raw) - count:], count,
                                          numel, keep=keep)
    except SparseCodingError as exc:
        raise BundleError(f"{where}: {exc}") from None
    return SparseDelta(positions, values.copy())


def model_header(model_bytes: bytes) -> dict[str, Any]:
    """The header of the `.otam` file inside a full bundle (BundleError if it is not one)."""
    try:
        return parse_model_header(model_bytes)
    except (ModelFormatError, ValueError) as exc:  # ValueError: JSON integers over 4300 digits
        raise BundleError(f"model section is not a valid .otam file: {exc}") from None


def _check_model_section(manifest: BundleManifest, model_bytes: bytes) -> None:
    """The .otam header must name the model the manifest promises (no mix-and-match)."""
    header = model_header(model_bytes)
    expected = (manifest.model_id, manifest.target_version, manifest.target_hash)
    found = (header.get("model_id"), header.get("version"), header.get("content_hash"))
    if found != expected:
        raise BundleError(f"model section is {found}, the manifest promises {expected}")


# --- reading --------------------------------------------------------------------
class _Unchecked:
    """`installed_on` default: the bundle is not checked against a model while reading."""


UNCHECKED = _Unchecked()


class BundleReader:
    """Validates preamble and manifest on construction, then yields sections one
    at a time: memory holds at most one section's stored + raw bytes (and its
    decoded arrays). Iterate once; the last step checks for trailing bytes.

    `size`: total bundle bytes if known (default: measured when the stream is
    seekable) so that truncation and trailing bytes fail before any section is read.
    `installed_on`: the model the bundle will be applied to (None: no model yet).
    Its limits are then relative to that model and checked before any section is
    read: model id, base hash, and every section's size equal to the real tensor's
    (verify_bundle_for_model), so no section can decode to more than the tensor it changes.
    `keep=False` checks every section fully but does not materialise positions
    (verification only: the payloads yielded are empty).
    """

    def __init__(self, stream: BinaryIO, *, size: int | None = None,
                 installed_on: DeviceModel | None | _Unchecked = UNCHECKED, keep: bool = True) -> None:
        self._stream = stream
        self._keep = keep
        if size is None and _seekable(stream):
            here = stream.tell()
            size = stream.seek(0, io.SEEK_END) - here
            stream.seek(here)
        if size is not None and size > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES}")
        self.manifest = _read_manifest(stream)
        # 9) bundle size: ends exactly at the last section
        if size is not None and size != self.manifest.total_bytes:
            diff = size - self.manifest.total_bytes
            what = (f"{diff} trailing bytes after the last section" if diff > 0
                    else f"{-diff} bytes missing (truncated?)")
            raise BundleError(f"bundle is {size} bytes, the manifest describes {self.manifest.total_bytes}: {what}")
        if not isinstance(installed_on, _Unchecked):
            verify_bundle_for_model(self.manifest, installed_on)  # limits relative to the real tensors
        self._started = False

    def __iter__(self) -> Iterator[Section]:
        if self._started:
            raise BundleError("bundle sections were already read; open a new BundleReader")
        self._started = True
        for info in self.manifest.sections:
            packed = _read_exact(self._stream, info.length, f"section {info.name}")
            # 10) checksum first: corrupt bytes never reach the decompressor
            actual = xxhash.xxh64_hexdigest(packed)
            if actual != info.xxh64:
                raise BundleError(f"section {info.name}: checksum mismatch (expected xxh64 {info.xxh64}, got "
                                  f"{actual}); the bundle is corrupt, download it again")
            if info.encoding == "model":
                _check_model_section(self.manifest, packed)
                yield Section(info, packed)
            else:
                raw = _decompress(info, packed)
                del packed
                yield Section(info, _decode_delta(info, raw, self._keep))
        # 11) no trailing bytes (polyglots, appended junk)
        if self._stream.read(1):
            raise BundleError("trailing bytes after the last section; the bundle must end exactly there")


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def decode_bundle(data: bytes) -> Bundle:
    """Bundle bytes -> Bundle (with `.diff` or `.model_bytes`), or BundleError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleError(f"expected bundle bytes, got {type(data).__name__}")
    return _collect(BundleReader(io.BytesIO(data), size=len(data)))


def read_bundle(path_or_stream: str | Path | BinaryIO, installed_on: DeviceModel | None) -> Bundle:
    """Read a bundle for the model it will be applied to (None: none installed yet),
    streaming from the file: the manifest is checked against that model before any
    section is read, then sections are decoded one at a time. Memory is the decoded
    deltas (bounded by the model's own tensors) or one model section, never the file."""
    stream, owned = _open(path_or_stream)
    try:
        return _collect(BundleReader(stream, installed_on=installed_on))
    finally:
        if owned:
            stream.close()


def _collect(reader: BundleReader) -> Bundle:
    payloads = {s.info.name: s.payload for s in reader}
    m = reader.manifest
    bundle = Bundle(**{f: getattr(m, f) for f in BundleManifest.__dataclass_fields__})
    if m.kind == "full":
        bundle.model_bytes = payloads["model"]  # type: ignore[assignment]
    else:
        assert m.base_version is not None and m.base_hash is not None and m.method is not None
        channels = payloads.pop(CHANNELS, None)
        words = payloads.pop(WORDS, ())
        bundle.diff = Diff(m.method, m.model_id, m.base_version, m.target_version, m.base_hash, m.target_hash,
                           payloads, m.seed or 0, dict(m.metadata), channels, words)  # type: ignore[arg-type]
    return bundle


def _open(path_or_stream: str | Path | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(path_or_stream, (str, Path)):
        try:
            return open(path_or_stream, "rb"), True
        except OSError as exc:
            raise os_error(exc, f"opening bundle {path_or_stream}") from None
    return path_or_stream, False


def read_bundle_manifest(path_or_stream: str | Path | BinaryIO) -> BundleManifest:
    """Preamble + manifest only (reads at most 16 + 256 KiB bytes). For a path
    (or seekable stream) the file size must also match the manifest."""
    stream, owned = _open(path_or_stream)
    try:
        return BundleReader(stream).manifest
    finally:
        if owned:
            stream.close()


# --- checks against a model, applying, inspecting ------------------------------------
def verify_bundle_for_model(bundle: BundleManifest, model: DeviceModel | None) -> None:
    """Does the bundle install on `model` (None: no model installed)? BundleError if not
    (WrongBaseError: a diff made for another base model)."""
    if model is not None and bundle.model_id != model.model_id:
        raise BundleError(f"bundle is for model {bundle.model_id!r}, this device runs {model.model_id!r}")
    if bundle.kind == "full":
        return
    if model is None:
        raise BundleError("a diff bundle needs an installed base model; install a full bundle first")
    actual = model.content_hash()
    if actual != bundle.base_hash:
        raise WrongBaseError(f"bundle expects base model {bundle.base_hash} (version {bundle.base_version}), "
                          f"this model is {actual} (version {model.version})")
    for s in bundle.sections:
        if s.encoding == CHANNELS:
            tensors = channel_tensors(model)
            expected = (sum(c for _, _, c in tensors), len(tensors))
            if (s.numel, s.count) != expected:
                raise BundleError(f"section {s.name}: bundle expects {s.numel} channels of {s.count} tensors, the "
                                  f"model has {expected[0]} of {expected[1]}")
            continue
        if s.encoding == WORDS:
            continue
        w = model.weights.get(s.name)
        if w is None or w.q.size != s.numel:
            got = "no such tensor" if w is None else f"{w.q.size} entries"
            raise BundleError(f"section {s.name}: bundle expects an int8 tensor of {s.numel} entries, "
                              f"the model has {got}")


def full_model_limit(model: DeviceModel | None) -> int | None:
    """Decoded bytes a full bundle may unpack to on a device that runs `model`: a few times
    what it runs now (a new release may grow, not by orders of magnitude); None: the format's limit."""
    return None if model is None else FULL_MODEL_GROWTH * decoded_bytes(model.config)


def apply_bundle(bundle: Bundle, model: DeviceModel | None, *, in_place: bool = False) -> DeviceModel:
    """Install: the new DeviceModel, its content hash checked against target_hash.
    Diff bundles go through apply_diff (DiffError); full bundles through decode_model
    (ModelFormatError)."""
    verify_bundle_for_model(bundle, model)
    if bundle.kind == "diff":
        assert bundle.diff is not None and model is not None
        return apply_diff(model, bundle.diff, check_hashes=True, in_place=in_place)
    assert bundle.model_bytes is not None
    new = decode_model(bundle.model_bytes, max_decoded_bytes=full_model_limit(model))
    if new.content_hash() != bundle.target_hash or new.version != bundle.target_version:
        raise BundleError(f"model section decodes to {new.content_hash()} version {new.version}, the manifest "
                          f"promises {bundle.target_hash} version {bundle.target_version}")
    return new


def bundle_overhead(data: bytes) -> int:
    """Bundle bytes that are not section payload (preamble + manifest)."""
    m = BundleReader(io.BytesIO(data), size=len(data)).manifest
    return len(data) - m.payload_bytes


def inspect_bundle(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """A JSON-ready summary for `ota bundle inspect`. With `verify`, every section
    is also read, checksummed and decoded (streaming, bounded memory)."""
    stream, _ = _open(path)
    with stream:
        reader = BundleReader(stream, keep=False)  # verification does not keep decoded positions
        if verify:
            for _ in reader:
                pass
    m = reader.manifest
    summary: dict[str, Any] = {
        "path": str(path), "kind": m.kind, "model_id": m.model_id, "format_version": m.format_version,
        "target_version": m.target_version, "target_hash": m.target_hash,
        "bytes": m.total_bytes, "payload_bytes": m.payload_bytes, "overhead_bytes": m.total_bytes - m.payload_bytes,
        "sections": [{"name": s.name, **s.to_json()} for s in m.sections],
        "verified": verify,
    }
    if m.kind == "diff":
        summary.update(base_version=m.base_version, base_hash=m.base_hash, method=m.method, seed=m.seed,
                       metadata=m.metadata,
                       changed_entries=sum((s.count or 0) for s in m.sections if s.encoding in SPARSE_ENCODINGS),
                       hashed_buckets=sum((s.num_buckets or 0) for s in m.sections),
                       words=sum((s.count or 0) for s in m.sections if s.encoding == WORDS))
    return summary
