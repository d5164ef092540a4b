"""Channel deltas (per-channel scales and biases): exact arithmetic, bundle bytes, hostile input."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import xxhash
import zstandard
from click.testing import CliRunner

from bench.fuzz_bundle import split
from cli.main import cli
from device_agent.device_model import DeviceModel, canonical_json
from device_agent.diff import ChannelDeltas, Diff, HashedDelta, SparseDelta, apply_diff, channel_tensors
from device_agent.errors import BundleError, DiffError
from device_agent.model_format import save_model
from device_agent.bundle import PREAMBLE, apply_bundle, decode_bundle, verify_bundle_for_model
from packager.bundle import encode_diff_bundle
from tests.tiny import tiny_device_model

# Pinned like tests/test_bundle.py: a change here is a format change (docs/bundle-format.md).
PINNED_CHANNEL_BUNDLE_XXH64 = "670e66c066bc75ab"


def _finish(diff: Diff, base: DeviceModel) -> Diff:
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def channel_diff(base: DeviceModel, deltas: dict | None = None, **per_tensor) -> Diff:
    channels = ChannelDeltas.pack(base, per_tensor or {
        "joint.out.weight": (-8, np.arange(29) - 14),
        "joint.out.bias": (-10, np.where(np.arange(29) % 3 == 0, 5, 0)),
        "encoder.bias_hh_l1": (-12, np.full(32, -3))})
    return _finish(Diff("channel", base.model_id, 1, 2, base.content_hash(), "", deltas or {}, 7, {}, channels), base)


@pytest.fixture(scope="module")
def base() -> DeviceModel:
    return tiny_device_model()


def test_scales_and_biases_follow_the_documented_float32_rule(base: DeviceModel) -> None:
    diff = channel_diff(base)
    new = apply_diff(base, diff)
    codes = (np.arange(29) - 14).astype(np.float32)
    expected = base.weights["joint.out.weight"].scale * (np.float32(1) + codes * np.float32(2.0 ** -8))
    assert new.weights["joint.out.weight"].scale.tobytes() == expected.astype(np.float32).tobytes()
    assert np.array_equal(new.weights["joint.out.weight"].q, base.weights["joint.out.weight"].q)
    bias = base.floats["joint.out.bias"].copy()
    bias[::3] += np.float32(5 * 2.0 ** -10)
    assert new.floats["joint.out.bias"].tobytes() == bias.tobytes()
    assert new.floats["encoder.bias_hh_l1"].tobytes() == (base.floats["encoder.bias_hh_l1"]
                                                           - np.float32(3 * 2.0 ** -12)).tobytes()
    # everything else is shared, bit for bit
    assert new.weights["encoder.weight_ih_l0"].scale.tobytes() == base.weights["encoder.weight_ih_l0"].scale.tobytes()
    assert new.floats["frontend.mean"].tobytes() == base.floats["frontend.mean"].tobytes()


def test_channel_bundle_is_pinned_and_round_trips(base: DeviceModel) -> None:
    diff = channel_diff(base)
    data = encode_diff_bundle(diff, base)
    magic, version, _, n = PREAMBLE.unpack_from(data)
    assert version == 2  # the channels section needs format version 2
    manifest, sections = split(data)
    tensors = channel_tensors(base)
    assert manifest["sections"]["channels"]["numel"] == sum(c for _, _, c in tensors)
    assert manifest["sections"]["channels"]["count"] == len(tensors) == 19
    raw = zstandard.ZstdDecompressor().decompress(sections[0])
    exps = np.frombuffer(raw[:19], dtype=np.int8)
    assert exps[[n for n, *_ in tensors].index("joint.out.weight")] == -8 and exps[0] == 0
    assert xxhash.xxh64_hexdigest(data) == PINNED_CHANNEL_BUNDLE_XXH64
    # the device's result is the server's prediction
    decoded = decode_bundle(data)
    assert apply_bundle(decoded, base).content_hash() == diff.target_hash


def test_a_diff_without_channels_stays_format_version_1(base: DeviceModel) -> None:
    diff = _finish(Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                        {"joint.out.weight": SparseDelta([3], [1])}), base)
    assert PREAMBLE.unpack_from(encode_diff_bundle(diff, base))[1] == 1


def test_channels_combine_with_sparse_and_hashed_entries(base: DeviceModel) -> None:
    deltas = {"joint.out.weight": SparseDelta([3, 50], [1, -2]), "encoder.weight_hh_l0": HashedDelta(4, [1, -1, 0, 3])}
    diff = channel_diff(base, deltas)
    new = apply_bundle(decode_bundle(encode_diff_bundle(diff, base)), base)
    assert new.content_hash() == diff.target_hash
    assert new.weights["joint.out.weight"].q.reshape(-1)[50] == base.weights["joint.out.weight"].q.reshape(-1)[50] - 2
    assert not np.array_equal(new.weights["joint.out.weight"].scale, base.weights["joint.out.weight"].scale)


def _with_raw(data: bytes, raw: bytes, version: int | None = None, **entry) -> bytes:
    """The bundle with its channels section replaced by `raw` (and entry fields), consistently re-encoded."""
    manifest, sections = split(data)
    names = list(manifest["sections"])
    i = names.index("channels")
    sections[i] = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(raw)
    manifest["sections"]["channels"].update(raw_length=len(raw), **entry)
    offset = 0
    for name, s in zip(names, sections):
        manifest["sections"][name].update(offset=offset, length=len(s), xxh64=xxhash.xxh64_hexdigest(s))
        offset += len(s)
    body = canonical_json(manifest)
    old_version = struct.unpack_from("<H", data, 8)[0]
    return PREAMBLE.pack(b"OTABNDL\0", version or old_version, 0, len(body)) + body + b"".join(sections)


def _raw(data: bytes) -> bytes:
    manifest, sections = split(data)
    return zstandard.ZstdDecompressor().decompress(sections[list(manifest["sections"]).index("channels")])


def test_hostile_channel_sections_are_refused_by_the_reader(base: DeviceModel) -> None:
    data = encode_diff_bundle(channel_diff(base), base)
    raw = bytearray(_raw(data))
    with pytest.raises(BundleError, match="found -128"):
        decode_bundle(_with_raw(data, bytes(raw[:-1]) + b"\x80"))
    with pytest.raises(BundleError, match="step exponents must be within"):
        decode_bundle(_with_raw(data, bytes([5]) + bytes(raw[1:])))
    with pytest.raises(BundleError, match="raw_length"):  # codes missing for the channels the table claims
        decode_bundle(_with_raw(data, bytes(raw[:-1])))
    with pytest.raises(BundleError, match="needs bundle format version 2"):
        decode_bundle(_with_raw(data, bytes(raw), version=1))
    # a table claiming other channel counts decodes, but does not fit this model
    other = decode_bundle(_with_raw(data, bytes(raw) + b"\0", numel=len(raw) - 19 + 1))
    with pytest.raises(BundleError, match="channels of 19 tensors, the model has"):
        verify_bundle_for_model(other, base)


def _refused(base: DeviceModel, channels: ChannelDeltas, match: str) -> None:
    """Refused with a DiffError, and an in-place apply leaves the base untouched."""
    before = base.content_hash()
    diff = Diff("channel", base.model_id, 1, 2, before, "0" * 32, {"joint.out.weight": SparseDelta([3], [1])}, 0, {},
                channels)
    with pytest.raises(DiffError, match=match):
        apply_diff(base, diff, in_place=True)
    assert base.content_hash() == before


def test_hostile_channel_values_are_refused_before_anything_changes() -> None:
    base = tiny_device_model()
    tensors = channel_tensors(base)
    good = ChannelDeltas.pack(base, {"joint.out.weight": (-8, np.ones(29))})
    index = [n for n, *_ in tensors].index("joint.out.weight")
    # a step of 2^-6 would let code -64 make a zero scale
    exps = good.step_exps.copy()
    exps[index] = -6
    _refused(base, ChannelDeltas(exps, good.codes), "step exponent -6 outside")
    _refused(base, ChannelDeltas(good.step_exps[:-1], good.codes), "cover 18 tensors")  # wrong counts
    _refused(base, ChannelDeltas(good.step_exps, good.codes[:-1]), "this model has 19 and")
    codes = good.codes.copy()
    codes[0] = -128
    _refused(base, ChannelDeltas(good.step_exps, codes), "within")
    exps = good.step_exps.copy()
    exps[0] = -8  # a step for a tensor whose codes are all zero: not canonical
    _refused(base, ChannelDeltas(exps, good.codes), "must have step exponent 0")
    # scales that overflow float32 (a base at the edge of the range); a bias step is at most 2^-1, so
    # biases cannot overflow
    base.weights["joint.out.weight"].scale[:] = np.float32(3.4e38)
    _refused(base, good, "not finite")
    base.weights["joint.out.weight"].scale[:] = np.float32(1.5e-38)  # scales must stay normal floats
    _refused(base, ChannelDeltas.pack(base, {"joint.out.weight": (-7, np.full(29, -127))}), "positive normal")


def test_cli_refuses_a_hostile_channel_bundle_and_writes_nothing(base: DeviceModel, tmp_path: Path) -> None:
    data = encode_diff_bundle(channel_diff(base), base)
    raw = _raw(data)
    (tmp_path / "bad.otab").write_bytes(_with_raw(data, raw[:-1] + b"\x80"))
    save_model(base, tmp_path / "base.otam")
    result = CliRunner().invoke(cli, ["diff", "apply", str(tmp_path / "bad.otab"),
                                      "--base", str(tmp_path / "base.otam"), "--out", str(tmp_path / "new.otam")])
    assert result.exit_code not in (0, 1) and "BundleError" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "new.otam").exists()
    assert CliRunner().invoke(cli, ["diff", "inspect", str(tmp_path / "bad.otab")]).exit_code == result.exit_code


FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from device_agent.manifest import Utterance, write_manifest

    utts = [Utterance(p, WORDS[int(p.name[0])], 0.5, "jackson") for p in sorted(FSDD.glob("*_jackson_[0-2].wav"))]
    return write_manifest(tmp_path_factory.mktemp("data") / "adapt.jsonl", utts)


def test_channel_diff_learns_within_budget_and_the_device_reproduces_it(manifest: Path) -> None:
    from diffing.data import load_examples
    from diffing.diffs import ChannelDiffConfig, learn_diff
    from diffing.diffs.int8_domain import mean_loss

    base = tiny_device_model()
    diff = learn_diff(base, manifest, ChannelDiffConfig(budget="600B", epochs=4, replay_ratio=0.0, threads=1))
    assert diff.deltas == {} and diff.channels is not None and np.count_nonzero(diff.channels.codes) > 0
    data = encode_diff_bundle(diff, base)
    assert len(data) <= 600
    updated = apply_bundle(decode_bundle(data), base)
    assert updated.content_hash() == diff.target_hash
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    assert mean_loss(updated, examples) < mean_loss(base, examples)


def test_sparse_entries_and_channels_train_together_within_budget(manifest: Path) -> None:
    from diffing.diffs import SparseMaskDiffConfig, learn_diff

    base = tiny_device_model()
    diff = learn_diff(base, manifest, SparseMaskDiffConfig(budget="1500B", epochs=2, replay_ratio=0.0,
                                                           channels="scale", threads=1))
    assert diff.channels is not None and any(isinstance(d, SparseDelta) for d in diff.deltas.values())
    unpacked = diff.channels.unpack(base)
    assert unpacked and all(kind == "scale" for kind, _, _ in unpacked.values())  # only what was asked for
    data = encode_diff_bundle(diff, base)
    assert len(data) <= 1500
    assert apply_bundle(decode_bundle(data), base).content_hash() == diff.target_hash


def test_a_channel_diff_over_budget_drops_its_smallest_codes(base: DeviceModel) -> None:
    from diffing.diffs.channel import trimmed_to_budget
    from diffing.diffs.int8_domain import finish_diff

    rng = np.random.default_rng(3)
    codes = {n: (-9 if kind == "bias" else -8, np.clip(rng.normal(0, 20, c), -127, 127).round())
             for n, kind, c in channel_tensors(base)}
    diff = finish_diff(base, "channel", {}, 2, channels=ChannelDeltas.pack(base, codes))
    size = len(encode_diff_bundle(diff, base))
    trimmed = trimmed_to_budget(base, diff, size - 150)
    assert len(encode_diff_bundle(trimmed, base)) <= size - 150
    kept = trimmed.channels.codes != 0
    assert 0 < kept.sum() < np.count_nonzero(diff.channels.codes)
    # what is left are the largest codes, unchanged
    assert np.abs(trimmed.channels.codes[kept]).min() >= np.abs(diff.channels.codes[~kept]).max()
    assert np.array_equal(trimmed.channels.codes[kept], diff.channels.codes[kept])
    assert apply_diff(base, trimmed).content_hash() == trimmed.target_hash


def test_hashed_buckets_and_bias_codes_train_together_within_budget(manifest: Path) -> None:
    from diffing.diffs import HashedDiffConfig, learn_diff

    base = tiny_device_model()
    diff = learn_diff(base, manifest, HashedDiffConfig(budget="3000B", epochs=1, replay_ratio=0.0, channels="bias",
                                                       threads=1))
    assert diff.channels is not None and all(isinstance(d, HashedDelta) for d in diff.deltas.values())
    assert {kind for kind, _, _ in diff.channels.unpack(base).values()} == {"bias"}
    data = encode_diff_bundle(diff, base)
    assert len(data) <= 3000
    assert apply_bundle(decode_bundle(data), base).content_hash() == diff.target_hash
