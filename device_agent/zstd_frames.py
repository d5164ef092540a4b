"""Bounded zstd decompression shared by model files and update bundles.

Both formats store one zstd frame per section next to the length it must
decompress to. Everything a hostile frame could lie about is checked before
or while decoding, so memory stays bounded by that length whatever the bytes
say: the declared content size, the window, a dictionary, trailing bytes.
Only the canonical form is accepted: exactly one zstd *data* frame (magic
28 B5 2F FD), never a skippable frame, never two frames back to back.
"""
from __future__ import annotations

import zstandard

MAX_WINDOW_BYTES = 1 << 23  # zstd level 19 never needs a window above 8 MiB
INPUT_CHUNK = 128  # compressed bytes fed per step: bounds a lying frame's overshoot to ~4 MiB
DATA_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"  # skippable frames (0x184D2A5?) carry no data and are refused


def decompress_declared(packed: bytes, max_raw: int, where: str, error: type[Exception]) -> bytearray:
    """Decompress one frame to the content size it declares, which must be known and at most `max_raw`
    (a compressed bundle manifest: nothing else says how long it is)."""
    if not isinstance(packed, (bytes, bytearray, memoryview)) or bytes(packed[:4]) != DATA_FRAME_MAGIC:
        return decompress_exact(packed, 0, where, error)  # the same refusal, with its message
    try:
        declared = zstandard.get_frame_parameters(packed).content_size
    except zstandard.ZstdError as exc:
        raise error(f"{where}: not a zstd frame: {exc}") from None
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > max_raw:
        got = "no size" if declared == zstandard.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
        raise error(f"{where}: zstd frame declares {got}, expected a content size of at most {max_raw} bytes")
    return decompress_exact(packed, declared, where, error)


def decompress_exact(packed: bytes, raw_length: int, where: str, error: type[Exception]) -> bytearray:
    """Decompress one frame that must yield exactly `raw_length` bytes; raise `error(where: ...)` otherwise.

    The output buffer is allocated once at `raw_length` (a limit the caller checked, and the size
    the frame itself declares), so a section's raw bytes exist once, never as pieces plus a join."""
    if not isinstance(packed, (bytes, bytearray, memoryview)):
        raise error(f"{where}: expected compressed bytes, got {type(packed).__name__}")
    if bytes(packed[:4]) != DATA_FRAME_MAGIC:
        raise error(f"{where}: does not start with a zstd data frame (magic {bytes(packed[:4]).hex() or 'none'}, "
                    f"expected {DATA_FRAME_MAGIC.hex()}); skippable frames are not allowed")
    try:
        params = zstandard.get_frame_parameters(packed)
    except zstandard.ZstdError as exc:
        raise error(f"{where}: not a zstd frame: {exc}") from None
    if params.content_size != raw_length:
        got = "no size" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else f"{params.content_size} bytes"
        raise error(f"{where}: zstd frame declares {got}, but its raw length should be {raw_length} bytes")
    if params.window_size > MAX_WINDOW_BYTES:
        raise error(f"{where}: zstd window {params.window_size} exceeds the limit of {MAX_WINDOW_BYTES} bytes")
    if params.dict_id != 0:
        raise error(f"{where}: zstd frame needs dictionary {params.dict_id}; these frames use no dictionary")
    d = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).decompressobj()
    out, total, pos = bytearray(raw_length), 0, 0
    try:
        while pos < len(packed) and not d.eof:
            piece = d.decompress(packed[pos:pos + INPUT_CHUNK])
            pos += INPUT_CHUNK
            total += len(piece)
            if total > raw_length:
                raise error(f"{where}: decompresses past its raw length {raw_length} (decompression bomb?)")
            out[total - len(piece):total] = piece
    except zstandard.ZstdError as exc:
        raise error(f"{where}: zstd data is corrupt (or longer than it declares): {exc}") from None
    if not d.eof:
        raise error(f"{where}: zstd frame is truncated ({total} of {raw_length} bytes decoded)")
    if d.unused_data or pos < len(packed):
        raise error(f"{where}: bytes after the zstd frame; a section holds exactly one frame")
    if total != raw_length:
        raise error(f"{where}: decompressed to {total} bytes, expected raw length {raw_length}")
    return out
