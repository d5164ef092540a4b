"""Device model file codec (`.otam`). The byte layout is specified in
docs/model-format.md; this module is its only implementation.

Parsing validates in a fixed order and never trusts a length before checking
it against a limit and against the bytes actually present:
magic -> version -> header length -> header JSON -> schema and config ->
tensor table vs config layout -> section offsets (contiguous, no trailing
bytes) -> per-section checksum -> bounded decompression -> decoding ->
content hash.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zstandard

from device_agent.atomic import write_atomic
from device_agent.device_model import QMAX, DeviceModel, QuantizedWeight, canonical_json
from device_agent.errors import (ConfigError, ContentHashMismatchError, ModelFormatError, SparseCodingError,
                                 TokenizerError, os_error)
from device_agent.model_config import LEVEL_KEYS, ModelConfig, tensor_layout
from device_agent.sparse_coding import decode_sparse, pick_sparse_coding, varint_len
from device_agent.strict_header import (check_content_hash, check_exact_keys, check_int, check_name,
                                        check_string_map, check_xxh64, is_int, parse_canonical_json)
from device_agent.version import parse_version
from device_agent.zstd_frames import decompress_exact
from device_agent.tokenizer import CharTokenizer

MAGIC = b"OTAMODEL"
FORMAT_VERSION = 2  # 2: the front end may carry a level normaliser (features.level_*)
READABLE_VERSIONS = (1, 2)
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, reserved, header length
MAX_HEADER_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 30
MAX_TENSORS = 256
MAX_TENSOR_NUMEL = 1 << 28  # 4 * 8192 * 8192: the largest matrix a ModelConfig may declare
MAX_DECODED_BYTES = 1 << 30  # decoded tensors of one model; callers pass tighter limits (decode_model)
MAX_METADATA_ENTRIES = 64
ZSTD_LEVEL = 19
HEADER_KEYS = {"model_id", "version", "config", "tokenizer", "content_hash", "metadata", "tensors"}
ENTRY_KEYS = {"name", "dtype", "shape", "coding", "nnz", "offset", "length", "raw_length", "xxh64"}


# --- encoding ---------------------------------------------------------------
FAST_LEVEL = 3  # for files that stay on one device (A/B slots): 100x faster, slightly larger


def _compress(raw: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True).compress(raw)


def _encode_weight(w: QuantizedWeight, level: int) -> tuple[str, bytes, bytes, int]:
    """-> (coding, raw, compressed, nnz); the position coding that compresses smaller."""
    flat = w.q.reshape(-1)
    positions = np.flatnonzero(flat)
    head = np.ascontiguousarray(w.scale, dtype="<f4").tobytes()
    coding, raw, packed = pick_sparse_coding(positions, flat[positions], flat.size,
                                             lambda raw: _compress(raw, level), head=head)
    return coding, raw, packed, int(positions.size)


def encode_model(model: DeviceModel, level: int = ZSTD_LEVEL) -> bytes:
    """DeviceModel -> file bytes (deterministic for a given zstd version and level).

    The level changes only compression, never the content hash; published
    models use ZSTD_LEVEL (the canonical, byte-pinned encoding)."""
    model.validate()
    entries: list[dict[str, Any]] = []
    sections: list[bytes] = []
    offset = 0
    for name, (kind, shape) in tensor_layout(model.config).items():
        if kind == "int8":
            coding, raw, packed, nnz = _encode_weight(model.weights[name], level)
            dtype = "int8"
        else:
            raw = np.ascontiguousarray(model.floats[name], dtype="<f4").tobytes()
            coding, packed, nnz, dtype = "dense", _compress(raw, level), int(np.prod(shape)), "float32"
        entries.append({"name": name, "dtype": dtype, "shape": list(shape), "coding": coding, "nnz": nnz,
                        "offset": offset, "length": len(packed), "raw_length": len(raw),
                        "xxh64": xxhash.xxh64_hexdigest(packed)})
        sections.append(packed)
        offset += len(packed)
    header = canonical_json({
        "model_id": model.model_id, "version": model.version, "config": model.config.to_json(),
        "tokenizer": model.tokenizer.to_json(), "content_hash": model.content_hash(),
        "metadata": model.metadata, "tensors": entries,
    })
    if len(header) > MAX_HEADER_BYTES:
        raise ModelFormatError(f"header is {len(header)} bytes; the limit is {MAX_HEADER_BYTES}")
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header)) + header + b"".join(sections)


def save_model(model: DeviceModel, path: str | Path) -> str:
    """Write atomically (temp file + fsync + rename); returns the content hash."""
    write_atomic(path, encode_model(model))
    return model.content_hash()


# --- decoding ---------------------------------------------------------------
def _parse_preamble(buf: bytes) -> int:
    """Steps 1-2 -> header length."""
    if len(buf) < PREAMBLE.size:
        raise ModelFormatError(f"file is {len(buf)} bytes, shorter than the {PREAMBLE.size}-byte preamble (truncated?)")
    if len(buf) > MAX_FILE_BYTES:
        raise ModelFormatError(f"file is {len(buf)} bytes; the limit is {MAX_FILE_BYTES}")
    magic, version, reserved, header_len = PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        raise ModelFormatError(f"bad magic {magic!r}: expected {MAGIC!r} (is this an .otam device model?)")
    if version not in READABLE_VERSIONS:
        raise ModelFormatError(f"format version {version} is not supported; this reader supports {READABLE_VERSIONS}")
    if reserved != 0:
        raise ModelFormatError(f"reserved preamble field is {reserved}, expected 0")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise ModelFormatError(f"header length {header_len} outside [2, {MAX_HEADER_BYTES}] bytes")
    if PREAMBLE.size + header_len > len(buf):
        raise ModelFormatError(f"header length {header_len} runs past the end of a {len(buf)}-byte file (truncated?)")
    return header_len


def parse_header(buf: bytes) -> dict[str, Any]:
    """Steps 1-4: preamble, canonical header JSON (device_agent.strict_header), identity fields.

    `buf` needs only the preamble and the header; config and tensor table are checked by decode_model."""
    header_len = _parse_preamble(buf)
    header = parse_canonical_json(bytes(buf[PREAMBLE.size:PREAMBLE.size + header_len]), "header", ModelFormatError,
                                  floats=True)  # FeatureConfig may hold floats; NaN/Infinity never parse
    check_exact_keys(header, HEADER_KEYS, "header", ModelFormatError)
    check_name(header["model_id"], "model_id", ModelFormatError)
    parse_version(header["version"], "version", ModelFormatError)
    check_content_hash(header["content_hash"], "content_hash", ModelFormatError)
    check_string_map(header["metadata"], MAX_METADATA_ENTRIES, "metadata", ModelFormatError)
    return header


def decoded_bytes(cfg: ModelConfig) -> int:
    """Bytes the decoded tensors of a config take (int8 values + fp32 scales, fp32 floats),
    computed on Python integers before anything is allocated."""
    total = 0
    for kind, shape in tensor_layout(cfg).values():
        numel = math.prod(shape)
        if numel > MAX_TENSOR_NUMEL:
            raise ModelFormatError(f"config makes a tensor of shape {list(shape)} ({numel} entries); the limit is "
                                   f"{MAX_TENSOR_NUMEL}")
        total += numel + 4 * shape[0] if kind == "int8" else 4 * numel
    return total


def _raw_range(kind: str, coding: str, shape: tuple[int, ...], nnz: int) -> tuple[int, int]:
    numel = math.prod(shape)
    if kind == "float32":
        return 4 * numel, 4 * numel
    head = 4 * shape[0]
    if coding == "bitmask":
        return head + (numel + 7) // 8 + nnz, head + (numel + 7) // 8 + nnz
    return head + 2 * nnz, head + nnz * (1 + varint_len(numel - 1))  # canonical varints of gaps < numel


def _check_entry(e: Any, name: str, kind: str, shape: tuple[int, ...], offset: int, room: int) -> None:
    """Step 6 for one tensor entry: exact keys and types, codings, sizes, contiguous offset."""
    check_exact_keys(e, ENTRY_KEYS, f"tensor entry {name}", ModelFormatError)
    if e["name"] != name:
        raise ModelFormatError(f"tensor table lists {e['name']!r:.80} where the config's layout has {name!r}")
    shape_ok = isinstance(e["shape"], list) and all(is_int(d, 0, MAX_TENSOR_NUMEL) for d in e["shape"])
    if e["dtype"] != kind or not shape_ok or tuple(e["shape"]) != shape:
        raise ModelFormatError(f"{name}: table says {e['dtype']!r:.20} {str(e['shape']):.60}, the config requires "
                               f"{kind} {list(shape)}")
    codings = ("bitmask", "index") if kind == "int8" else ("dense",)
    if e["coding"] not in codings:
        raise ModelFormatError(f"{name}: coding {e['coding']!r:.40} not in {codings}")
    numel = math.prod(shape)
    check_int(e["nnz"], 0, numel, f"{name}: nnz", ModelFormatError)
    if kind == "float32" and e["nnz"] != numel:
        raise ModelFormatError(f"{name}: a dense tensor's nnz must be its size {numel}, got {e['nnz']}")
    low, high = _raw_range(kind, e["coding"], shape, e["nnz"])
    check_int(e["raw_length"], low, high, f"{name}: raw_length", ModelFormatError)
    if not is_int(e["offset"], offset, offset):
        raise ModelFormatError(f"{name}: section offset {e['offset']!r:.40}, expected {offset} "
                               "(sections must be contiguous, without holes or overlaps)")
    if not is_int(e["length"], 1, room):
        raise ModelFormatError(f"{name}: section length {e['length']!r:.40} outside [1, {room}]: it runs past the "
                               "end of the file (truncated?)")
    check_xxh64(e["xxh64"], f"{name}: xxh64", ModelFormatError)


def _check_table(header: dict[str, Any], cfg: ModelConfig, data_len: int) -> list[dict[str, Any]]:
    """Steps 5-6: the tensor table against the config's layout and the bytes present."""
    entries, layout = header["tensors"], tensor_layout(cfg)
    if not isinstance(entries, list) or len(entries) > MAX_TENSORS or len(entries) != len(layout):
        got = f"{len(entries)} entries" if isinstance(entries, list) else type(entries).__name__
        raise ModelFormatError(f"tensor table must list the config's {len(layout)} tensors (at most {MAX_TENSORS}), "
                               f"got {got}")
    offset = 0
    for e, (name, (kind, shape)) in zip(entries, layout.items()):
        _check_entry(e, name, kind, shape, offset, data_len - offset)
        offset += e["length"]
    if offset != data_len:
        raise ModelFormatError(f"{data_len - offset} trailing bytes after the last section "
                               "(expected the file to end exactly there)")
    return entries


