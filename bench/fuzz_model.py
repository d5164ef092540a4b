"""Structure-aware fuzzing of `.otam` model files: only our own errors, never a hang, bounded memory.

Seeds are real model files of tiny models (both position codings, a float-heavy
config). Mutations follow docs/model-format.md: blind byte damage, preamble
lies, header type confusion (floats, strings, booleans where integers belong),
non-canonical JSON (whitespace, key order, duplicates, NaN), maximal declared
sizes (a config scaled up with a tensor table and RLE bombs that agree with
it), zstd frame tricks (skippable and concatenated frames, no content size,
huge windows), and "re-signed" damage inside sections (overflowing and
overlong varints, padding bits, zero or -128 values, bad scales) with lengths
and checksums fixed so it reaches the decoders. Each case goes through
`decode_model` with the limit a device uses (a few times the base model's
decoded size). A case passes if it raises a subclass of OtaError, or decodes
to a model whose content hash matches its header.

    python bench/fuzz_model.py [--cases 100000] [--seed 0] [--time-limit 5]
"""
from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fuzz_common import error_outcome, interesting, main, rle_frame, run_cases  # noqa: E402
from device_agent.device_model import canonical_json  # noqa: E402
from device_agent.errors import OtaError  # noqa: E402
from device_agent.features import FeatureConfig  # noqa: E402
from device_agent.model_config import ModelConfig  # noqa: E402
from device_agent.model_format import FORMAT_VERSION, MAGIC, PREAMBLE, decode_model, decoded_bytes, encode_model  # noqa: E402
from device_agent.sparse_coding import varint_encode  # noqa: E402
from tests.tiny import tiny_device_model  # noqa: E402

RELATIVE_LIMIT = 4  # a device accepts a new model of at most this many times the active one's decoded size


@dataclass
class Seed:
    name: str
    data: bytes
    limit: int  # max_decoded_bytes a device would pass


def build_seeds() -> list[Seed]:
    seeds = []
    for name, cfg, sparsity in (
            ("tiny", None, 0.5),
            ("tiny_sparse", None, 0.97),  # index coding wins for most matrices
            ("wide", ModelConfig(features=FeatureConfig(n_mels=16, stack=1), enc_hidden=16, enc_layers=1,
                                 embed_dim=16, pred_hidden=16, joint_dim=16), 0.3)):
        model = tiny_device_model(3, cfg, sparsity) if cfg else tiny_device_model(3, sparsity=sparsity)
        seeds.append(Seed(name, encode_model(model), RELATIVE_LIMIT * decoded_bytes(model.config)))
    return seeds


# --- file surgery (no validation: the attacker's side) -----------------------------------
def split(data: bytes) -> tuple[dict, list[bytes]]:
    n = struct.unpack_from("<I", data, 12)[0]
    header = json.loads(data[PREAMBLE.size:PREAMBLE.size + n])
    start = PREAMBLE.size + n
    return header, [data[start + e["offset"]:start + e["offset"] + e["length"]] for e in header["tensors"]]


def pack(header: dict, sections: list[bytes], *, fix: bool = True, body: bytes | None = None) -> bytes:
    if fix:
        offset = 0
        for e, s in zip(header["tensors"], sections):
            e.update(offset=offset, length=len(s), xxh64=xxhash.xxh64_hexdigest(s))
            offset += len(s)
    body = canonical_json(header) if body is None else body
    # the seeds' own format: a mutation of the header or sections must not also change the format number
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body + b"".join(sections)


def _frame(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False).compress(raw)


def _pick(rng: np.random.Generator, items: list) -> object:
    return items[int(rng.integers(len(items)))]


# --- mutators ---------------------------------------------------------------------------------
def m_bytes(rng: np.random.Generator, s: Seed) -> bytes:
    buf = bytearray(s.data)
    trick = int(rng.integers(4))
    if trick == 0:
        for _ in range(rng.integers(1, 9)):
            buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    i = int(rng.integers(len(buf)))
    if trick == 1:
        return bytes(buf[:i] + rng.bytes(int(rng.integers(1, 17))) + buf[i:])
    if trick == 2:
        return bytes(buf[:i] + buf[i + int(rng.integers(1, 17)):])
    return bytes(buf[:i]) if rng.random() < 0.5 else s.data + _pick(rng, [b"\0", s.data, _frame(b"x")])


def m_preamble(rng: np.random.Generator, s: Seed) -> bytes:
    magic, version, reserved, n = PREAMBLE.unpack_from(s.data)
    field = int(rng.integers(4))
    if field == 0:
        magic = _pick(rng, [b"OTABNDL\0", b"otamodel", rng.bytes(8)])
    elif field == 1:
        version = int(_pick(rng, [0, 1, 3, 65535]))  # 1: the same file read as format 1
    elif field == 2:
        reserved = int(_pick(rng, [1, 65535]))
    else:
        n = int(_pick(rng, [0, 1, 2, n - 1, n + 1, 1 << 20, (1 << 20) + 1, 2**32 - 1]))
    return PREAMBLE.pack(magic, version, reserved, n) + s.data[PREAMBLE.size:]


