"""Hostile inputs written from docs/model-format.md and docs/bundle-format.md:
canonical encodings only, limits checked before allocation, the project's own
one-line errors for every type confusion."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zstandard

from device_agent.agent.config import load_config
from device_agent.agent.slots import read_pointer
from device_agent.agent.state import AgentState, load_state, save_state
from device_agent.audio import load_audio
from device_agent.errors import (AudioError, ConfigError, DataError, DecodeBoundError, ModelFormatError, OtaError,
                                 SparseCodingError, TransportError)
from device_agent.model_format import MAGIC, PREAMBLE, decode_model, encode_model
from device_agent.runtime import MAX_SYMBOLS_PER_FRAME, Int8Runtime
from device_agent.sparse_coding import index_decode, varint_decode, varint_encode
from device_agent.strict_header import parse_canonical_json
from device_agent.zstd_frames import decompress_exact
from device_agent.store import open_store
from tests.tiny import tiny_device_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return encode_model(tiny_device_model())


def _header(buf: bytes) -> tuple[dict, bytes]:
    n = PREAMBLE.unpack_from(buf)[3]
    return json.loads(buf[PREAMBLE.size:PREAMBLE.size + n]), buf[PREAMBLE.size + n:]


def _rebuild(header_bytes: bytes, sections: bytes) -> bytes:
    return PREAMBLE.pack(MAGIC, 1, 0, len(header_bytes)) + header_bytes + sections


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --- one strict header parser -----------------------------------------------------------------
@pytest.mark.parametrize("body, match", [
    (b'{"a":1,"a":2}', "repeats keys"),
    (b'{"a":NaN}', "contains NaN"),
    (b'{"a":-Infinity}', "contains -Infinity"),
    (b'{"a":2.0}', "only integers"),
    (b'{"b":1,"a":1}', "not canonical"),
    (b'{"a": 1}', "not canonical"),
    (b'{"a":"\xc3\xa9"}', "not canonical"),  # raw UTF-8 where an ASCII escape belongs
    (b'[1]', "must be a JSON object"),
    (b'{"a":1}\n', "not canonical"),
    (b'\xff', "not valid UTF-8 JSON"),
    (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
])
def test_strict_parser_refuses_every_non_canonical_form(body: bytes, match: str) -> None:
    with pytest.raises(ModelFormatError, match=match):
        parse_canonical_json(body, "header", ModelFormatError)


def test_model_header_must_be_canonical(tiny_bytes: bytes) -> None:
    header, sections = _header(tiny_bytes)
    spaced = json.dumps(header, sort_keys=True).encode()  # same content, ", " and ": " separators
    with pytest.raises(ModelFormatError, match="not canonical"):
        decode_model(_rebuild(spaced, sections))


@pytest.mark.parametrize("field, value, match", [
    ("offset", 0.0, "section offset 0.0"),  # 0.0 == 0 in Python: a float must not pass as an offset
    ("length", 1.5, "length 1.5 outside"),
    ("nnz", True, "nnz True"),
    ("shape", [8.0, 16], "table says"),
    ("xxh64", "ABCDEF0123456789", "16 lowercase hex"),
    ("raw_length", "12", "raw_length '12'"),
])
def test_tensor_table_type_confusion_is_a_model_format_error(tiny_bytes: bytes, field, value, match) -> None:
    header, sections = _header(tiny_bytes)
    header["tensors"][0 if field != "shape" else 2][field] = value
    with pytest.raises(ModelFormatError, match=match):
        decode_model(_rebuild(_canonical(header), sections))


@pytest.mark.parametrize("field, value, match", [
    ("version", 1.0, "version 1.0 must be an integer"),
    ("version", -1, "version -1"),
    ("model_id", "../../etc", "model_id"),
    ("content_hash", "Z" * 32, "content_hash"),
    ("metadata", {"k": 5}, "metadata"),
])
def test_identity_fields_are_bounded_and_patterned(tiny_bytes: bytes, field, value, match) -> None:
    header, sections = _header(tiny_bytes)
    header[field] = value
    with pytest.raises(ModelFormatError, match=match):
        decode_model(_rebuild(_canonical(header), sections))


def test_config_that_declares_a_huge_model_is_refused_before_decoding(tiny_bytes: bytes) -> None:
    # n_mels * stack inflates the first encoder matrix to ~4e12 entries: refused from the
    # config alone, before any section (here an RLE bomb would follow) is decompressed
    header, sections = _header(tiny_bytes)
    header["config"]["features"]["n_mels"] = 192_000
    header["config"]["features"]["stack"] = 192_000
    with pytest.raises(ModelFormatError, match=r"entries\); the limit is"):
        decode_model(_rebuild(_canonical(header), sections))
    header["config"]["features"]["n_mels"], header["config"]["features"]["stack"] = 8, 2
    with pytest.raises(ModelFormatError, match="bytes of tensors; the limit here is 100"):
        decode_model(tiny_bytes, max_decoded_bytes=100)  # callers pass limits relative to what a model is for


# --- canonical varints and zstd frames -------------------------------------------------------------
def test_varint_that_overflows_64_bits_is_refused() -> None:
    # 10 bytes whose last carries more than the 64th bit: wraps to a small, valid-looking gap
    overflow = bytes([0x81] + [0x80] * 8 + [0x7F])
    with pytest.raises(SparseCodingError, match="overflows 64 bits"):
        varint_decode(overflow, 1)
    with pytest.raises(SparseCodingError, match="at most 2 are canonical"):  # numel 1000: gaps need <= 2 bytes
        index_decode(overflow, 1, 1000)


def test_varint_longer_than_the_tensor_needs_is_refused() -> None:
    three = varint_encode(np.array([20000], dtype=np.uint64))
    assert len(three) == 3
    with pytest.raises(SparseCodingError, match="at most 2"):
        index_decode(three, 1, 1000)


def test_varints_decode_in_chunks_like_one_piece(monkeypatch) -> None:
    import device_agent.sparse_coding as sc

    values = np.random.default_rng(0).integers(0, 1 << 20, 5000).astype(np.uint64)
    buf = varint_encode(values)
    monkeypatch.setattr(sc, "VARINT_CHUNK_BYTES", 7)  # chunk edges fall inside varints
    assert np.array_equal(sc.varint_decode(buf, values.size), values)
    with pytest.raises(SparseCodingError, match="unterminated"):
        sc.varint_decode(buf + b"\x80", values.size)
    with pytest.raises(SparseCodingError, match="found more"):
        sc.varint_decode(buf + b"\x01", values.size)


def _frame(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False).compress(raw)


def test_only_one_zstd_data_frame_is_a_section() -> None:
    raw = b"abc" * 10
    assert decompress_exact(_frame(raw), len(raw), "s", DataError) == raw
    skippable = struct.pack("<II", 0x184D2A50, 0)  # an empty skippable frame, "decodes" to nothing
    with pytest.raises(DataError, match="skippable frames are not allowed"):
        decompress_exact(skippable, 0, "s", DataError)
    with pytest.raises(DataError, match="skippable"):
        decompress_exact(skippable + _frame(raw), len(raw), "s", DataError)
    with pytest.raises(DataError, match="bytes after the zstd frame"):
        decompress_exact(_frame(raw) + _frame(b""), len(raw), "s", DataError)
    with pytest.raises(DataError, match="bytes after the zstd frame"):
        decompress_exact(_frame(raw) + skippable, len(raw), "s", DataError)


# --- bounded decoding ---------------------------------------------------------------------------------
def never_blank_model(version: int = 2):
    """A legal model that always emits symbol 1 and allows 8192 symbols per frame.
    (Dimensions of 16: the int8 kernel needs rows of at least 16 entries.)"""
    from device_agent.features import FeatureConfig
    from device_agent.model_config import ModelConfig

    cfg = ModelConfig(features=FeatureConfig(n_mels=16, stack=1), enc_hidden=16, enc_layers=1, embed_dim=16,
                      pred_hidden=16, joint_dim=16, max_symbols_per_step=8192)
    model = tiny_device_model(0, cfg)
    model.floats["joint.out.bias"][:] = 0.0
    model.floats["joint.out.bias"][0] = -1000.0
    model.floats["joint.out.bias"][1] = 1000.0
    model.version = version
    return model


def test_never_blank_model_hits_the_symbol_bound_fast() -> None:
    rt = Int8Runtime(never_blank_model())
    audio = load_audio(ROOT / "samples" / "audio" / "sample_00.wav")
    with pytest.raises(DecodeBoundError, match="more than 50 symbols"):
        rt.transcribe(audio, max_symbols=50)
    stream = rt.stream()
    stream.push(audio[:1600])  # without a per-utterance bound, a frame still stops at the per-frame cap
    assert 0 < len(stream.token_ids) <= MAX_SYMBOLS_PER_FRAME * max(stream.frames, 1)


# --- type confusion in device-side inputs ---------------------------------------------------------------
def _wav(path: Path, rate: int) -> Path:
    sf.write(str(path), np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)  # the fmt chunk's sample rate
    data[28:32] = struct.pack("<I", rate * 2)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [1, 7, 2_000_000_000])
def test_absurd_wav_sample_rate_is_an_audio_error(tmp_path: Path, rate: int) -> None:
    with pytest.raises(AudioError):
        load_audio(_wav(tmp_path / "x.wav", rate))


def _agent_values(tmp_path: Path, **kw) -> dict:
    values = dict(store_url=f"file://{tmp_path}", model_id="m", device_id="d", data_dir=tmp_path / "dev",
                  trust_root=tmp_path / "root.json", validation_manifest=tmp_path / "v.jsonl")
    return {**values, **kw}


@pytest.mark.parametrize("key, value", [("report_store_url", 5), ("store_url", 5), ("poll_interval", "x"),
                                        ("channel", ["stable"]), ("data_dir", 5)])
def test_config_value_of_the_wrong_type_is_a_config_error(tmp_path: Path, key: str, value) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, env={}, **_agent_values(tmp_path, **{key: value}))


@pytest.mark.parametrize("endpoint", ["notaurl", "http://host:99999", "http://[::1", "ftp://host"])
def test_endpoint_that_is_not_a_url_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        open_store(f"s3://bucket/p?endpoint={endpoint}")


@pytest.mark.parametrize("field, value", [("refused", 5), ("steps", "7"), ("refused", ["1.3"]),
                                          ("last_error", {"class": 3}), ("state", "exploded"),
                                          ("rollback", {"to": {"slot": "a"}}), ("surprise", 1)])
def test_state_field_of_the_wrong_type_is_a_data_error(tmp_path: Path, field: str, value) -> None:
    save_state(tmp_path, AgentState())
    doc = json.loads((tmp_path / "state.json").read_text())
    doc[field] = value
    (tmp_path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="agent state .* is unreadable"):
        load_state(tmp_path)


def test_state_the_agent_writes_reads_back_with_every_field(tmp_path: Path) -> None:
    from device_agent.agent.state import SlotRef, UpdateRecord

    ref = SlotRef("a", 1, "0" * 32)
    st = AgentState(update=UpdateRecord("id", "t", 10, {"sha256": "x"}, "k", "diff", 1, 2, "0" * 32, "1" * 32,
                                        0.25, 1.0, ref, "b", durations={"checking": 0.5}, gate_reasons=["r"]),
                    refused=[3], last_error={"class": "E", "message": "m", "state": "applying"},
                    rollback={"to": ref, "from": None}, steps=4)
    save_state(tmp_path, st)
    assert load_state(tmp_path) == st


def test_data_dir_below_a_regular_file_is_a_project_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for read in (load_state, read_pointer):
        with pytest.raises(TransportError, match="Not a directory"):
            read(tmp_path / "file" / "data")


def test_every_error_above_is_one_line() -> None:
    try:
        decode_model(b"OTAMODEL" + b"\x01\x00\x00\x00" + b"\x05\x00\x00\x00" + b'{"a"}')
    except OtaError as exc:
        assert "\n" not in str(exc)


# --- declared sizes: relative to the base, and bounded without one -------------------------------------
@pytest.fixture(scope="module")
def maximal_bundle(tmp_path_factory) -> tuple[Path, object]:
    """A diff bundle whose first section declares a 2^28-entry tensor and a 64 MiB bitmask section
    that compresses to about 2 KB; checksums and lengths all valid."""
    from bench.fuzz_bundle import pack, rle_frame, split
    from device_agent.diff import Diff, SparseDelta, apply_diff
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model(0)
    name = "encoder.weight_hh_l0"
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                {name: SparseDelta(np.array([1, 5, 9]), np.array([1, -1, 2], dtype=np.int8))})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    manifest, sections = split(encode_diff_bundle(diff, base))
    count = (1 << 25) - 1
    manifest["sections"][name].update(encoding="bitmask", numel=1 << 28, count=count,
                                      raw_length=(1 << 25) + count)
    path = tmp_path_factory.mktemp("max") / "max.otab"
    path.write_bytes(pack(manifest, [rle_frame((1 << 25) + count, (1 << 25) + count)]))
    assert path.stat().st_size < 8192
    return path, base


def _peak_mib(fn) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_maximal_declared_section_is_refused_from_the_manifest_against_the_base(maximal_bundle) -> None:
    from device_agent.bundle import read_bundle
    from device_agent.errors import BundleError

    path, base = maximal_bundle

    def read() -> None:
        with pytest.raises(BundleError, match="expects an int8 tensor of 268435456 entries, the model has 256"):
            read_bundle(path, base)

    assert _peak_mib(read) < 1  # refused before a section is read


def test_verifying_without_a_base_stays_within_the_section_limit(maximal_bundle) -> None:
    from device_agent.bundle import inspect_bundle
    from device_agent.errors import BundleError

    path, _ = maximal_bundle

    def verify() -> None:
        with pytest.raises(BundleError, match="marks more than the 33554431 positions"):
            inspect_bundle(path, verify=True)

    assert _peak_mib(verify) < 64 + 16  # the 64 MiB raw section once, plus one chunk of temporaries


# --- a signed full bundle whose model lies about a type --------------------------------------------------
def test_agent_refuses_a_signed_full_bundle_with_a_float_offset(tmp_path: Path) -> None:
    """The publisher signs a full bundle whose model file says `"offset":0.0` (checksums valid):
    the agent's apply step ends in the project's one-line ModelFormatError, the candidate is
    never activated, the active model and a readable state stay, and the next check runs."""
    from bench.fuzz_bundle import pack, split
    from device_agent.agent import Agent, active_model_file
    from device_agent.agent.log import null_log
    from device_agent.model_format import load_model
    from device_agent.store import FileStore
    from packager.bundle import encode_full_bundle
    from packager.publish import publish_bundle
    from packager.trust import init_repository

    store = FileStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "root.json").write_bytes(init_repository(store, tmp_path / "keys"))
    v1 = tiny_device_model(0)
    v1.floats["joint.out.bias"][0] = 1000.0  # blank wins every frame: fast, deterministic gate
    publish_bundle(store, tmp_path / "keys", encode_full_bundle(encode_model(v1), v1))
    (tmp_path / "val.jsonl").write_text(json.dumps({"audio_filepath": str(ROOT / "samples" / "audio" / "sample_00.wav"),
                                                    "text": "one", "duration": 1.2}) + "\n")
    cfg = load_config(None, env={}, **_agent_values(tmp_path, store_url=f"file://{tmp_path / 'store'}",
                                                    model_id=v1.model_id, validation_manifest=tmp_path / "val.jsonl",
                                                    max_wer=5.0, poll_interval=0.0, poll_jitter=0.0))
    assert Agent(cfg, log=null_log).check_once()["outcome"] == "committed"

    v2 = tiny_device_model(0)
    v2.floats["joint.out.bias"][0] = 1000.0
    v2.version = 2
    good = encode_model(v2)
    header, sections = _header(good)
    header["tensors"][0]["offset"] = 0.0  # 0.0 == 0 in Python: it must not pass as an offset
    manifest, _ = split(encode_full_bundle(good, v2))
    hostile = _rebuild(_canonical(header), sections)
    manifest["sections"]["model"]["raw_length"] = len(hostile)
    publish_bundle(store, tmp_path / "keys", pack(manifest, [hostile]))

    out = Agent(cfg, log=null_log).check_once(raise_errors=False)
    assert out["outcome"] == "failed", out
    state = load_state(cfg.data_dir)  # readable: the agent can start again
    assert state.last_error["class"] == "ModelFormatError" and "section offset 0.0" in state.last_error["message"]
    assert "\n" not in state.last_error["message"]
    path, ref = active_model_file(cfg.data_dir)
    assert (ref.version, ref.hash) == (1, v1.content_hash()) == (1, load_model(path).content_hash())
    again = Agent(cfg, log=null_log).check_once(raise_errors=False)  # a restarted agent checks again, no crash
    assert again["outcome"] in ("failed", "no_update") and active_model_file(cfg.data_dir)[1] == ref
