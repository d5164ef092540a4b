"""Position codings for sparse tensors, shared by model files and bundles.

- bitmask: one bit per position, row-major, little bit order, zero padding.
- index: the sorted flat positions as LEB128 varints of gaps
  (first position, then `pos[i] - pos[i-1] - 1`).

`pick_sparse_coding` is the one place both codecs choose a coding (the smaller
compressed section; ties go to bitmask). Decoders are strict: any
non-canonical input (padding bits set, overlong varints, a varint longer than
the tensor's largest gap needs or overflowing 64 bits, positions out of range)
raises SparseCodingError with the reason, which callers wrap in their own error class.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from device_agent.device_model import QMAX
from device_agent.errors import SparseCodingError

BITMASK_CHUNK_BYTES = 1 << 17  # decode bitmasks 1 Mi positions at a time: ~8-24 MiB of temporaries

MAX_VARINT_BYTES = 10  # 64-bit values
VARINT_CHUNK_BYTES = 1 << 18  # varints are decoded this many bytes at a time: temporaries stay ~10 MiB


def varint_len(value: int) -> int:
    """Bytes of the canonical LEB128 encoding of a non-negative integer."""
    return max(1, (int(value).bit_length() + 6) // 7)


def bitmask_encode(mask: np.ndarray) -> bytes:
    return np.packbits(mask.reshape(-1).astype(bool), bitorder="little").tobytes()


def bitmask_decode(buf: bytes, numel: int) -> np.ndarray:
    """-> bool (numel,) mask."""
    expected = (numel + 7) // 8
    if len(buf) != expected:
        raise SparseCodingError(f"bitmask is {len(buf)} bytes, expected {expected} for {numel} positions")
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    if bits[numel:].any():
        raise SparseCodingError("bitmask padding bits are not zero")
    return bits[:numel].astype(bool)


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers, vectorised."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    shifts = (7 * np.arange(MAX_VARINT_BYTES, dtype=np.uint64))[None, :]
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)  # (n, 10)
    # bytes needed: one, plus one per 7-bit threshold the value reaches
    thresholds = np.uint64(1) << (7 * np.arange(1, MAX_VARINT_BYTES, dtype=np.uint64))
    nbytes = 1 + (v[:, None] >= thresholds[None, :]).sum(axis=1)
    k = np.arange(MAX_VARINT_BYTES)[None, :]
    groups |= np.where(k < (nbytes[:, None] - 1), 0x80, 0).astype(np.uint8)
    return groups[k < nbytes[:, None]].tobytes()


def varint_decode(buf: bytes, count: int, max_bytes: int = MAX_VARINT_BYTES) -> np.ndarray:
    """Exactly `count` canonical varints of at most `max_bytes` bytes each filling `buf` -> uint64 (count,)."""
    parts = list(_varint_chunks(buf, count, max_bytes))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _varint_chunks(buf: bytes, count: int, max_bytes: int) -> Iterator[np.ndarray]:
    """The varints of `buf` as uint64 arrays, VARINT_CHUNK_BYTES of input at a time (whole
    varints per chunk), so temporaries stay bounded whatever `count` is; SparseCodingError unless
    there are exactly `count` canonical varints."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    max_bytes = min(max_bytes, MAX_VARINT_BYTES)
    done, start = 0, 0
    while start < arr.size:
        stop = min(arr.size, start + VARINT_CHUNK_BYTES)
        chunk = arr[start:stop]
        ends = np.flatnonzero((chunk & 0x80) == 0)
        if ends.size == 0:
            raise SparseCodingError("unterminated varint at the end" if stop == arr.size
                             else f"varint longer than {max_bytes} bytes")
        chunk = chunk[:ends[-1] + 1]  # whole varints only; the rest starts the next chunk
        if done + ends.size > count:
            raise SparseCodingError(f"expected {count} varints filling {arr.size} bytes, found more")
        yield _decode_whole_varints(chunk, ends, max_bytes)
        done += ends.size
        start += chunk.size
    if done != count:
        raise SparseCodingError(f"expected {count} varints filling {arr.size} bytes, found {done} terminators")


def _decode_whole_varints(arr: np.ndarray, ends: np.ndarray, max_bytes: int) -> np.ndarray:
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > max_bytes:
        raise SparseCodingError(f"varint of {int(lengths.max())} bytes; at most {max_bytes} are canonical here")
    if np.any((lengths > 1) & (arr[ends] == 0)):
        raise SparseCodingError("overlong (non-canonical) varint")
    if max_bytes == MAX_VARINT_BYTES and np.any((lengths == MAX_VARINT_BYTES) & (arr[ends] > 1)):
        raise SparseCodingError("varint overflows 64 bits")
    pos_in = np.arange(arr.size) - np.repeat(starts, lengths)
    parts = (arr & 0x7F).astype(np.uint64) << (7 * pos_in).astype(np.uint64)
    return np.add.reduceat(parts, starts)