def _decompress(entry: dict[str, Any], packed: bytes) -> bytes:
    if xxhash.xxh64_hexdigest(packed) != entry["xxh64"]:
        raise ModelFormatError(f"{entry['name']}: section checksum mismatch (expected xxh64 {entry['xxh64']}, "
                               f"got {xxhash.xxh64_hexdigest(packed)}); the file is corrupt")
    return decompress_exact(packed, entry["raw_length"], entry["name"], ModelFormatError)


def _decode_weight(entry: dict[str, Any], raw: bytes, shape: tuple[int, ...]) -> QuantizedWeight:
    n_out, numel, nnz = shape[0], int(np.prod(shape)), entry["nnz"]
    scale = np.frombuffer(raw[: 4 * n_out], dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ModelFormatError(f"{entry['name']}: scales must be finite and positive")
    try:
        positions, values = decode_sparse(entry["coding"], raw[4 * n_out: len(raw) - nnz], raw[len(raw) - nnz:],
                                          nnz, numel)
    except SparseCodingError as exc:
        raise ModelFormatError(f"{entry['name']}: {exc}") from exc
    q = np.zeros(numel, dtype=np.int8)
    q[positions] = values
    return QuantizedWeight(q.reshape(shape), scale)


def decode_model(buf: bytes, *, max_decoded_bytes: int | None = None) -> DeviceModel:
    """File bytes -> DeviceModel, or ModelFormatError saying what was wrong.

    `max_decoded_bytes` (default MAX_DECODED_BYTES) bounds the memory the decoded
    tensors may take; it is checked from the config before any section is read,
    so callers that know what the model is for can pass a tighter, relative limit."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise ModelFormatError(f"expected model file bytes, got {type(buf).__name__}")
    header = parse_header(buf)
    version = PREAMBLE.unpack_from(buf)[1]
    feats = header["config"].get("features") if isinstance(header["config"], dict) else None
    if version == 1 and isinstance(feats, dict) and set(feats) & set(LEVEL_KEYS):
        raise ModelFormatError(f"format-1 files have no level normaliser, but the header sets "
                               f"{sorted(set(feats) & set(LEVEL_KEYS))}")
    try:
        cfg = ModelConfig.from_json(header["config"])
        tokenizer = CharTokenizer.from_json(header["tokenizer"])
    except (ConfigError, TokenizerError, ValueError, TypeError) as exc:
        raise ModelFormatError(f"header config/tokenizer invalid: {exc}") from exc
    limit = MAX_DECODED_BYTES if max_decoded_bytes is None else min(max_decoded_bytes, MAX_DECODED_BYTES)
    need = decoded_bytes(cfg)
    if need > limit:
        raise ModelFormatError(f"config {header['config']!s:.200} makes {need} bytes of tensors; the limit here is "
                               f"{limit}")
    header_len = PREAMBLE.unpack_from(buf)[3]
    data = memoryview(buf)[PREAMBLE.size + header_len:]
    entries = _check_table(header, cfg, len(data))
    layout = tensor_layout(cfg)
    weights: dict[str, QuantizedWeight] = {}
    floats: dict[str, np.ndarray] = {}
    for e in entries:
        raw = _decompress(e, bytes(data[e["offset"]: e["offset"] + e["length"]]))
        kind, shape = layout[e["name"]]
        if kind == "int8":
            weights[e["name"]] = _decode_weight(e, raw, shape)
        else:
            floats[e["name"]] = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    model = DeviceModel(cfg, tokenizer, weights, floats, header["model_id"], header["version"],
                        dict(header["metadata"]))
    model.validate()
    actual = model.content_hash()
    if actual != header["content_hash"]:
        raise ContentHashMismatchError(f"content hash {actual} does not match the header's {header['content_hash']}")
    return model


def load_model(path: str | Path) -> DeviceModel:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file not found: {path} (expected an .otam device model)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{path} is {size} bytes; the limit is {MAX_FILE_BYTES}")
    return decode_model(path.read_bytes())


def read_header(path: str | Path) -> dict[str, Any]:
    """Header only (for `ota model inspect` and quick identity checks)."""
    try:
        with open(path, "rb") as f:
            pre = f.read(PREAMBLE.size)
            if len(pre) == PREAMBLE.size:
                pre += f.read(min(PREAMBLE.unpack_from(pre)[3], MAX_HEADER_BYTES))
    except OSError as exc:
        raise os_error(exc, f"reading model file {path}") from None
    return parse_header(pre)