def m_header_lie(rng: np.random.Generator, s: Seed) -> bytes:
    """One header or table field set to a lie or a value of the wrong type; the rest left alone."""
    header, sections = split(s.data)
    r = rng.random()
    if r < 0.5:
        e = _pick(rng, header["tensors"])
        key = _pick(rng, sorted(e))
        e[key] = _pick(rng, [interesting(rng, e[key] if isinstance(e[key], int) else None), float(e[key])
                             if isinstance(e[key], int) else "x", str(e[key]), [e[key]], None])
    elif r < 0.75:
        cfg = header["config"]
        key = _pick(rng, sorted(cfg))
        if key == "features":
            fkey = _pick(rng, sorted(cfg["features"]))
            cfg["features"][fkey] = interesting(rng, cfg["features"][fkey])
        else:
            cfg[key] = interesting(rng, cfg[key])
    else:
        key = _pick(rng, sorted(header))
        header[key] = _pick(rng, [interesting(rng), "x" * 200, "", "0" * 32, {"a": 1}, [], {"k": 5}])
    return pack(header, sections, fix=False)


def m_canonical(rng: np.random.Generator, s: Seed) -> bytes:
    """The same header in a non-canonical spelling, or with JSON a strict reader must refuse."""
    header, sections = split(s.data)
    body = canonical_json(header)
    trick = int(rng.integers(7))
    if trick == 0:
        body = json.dumps(header, sort_keys=True).encode()  # ", " and ": "
    elif trick == 1:
        body = json.dumps(dict(reversed(header.items())), separators=(",", ":")).encode()  # keys not sorted
    elif trick == 2:
        body = b'{"version":7,' + body[1:]  # duplicate key
    elif trick == 3:
        body = body.replace(b'"version":', b'"version":NaN,"x":', 1)
    elif trick == 4:
        body = body.replace(b'"nnz":', b'"nnz":1e1,"y":', 1)
    elif trick == 5:
        body = body.replace(b'"offset":0', b'"offset":0.0', 1)  # equal to 0 in Python
    else:
        body = body + b" "
    return pack(header, sections, fix=False, body=body)


def m_max_sizes(rng: np.random.Generator, s: Seed) -> bytes:
    """Config scaled up, tensor table made consistent with it, sections replaced by RLE bombs:
    the declared sizes are all that stands between the file and the allocator."""
    from device_agent.model_config import tensor_layout

    header, _ = split(s.data)
    cfg = header["config"]
    key = _pick(rng, ["enc_hidden", "joint_dim", "pred_hidden", "embed_dim", "vocab_size", "features"])
    big = int(_pick(rng, [64, 1024, 8192]))
    if key == "features":
        cfg["features"]["n_mels"] = int(_pick(rng, [80, 4096, 192_000]))
        cfg["features"]["stack"] = int(_pick(rng, [1, 64, 192_000]))
    else:
        cfg[key] = big
    try:
        layout = tensor_layout(ModelConfig.from_json(cfg))
    except OtaError:
        return pack(header, split(s.data)[1], fix=False)
    if key == "vocab_size":
        header["tokenizer"]["symbols"] = (header["tokenizer"]["symbols"] * 300)[:big - 1]
    tensors, sections = [], []
    for name, (kind, shape) in layout.items():
        numel = int(np.prod(shape))
        coding = "dense" if kind == "float32" else "bitmask"
        raw = 4 * numel if kind == "float32" else 4 * shape[0] + (numel + 7) // 8
        frame = rle_frame(raw, min(raw, 1 << 20))  # honest header, short body: the reader must stop first
        tensors.append({"name": name, "dtype": kind, "shape": list(shape), "coding": coding,
                        "nnz": numel if kind == "float32" else 0, "raw_length": raw})
        sections.append(frame)
    header["tensors"] = tensors
    return pack(header, sections)


def m_frames(rng: np.random.Generator, s: Seed) -> bytes:
    """zstd frame tricks in one section, lengths and checksums fixed."""
    header, sections = split(s.data)
    i = int(rng.integers(len(sections)))
    raw = zstandard.ZstdDecompressor().decompress(sections[i])
    skippable = struct.pack("<II", 0x184D2A50 + int(rng.integers(16)), 4) + b"junk"
    trick = int(rng.integers(6))
    if trick == 0:
        sections[i] = skippable + sections[i]
    elif trick == 1:
        sections[i] = sections[i] + skippable
    elif trick == 2:  # the same bytes as two concatenated frames
        cut = len(raw) // 2
        sections[i] = _frame(raw[:cut]) + _frame(raw[cut:])
    elif trick == 3:  # no content size
        sections[i] = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(raw)
    elif trick == 4:  # a huge window
        sections[i] = rle_frame(len(raw), len(raw), window_log=31)
    else:  # frame checksum (allowed) with a flipped bit in it
        framed = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
        framed[-1] ^= 0x01
        sections[i] = bytes(framed)
    return pack(header, sections)