def index_encode(positions: np.ndarray) -> bytes:
    """Sorted, unique flat positions -> varint gap coding."""
    p = np.asarray(positions, dtype=np.int64)
    if p.size == 0:
        return b""
    gaps = np.empty_like(p)
    gaps[0] = p[0]
    gaps[1:] = p[1:] - p[:-1] - 1
    if np.any(gaps < 0):
        raise SparseCodingError("positions must be strictly increasing")
    return varint_encode(gaps.astype(np.uint64))


def index_decode(buf: bytes, count: int, numel: int, *, keep: bool = True) -> np.ndarray:
    """-> int64 (count,) strictly increasing positions in [0, numel) (empty with `keep=False`:
    validation only, in bounded memory)."""
    parts, last = [], -1
    for gaps in _varint_chunks(buf, count, varint_len(max(numel - 1, 0))):  # no gap can need more bytes
        if gaps.max() >= numel:  # also keeps the cumulative sum far from overflow
            raise SparseCodingError(f"position gap {int(gaps.max())} exceeds the tensor size {numel}")
        positions = last + np.cumsum(gaps.astype(np.int64) + 1)
        last = int(positions[-1])
        if last >= numel:
            raise SparseCodingError(f"position {last} is outside a tensor of {numel} entries")
        if keep:
            parts.append(positions)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def bitmask_positions(buf: bytes, numel: int, count: int | None = None) -> np.ndarray:
    """Flat positions set in a bitmask, decoded in chunks so memory stays ~ the positions themselves."""
    return _bitmask_scan(buf, numel, count, keep=True)[0]


def _bitmask_scan(buf: bytes, numel: int, count: int | None, keep: bool) -> tuple[np.ndarray, int]:
    """-> (positions if `keep`, number of positions). With `count`, decoding stops at the first
    chunk that takes the total past it, so a lying mask never allocates more than `count` positions."""
    expected = (numel + 7) // 8
    if len(buf) != expected:
        raise SparseCodingError(f"bitmask is {len(buf)} bytes, expected {expected} for {numel} positions")
    parts, total = [], 0
    for start in range(0, len(buf), BITMASK_CHUNK_BYTES):
        chunk = buf[start:start + BITMASK_CHUNK_BYTES]
        found = np.flatnonzero(bitmask_decode(chunk, min(8 * len(chunk), numel - 8 * start))) + 8 * start
        total += found.size
        if count is not None and total > count:
            raise SparseCodingError(f"bitmask marks more than the {count} positions the table says")
        if keep:
            parts.append(found)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), total


def decode_sparse(coding: str, body: bytes, values: bytes, count: int, numel: int,
                  *, keep: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Positions (`bitmask` or `index` coded) plus their int8 values -> (int64 positions, int8 values).

    Shared by the model format and the bundle format; SparseCodingError says what is wrong.
    `keep=False` validates everything but returns empty arrays (bitmask positions are then
    never materialised: `bundle verify` of a section costs its raw bytes, not 8 bytes a position)."""
    try:
        if coding == "bitmask":
            positions, found = _bitmask_scan(body, numel, count, keep)
        else:
            positions = index_decode(body, count, numel, keep=keep)  # SparseCodingError unless exactly `count`
            found = count
    except SparseCodingError as exc:
        raise SparseCodingError(f"bad {coding} coding: {exc}") from None
    if found != count:
        raise SparseCodingError(f"{coding} marks {found} positions, the table says {count}")
    vals = np.frombuffer(values, dtype=np.int8)
    if vals.size != count or np.any(vals == 0) or np.any(vals < -QMAX):
        raise SparseCodingError(f"{count} stored values must be nonzero and within [-{QMAX}, {QMAX}]")
    if not keep:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    return positions.astype(np.int64, copy=False), vals


def pick_sparse_coding(positions: np.ndarray, values: np.ndarray, numel: int,
                       compress: Callable[[bytes], bytes], head: bytes = b"") -> tuple[str, bytes, bytes]:
    """-> (coding, raw, compressed) of `head + positions + values`: the coding whose
    compressed bytes are smaller (ties: bitmask). One rule for model files and bundles."""
    mask = np.zeros(numel, dtype=bool)
    mask[positions] = True
    tail = np.asarray(values, dtype=np.int8).tobytes()
    best: tuple[str, bytes, bytes] | None = None
    for coding, body in (("bitmask", bitmask_encode(mask)), ("index", index_encode(positions))):
        raw = head + body + tail
        packed = compress(raw)
        if best is None or len(packed) < len(best[2]):
            best = (coding, raw, packed)
    assert best is not None
    return best
