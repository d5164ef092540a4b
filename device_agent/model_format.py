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

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zstandard

from device_agent.atomic import write_atomic
from device_agent.device_model import QMAX, DeviceModel, QuantizedWeight, canonical_json
from device_agent.errors import ConfigError, ContentHashMismatchError, ModelFormatError
from device_agent.model_config import ModelConfig, tensor_layout
from device_agent.sparse_coding import bitmask_encode, decode_sparse, index_encode
from device_agent.zstd_frames import decompress_exact
from device_agent.tokenizer import CharTokenizer

MAGIC = b"OTAMODEL"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, reserved, header length
MAX_HEADER_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 30
MAX_TENSORS = 256
ZSTD_LEVEL = 19
HEADER_KEYS = {"model_id", "version", "config", "tokenizer", "content_hash", "metadata", "tensors"}
ENTRY_KEYS = {"name", "dtype", "shape", "coding", "nnz", "offset", "length", "raw_length", "xxh64"}


# --- encoding ---------------------------------------------------------------
FAST_LEVEL = 3  # for files that stay on one device (A/B slots): 100x faster, slightly larger


def _compress(raw: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True).compress(raw)


def _encode_weight(w: QuantizedWeight, level: int) -> tuple[str, bytes, bytes, int]:
    """-> (coding, raw, compressed, nnz); picks the smaller compressed coding."""
    flat = w.q.reshape(-1)
    positions = np.flatnonzero(flat)
    head = np.ascontiguousarray(w.scale, dtype="<f4").tobytes()
    values = flat[positions].tobytes()
    best = None
    for coding, positions_bytes in (("bitmask", bitmask_encode(flat != 0)), ("index", index_encode(positions))):
        raw = head + positions_bytes + values
        packed = _compress(raw, level)
        if best is None or len(packed) < len(best[2]):
            best = (coding, raw, packed, int(positions.size))
    assert best is not None
    return best


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
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ModelFormatError(f"header JSON repeats keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_header(buf: bytes) -> dict[str, Any]:
    if len(buf) < PREAMBLE.size:
        raise ModelFormatError(f"file is {len(buf)} bytes, shorter than the {PREAMBLE.size}-byte preamble (truncated?)")
    if len(buf) > MAX_FILE_BYTES:
        raise ModelFormatError(f"file is {len(buf)} bytes; the limit is {MAX_FILE_BYTES}")
    magic, version, reserved, header_len = PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        raise ModelFormatError(f"bad magic {magic!r}: expected {MAGIC!r} (is this an .otam device model?)")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"format version {version} is not supported; this reader supports {FORMAT_VERSION}")
    if reserved != 0:
        raise ModelFormatError(f"reserved preamble field is {reserved}, expected 0")
    if header_len > MAX_HEADER_BYTES:
        raise ModelFormatError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if PREAMBLE.size + header_len > len(buf):
        raise ModelFormatError(f"header length {header_len} runs past the end of a {len(buf)}-byte file (truncated?)")
    try:
        header = json.loads(buf[PREAMBLE.size:PREAMBLE.size + header_len].decode("utf-8"),
                            object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError and huge ints
        raise ModelFormatError(f"header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        got = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ModelFormatError(f"header keys {got} differ from the expected {sorted(HEADER_KEYS)}")
    return header


def _check_table(header: dict[str, Any], cfg: ModelConfig, data_len: int) -> list[dict[str, Any]]:
    entries = header["tensors"]
    layout = tensor_layout(cfg)
    if not isinstance(entries, list) or len(entries) > MAX_TENSORS:
        raise ModelFormatError(f"tensor table must be a list of at most {MAX_TENSORS} entries")
    names = []
    for e in entries:
        if not isinstance(e, dict) or set(e) != ENTRY_KEYS:
            raise ModelFormatError(f"tensor entry {str(e)[:120]} must have exactly the keys {sorted(ENTRY_KEYS)}")
        names.append(e["name"])
    if names != list(layout):
        raise ModelFormatError(f"tensor table {names[:4]}... does not list the config's tensors in canonical order "
                               f"{list(layout)[:4]}...")
    expected_offset = 0
    for e in entries:
        kind, shape = layout[e["name"]]
        numel = int(np.prod(shape))
        if e["dtype"] != kind or e["shape"] != list(shape):
            raise ModelFormatError(f"{e['name']}: table says {e['dtype']} {e['shape']}, the config requires "
                                   f"{kind} {list(shape)}")
        codings = ("bitmask", "index") if kind == "int8" else ("dense",)
        if e["coding"] not in codings:
            raise ModelFormatError(f"{e['name']}: coding {e['coding']!r} not in {codings}")
        if not _is_int(e["nnz"], 0, numel):
            raise ModelFormatError(f"{e['name']}: nnz {e['nnz']!r} outside [0, {numel}]")
        if kind == "float32":
            max_raw = min_raw = 4 * numel
        elif e["coding"] == "bitmask":
            max_raw = min_raw = 4 * shape[0] + (numel + 7) // 8 + e["nnz"]
        else:
            min_raw, max_raw = 4 * shape[0] + 2 * e["nnz"], 4 * shape[0] + 11 * e["nnz"]
        if not _is_int(e["raw_length"], min_raw, max_raw):
            raise ModelFormatError(f"{e['name']}: raw length {e['raw_length']!r} outside [{min_raw}, {max_raw}]")
        if e["offset"] != expected_offset:
            raise ModelFormatError(f"{e['name']}: section offset {e['offset']!r}, expected {expected_offset} "
                                   "(sections must be contiguous, without holes or overlaps)")
        if not _is_int(e["length"], 1, data_len - expected_offset):
            raise ModelFormatError(f"{e['name']}: section length {e['length']!r} runs past the end of the file "
                                   f"({data_len - expected_offset} bytes remain; truncated?)")
        if not isinstance(e["xxh64"], str) or len(e["xxh64"]) != 16:
            raise ModelFormatError(f"{e['name']}: xxh64 must be 16 hex digits")
        expected_offset += e["length"]
    if expected_offset != data_len:
        raise ModelFormatError(f"{data_len - expected_offset} trailing bytes after the last section "
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
    except ValueError as exc:
        raise ModelFormatError(f"{entry['name']}: {exc}") from exc
    q = np.zeros(numel, dtype=np.int8)
    q[positions] = values
    return QuantizedWeight(q.reshape(shape), scale)


def decode_model(buf: bytes) -> DeviceModel:
    """File bytes -> DeviceModel, or ModelFormatError saying what was wrong."""
    header = parse_header(buf)
    if not isinstance(header["model_id"], str) or not 0 < len(header["model_id"]) <= 128:
        raise ModelFormatError("model_id must be a string of 1-128 characters")
    if not _is_int(header["version"], 0, 2**53):
        raise ModelFormatError(f"version must be a non-negative integer, got {header['version']!r}")
    if not isinstance(header["metadata"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in header["metadata"].items()):
        raise ModelFormatError("metadata must be an object of strings")
    try:
        cfg = ModelConfig.from_json(header["config"])
        tokenizer = CharTokenizer.from_json(header["tokenizer"])
    except (ConfigError, ValueError, TypeError) as exc:
        raise ModelFormatError(f"header config/tokenizer invalid: {exc}") from exc
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
    model = DeviceModel(cfg, tokenizer, weights, floats, header["model_id"], header["version"], header["metadata"])
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
    with open(path, "rb") as f:
        pre = f.read(PREAMBLE.size)
        if len(pre) == PREAMBLE.size:
            pre += f.read(min(PREAMBLE.unpack_from(pre)[3], MAX_HEADER_BYTES))
    return parse_header(pre)
