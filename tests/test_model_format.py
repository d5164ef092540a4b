"""Device model file format: exact bytes, round trip, every corruption class."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import xxhash

from device_agent.errors import ContentHashMismatchError, ModelFormatError
from device_agent.model_format import (MAGIC, MAX_HEADER_BYTES, PREAMBLE, decode_model, encode_model, load_model,
                                       save_model)
from tests.tiny import tiny_device_model

# Pinned: any change to the byte layout, the codings or the compression level
# changes these and must come with a format version bump and docs update.
# Compressed bytes are those of the zstd release the `test` extra pins (pyproject.toml).
PINNED_FILE_XXH64 = "1ce923910750f14d"
PINNED_CONTENT_HASH = "11a8fa64040168e6e6359a5b0f2daddb"


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return encode_model(tiny_device_model())


def _header(buf: bytes) -> tuple[dict, int]:
    header_len = PREAMBLE.unpack_from(buf)[3]
    return json.loads(buf[PREAMBLE.size:PREAMBLE.size + header_len]), header_len


def _with_header(buf: bytes, header: dict) -> bytes:
    _, old_len = _header(buf)
    new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return PREAMBLE.pack(MAGIC, 1, 0, len(new)) + new + buf[PREAMBLE.size + old_len:]


def test_encoding_is_pinned_to_exact_bytes(tiny_bytes: bytes) -> None:
    assert tiny_bytes[:8] == b"OTAMODEL"
    assert struct.unpack_from("<HHI", tiny_bytes, 8)[:2] == (2, 0)
    assert xxhash.xxh64_hexdigest(tiny_bytes) == PINNED_FILE_XXH64
    assert tiny_device_model().content_hash() == PINNED_CONTENT_HASH
    assert encode_model(tiny_device_model()) == tiny_bytes  # deterministic


def test_round_trip_preserves_every_tensor(tiny_bytes: bytes, tmp_path) -> None:
    original = tiny_device_model()
    decoded = decode_model(tiny_bytes)
    assert decoded.content_hash() == original.content_hash()
    for name, w in original.weights.items():
        np.testing.assert_array_equal(decoded.weights[name].q, w.q)
        np.testing.assert_array_equal(decoded.weights[name].scale, w.scale)
    for name, t in original.floats.items():
        np.testing.assert_array_equal(decoded.floats[name], t)
    assert (decoded.model_id, decoded.version, decoded.config) == ("tiny", 1, original.config)
    path = tmp_path / "m.otam"
    assert save_model(original, path) == original.content_hash()
    assert path.read_bytes() == tiny_bytes
    assert not list(tmp_path.glob("*.tmp"))


def test_both_sparse_codings_are_used_and_decode() -> None:
    dense = tiny_device_model(sparsity=0.1)
    very_sparse = tiny_device_model(sparsity=0.97)
    codings = {e["coding"] for m in (dense, very_sparse) for e in _header(encode_model(m))[0]["tensors"]}
    assert {"bitmask", "index", "dense"} <= codings
    assert decode_model(encode_model(very_sparse)).content_hash() == very_sparse.content_hash()


def test_bad_magic(tiny_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError, match="bad magic .* expected b'OTAMODEL'"):
        decode_model(b"NOTMODEL" + tiny_bytes[8:])


def test_unsupported_version(tiny_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError, match="format version 7 is not supported"):
        decode_model(tiny_bytes[:8] + struct.pack("<H", 7) + tiny_bytes[10:])


@pytest.mark.parametrize("keep", [0, 5, 15, 40, -1, -100])
def test_truncated(tiny_bytes: bytes, keep: int) -> None:
    with pytest.raises(ModelFormatError, match="truncated|shorter|not valid|runs past|trailing"):
        decode_model(tiny_bytes[:keep] if keep >= 0 else tiny_bytes[:keep])


def test_trailing_bytes(tiny_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError, match="3 trailing bytes"):
        decode_model(tiny_bytes + b"abc")


def test_oversized_header(tiny_bytes: bytes) -> None:
    buf = tiny_bytes[:12] + struct.pack("<I", MAX_HEADER_BYTES + 1) + tiny_bytes[16:]
    with pytest.raises(ModelFormatError, match="header length .* outside"):
        decode_model(buf)


def test_header_not_json(tiny_bytes: bytes) -> None:
    _, header_len = _header(tiny_bytes)
    buf = bytearray(tiny_bytes)
    buf[PREAMBLE.size] = 0xFF
    with pytest.raises(ModelFormatError, match="not valid UTF-8 JSON"):
        decode_model(bytes(buf))


def test_duplicate_header_keys(tiny_bytes: bytes) -> None:
    header, header_len = _header(tiny_bytes)
    raw = tiny_bytes[PREAMBLE.size:PREAMBLE.size + header_len].replace(b'{"config"', b'{"version":2,"config"', 1)
    buf = PREAMBLE.pack(MAGIC, 1, 0, len(raw)) + raw + tiny_bytes[PREAMBLE.size + header_len:]
    with pytest.raises(ModelFormatError, match="repeats keys"):
        decode_model(buf)


def test_section_checksum_mismatch(tiny_bytes: bytes) -> None:
    buf = bytearray(tiny_bytes)
    buf[-3] ^= 0x40  # inside the last section
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        decode_model(bytes(buf))


def test_content_hash_mismatch(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    header["content_hash"] = "0" * 32
    with pytest.raises(ContentHashMismatchError, match="does not match the header's 0000"):
        decode_model(_with_header(tiny_bytes, header))


def test_shape_lie(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    header["tensors"][2]["shape"] = [4, 4]
    with pytest.raises(ModelFormatError, match="the config requires int8"):
        decode_model(_with_header(tiny_bytes, header))


def test_config_lie_changes_layout(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    header["config"]["enc_hidden"] = 4096  # tensors no longer fit the claimed shapes
    with pytest.raises(ModelFormatError, match="config requires"):
        decode_model(_with_header(tiny_bytes, header))


def test_lying_offset_and_length(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    header["tensors"][1]["offset"] += 1
    with pytest.raises(ModelFormatError, match="contiguous"):
        decode_model(_with_header(tiny_bytes, header))
    header, _ = _header(tiny_bytes)
    header["tensors"][-1]["length"] = 10**9
    with pytest.raises(ModelFormatError, match="runs past the end"):
        decode_model(_with_header(tiny_bytes, header))


def test_lying_nnz_and_raw_length(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    entry = next(e for e in header["tensors"] if e["dtype"] == "int8")
    entry["raw_length"] = 2**40  # a decompression bomb would need this
    with pytest.raises(ModelFormatError, match="raw_length"):
        decode_model(_with_header(tiny_bytes, header))
    header, _ = _header(tiny_bytes)
    entry = next(e for e in header["tensors"] if e["dtype"] == "int8")
    entry["nnz"] += 1
    with pytest.raises(ModelFormatError):
        decode_model(_with_header(tiny_bytes, header))


def test_unknown_config_key_is_refused(tiny_bytes: bytes) -> None:
    header, _ = _header(tiny_bytes)
    header["config"]["exec"] = "rm -rf /"
    with pytest.raises(ModelFormatError, match="unknown keys"):
        decode_model(_with_header(tiny_bytes, header))


def test_missing_file_names_the_path(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="model file not found: .*nope.otam"):
        load_model(tmp_path / "nope.otam")


@pytest.mark.parametrize("version", ["1.3", -1, 2.0, True, 2**53 + 1])
def test_a_model_that_is_not_one_version_is_not_written(version: object) -> None:
    model = tiny_device_model()
    model.version = version  # type: ignore[assignment]
    with pytest.raises(ModelFormatError, match=r"model version .* must be an integer in \[0, 2\^53\]"):
        encode_model(model)