def m_resigned(rng: np.random.Generator, s: Seed) -> bytes:
    """Damage inside a decoded section, recompressed; lengths and checksums fixed."""
    header, sections = split(s.data)
    i = int(rng.integers(len(sections)))
    e = header["tensors"][i]
    raw = bytearray(zstandard.ZstdDecompressor().decompress(sections[i]))
    n_out = e["shape"][0]
    trick = int(rng.integers(7))
    if e["dtype"] == "float32" or trick == 0:  # a scale or value becomes NaN, inf, 0 or negative
        j = 4 * int(rng.integers(max(1, (len(raw) if e["dtype"] == "float32" else 4 * n_out) // 4)))
        raw[j:j + 4] = struct.pack("<f", float(_pick(rng, [float("nan"), float("inf"), 0.0, -1.0])))
    elif trick == 1 and e["nnz"]:  # a value becomes 0 or -128
        raw[len(raw) - 1 - int(rng.integers(e["nnz"]))] = int(_pick(rng, [0, 0x80]))
    elif trick == 2 and e["coding"] == "index" and e["nnz"]:  # first gap as a 10-byte varint overflowing 64 bits
        wrapped = bytes([0x80 | (raw[4 * n_out] & 0x7F)] + [0x80] * 8 + [0x02])
        raw = raw[:4 * n_out] + wrapped + raw[4 * n_out + 1:] if raw[4 * n_out] < 0x80 else raw
    elif trick == 3 and e["coding"] == "index" and e["nnz"]:  # overlong first varint
        raw = raw[:4 * n_out] + bytes([raw[4 * n_out] | 0x80, 0x00]) + raw[4 * n_out + 1:]
    elif trick == 4 and e["coding"] == "bitmask":  # a padding bit, or one mask bit flipped
        numel = int(np.prod(e["shape"]))
        j = 4 * n_out + (numel + 7) // 8 - 1
        raw[j] |= 0x80 if numel % 8 else 0x01
    elif trick == 5 and e["coding"] == "index":  # a gap past the end of the tensor
        raw = raw[:4 * n_out] + varint_encode(np.array([int(np.prod(e["shape"]))], dtype=np.uint64)) \
            + raw[4 * n_out + 1:]
    else:
        for _ in range(rng.integers(1, 4)):
            raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
    sections[i] = _frame(bytes(raw))
    e["raw_length"] = len(raw)
    return pack(header, sections)


def m_hash_lie(rng: np.random.Generator, s: Seed) -> bytes:
    header, sections = split(s.data)
    header["content_hash"] = rng.bytes(16).hex()
    return pack(header, sections)


MUTATORS: dict[str, Callable[[np.random.Generator, Seed], bytes]] = {
    "bytes": m_bytes, "preamble_lie": m_preamble, "header_lie": m_header_lie, "non_canonical": m_canonical,
    "maximal_sizes": m_max_sizes, "zstd_frames": m_frames, "resigned_section": m_resigned, "hash_lie": m_hash_lie,
}


def run_case(data: bytes, seed: Seed) -> str:
    try:
        model = decode_model(data, max_decoded_bytes=seed.limit)
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything foreign
        return error_outcome("decode", exc)
    return "ok" if model.content_hash() == split(data)[0]["content_hash"] else "UNEXPECTED:unverified-success"


def mutate(cls: str, rng: np.random.Generator, s: Seed, seeds: Sequence[Seed]) -> bytes:
    try:
        return MUTATORS[cls](rng, s)
    except (KeyError, IndexError, ValueError, TypeError, zstandard.ZstdError):
        return m_bytes(rng, s)  # a mutator that does not fit this seed falls back to byte damage


def fuzz(cases: int, seed: int, time_limit: float = 5.0, progress: bool = False) -> dict:
    seeds = build_seeds()
    return run_cases(cases=cases, seed=seed, rng=np.random.default_rng(seed), seeds=seeds, classes=list(MUTATORS),
                     mutate=mutate, run_case=run_case, time_limit=time_limit, seed_key="seed_model",
                     seed_info={"seed_models": {s.name: len(s.data) for s in seeds},
                                "decoded_limit_bytes": {s.name: s.limit for s in seeds}},
                     progress_every=10_000 if progress else 0)


if __name__ == "__main__":
    sys.exit(main("fuzz_model", __doc__.split("\n")[0], fuzz, default_cases=100_000, what="model files",
                  seed_key="seed_model"))
