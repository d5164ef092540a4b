"""Writing update bundles (`.otab`), server side: one diff or one full model, ready to ship.

The format, its limits and the reader live in device_agent/bundle.py (what a
device runs); this module only produces bytes that reader accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zstandard

from device_agent.atomic import write_atomic
from device_agent.bundle import (CHANNELS, COMPACT_FORMAT, FORMAT_VERSION, MAGIC, MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES,
                                 MAX_SECTION_RAW_BYTES, MAX_SECTIONS, PREAMBLE, WORDS, WORDS_FORMAT, check_identity,
                                 model_header)
from device_agent.device_model import DeviceModel, canonical_json
from device_agent.diff import ChannelDeltas, Diff, SparseDelta, check_delta, tokenizer_with_words
from device_agent.errors import BundleError, WrongBaseError, os_error
from device_agent.sparse_coding import pick_sparse_coding

ZSTD_LEVEL = 19


def compress_section(raw: bytes) -> bytes:
    # Content size in the frame header lets the reader reject a lying frame before decompressing.
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True).compress(raw)


def _encode_sparse(d: SparseDelta, numel: int) -> tuple[str, bytes, bytes]:
    """-> (encoding, raw, compressed): the position coding the .otam writer would pick too."""
    return pick_sparse_coding(d.positions, d.values, numel, compress_section)


def _pack(manifest: dict[str, Any], sections: list[bytes], version: int = 1) -> bytes:
    body = canonical_json(manifest)
    if len(body) > MAX_MANIFEST_BYTES:
        raise BundleError(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_BYTES} (too many sections?)")
    if version >= COMPACT_FORMAT:
        body = compress_section(body)
    total = PREAMBLE.size + len(body) + sum(len(s) for s in sections)
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle would be {total} bytes; the limit is {MAX_BUNDLE_BYTES}")
    return PREAMBLE.pack(MAGIC, version, 0, len(body)) + body + b"".join(sections)


def _table(entries: list[tuple[str, dict[str, Any], bytes, bytes]]) -> tuple[dict[str, Any], list[bytes]]:
    """(name, fields, raw, packed) per section, sorted by name -> (section table, stored sections)."""
    table: dict[str, Any] = {}
    stored, offset = [], 0
    for name, fields, raw, packed in entries:
        table[name] = {**fields, "offset": offset, "length": len(packed), "raw_length": len(raw),
                       "xxh64": xxhash.xxh64_hexdigest(packed)}
        stored.append(packed)
        offset += len(packed)
    return table, stored


def encode_diff_bundle(diff: Diff, base: DeviceModel, *, compact: bool = False) -> bytes:
    """Diff -> bundle bytes (deterministic for a given zstd version).

    `base` is the model the diff was learned against: the manifest records
    each tensor's size (Diff itself carries none), and the encoder refuses a
    diff that does not fit its base rather than ship it.
    `compact`: format version 3, the manifest compressed (about 1.3 KB less for the shipped model);
    only agents that read version 3 take it. Otherwise the lowest version that holds the diff
    (a diff with words needs version 4, which compresses its manifest as 3 does).
    """
    # 1) the diff must fit the base it claims (same rules as apply_diff)
    if diff.model_id != base.model_id:
        raise BundleError(f"diff is for model {diff.model_id!r}, the base given is {base.model_id!r}: pass the "
                          "model the diff was learned against")
    if diff.base_hash != base.content_hash():
        raise WrongBaseError(f"diff expects base model {diff.base_hash}, the base given is {base.content_hash()}: "
                             "pass the model the diff was learned against")
    check_identity(_diff_manifest(diff, {}))
    if len(diff.deltas) > MAX_SECTIONS:
        raise BundleError(f"diff changes {len(diff.deltas)} tensors; a bundle holds at most {MAX_SECTIONS}")
    # 2) one section per tensor, sorted by name (the canonical order readers check)
    entries = []
    for name in sorted(diff.deltas):
        delta = diff.deltas[name]
        if name not in base.weights:
            raise BundleError(f"diff changes tensor {name!r}, which the base model does not have")
        w = base.weights[name]
        check_delta(name, delta, w)
        if isinstance(delta, SparseDelta):
            encoding, raw, packed = _encode_sparse(delta, w.q.size)
            fields = {"encoding": encoding, "numel": w.q.size, "count": int(delta.positions.size)}
        else:
            raw = delta.buckets.tobytes()
            packed = compress_section(raw)
            fields = {"encoding": "hashed", "numel": w.q.size, "num_buckets": _plain(delta.num_buckets)}
        if len(raw) > MAX_SECTION_RAW_BYTES:
            raise BundleError(f"{name}: delta is {len(raw)} bytes raw; the limit is {MAX_SECTION_RAW_BYTES} "
                              "(ship a full bundle instead)")
        entries.append((name, fields, raw, packed))
    if diff.channels is not None:
        entries.append(_channels_entry(diff.channels, base))
    if diff.words:
        entries.append(_words_entry(diff.words, base))
    table, stored = _table(sorted(entries, key=lambda entry: entry[0]))
    version = WORDS_FORMAT if diff.words else COMPACT_FORMAT if compact else \
        FORMAT_VERSION if diff.channels is not None else 1
    return _pack(_diff_manifest(diff, table), stored, version)


def _channels_entry(channels: ChannelDeltas, base: DeviceModel) -> tuple[str, dict[str, Any], bytes, bytes]:
    """The channels section: step exponents (one int8 per tensor of `channel_tensors`), then the codes."""
    if CHANNELS in base.weights:
        raise BundleError(f"the model has a tensor named {CHANNELS!r}, the name of the channel-delta section")
    channels.unpack(base)  # DiffError unless it fits the base, as for tensor deltas
    raw = channels.step_exps.tobytes() + channels.codes.tobytes()
    fields = {"encoding": CHANNELS, "numel": int(channels.codes.size), "count": int(channels.step_exps.size)}
    return CHANNELS, fields, raw, compress_section(raw)


def _words_entry(words: tuple[str, ...], base: DeviceModel) -> tuple[str, dict[str, Any], bytes, bytes]:
    """The words section: the words joined by newlines, UTF-8."""
    if WORDS in base.weights:
        raise BundleError(f"the model has a tensor named {WORDS!r}, the name of the words section")
    tokenizer_with_words(base, words)  # DiffError unless they make a valid word list for the base
    raw = "\n".join(words).encode("utf-8")
    return WORDS, {"encoding": WORDS, "count": len(words)}, raw, compress_section(raw)


def _diff_manifest(diff: Diff, table: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "diff", "model_id": diff.model_id, "base_version": _plain(diff.base_version),
            "base_hash": diff.base_hash, "target_version": _plain(diff.target_version), "target_hash": diff.target_hash,
            "method": diff.method, "seed": _plain(diff.seed), "metadata": dict(diff.metadata), "sections": table}


def _plain(value: Any) -> Any:
    """numpy integers -> int (learners hand them over); anything else is left for validation."""
    return int(value) if isinstance(value, np.integer) else value


def encode_full_bundle(model_bytes: bytes, model: DeviceModel) -> bytes:
    """`.otam` file bytes -> a full bundle. The file is stored as-is: its tensors
    are already zstd-compressed, so there is one model codec and a device can
    stream the section straight to disk."""
    header = model_header(model_bytes)
    expected = (model.model_id, model.version, model.content_hash())
    found = (header["model_id"], header["version"], header["content_hash"])
    if found != expected:
        raise BundleError(f"model bytes are {found}, the model given is {expected}: pass the file of that model")
    manifest = {"kind": "full", "model_id": model.model_id, "target_version": model.version,
                "target_hash": expected[2]}
    check_identity({**manifest, "sections": {}})
    table, stored = _table([("model", {"encoding": "model"}, model_bytes, bytes(model_bytes))])
    return _pack({**manifest, "sections": table}, stored)


def save_bundle(data: bytes, path: str | Path) -> None:
    """Write atomically (temp file + fsync + rename); ENOSPC -> DiskFullError."""
    try:
        write_atomic(Path(path), data)
    except OSError as exc:
        raise os_error(exc, f"writing bundle {path}") from None
