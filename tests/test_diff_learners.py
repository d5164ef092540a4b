"""Diff learners on a tiny model and real audio: budgets, bit-exact hashes, learning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.diff import HashedDelta, SparseDelta, apply_diff
from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, write_manifest
from diffing.data import load_examples
from diffing.diffs import HashedDiffConfig, HybridDiffConfig, SparseMaskDiffConfig, learn_diff
from diffing.diffs.api import model_file_bytes, parse_budget
from diffing.diffs.int8_domain import mean_kl, mean_loss
from tests.tiny import tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    files = sorted(FSDD.glob("*_jackson_[0-2].wav"))
    utts = [Utterance(p, WORDS[int(p.name[0])], 0.5, "jackson") for p in files]
    return write_manifest(tmp_path_factory.mktemp("data") / "adapt.jsonl", utts)


def test_budget_parsing() -> None:
    assert parse_budget("1%") == 0.01 and parse_budget("20KB") == 20000 and parse_budget("2KiB") == 2048
    with pytest.raises(ConfigError, match="not understood"):
        parse_budget("lots")
    with pytest.raises(ConfigError, match="budget share"):
        SparseMaskDiffConfig(budget=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        SparseMaskDiffConfig.from_json({"budget": 0.01, "evil": 1})


def test_sparse_mask_diff_meets_budget_and_learns(manifest: Path) -> None:
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    cfg = SparseMaskDiffConfig(budget="20%", epochs=6, lr=0.3, replay_ratio=0.0)
    diff = learn_diff(base, manifest, cfg)
    total = sum(w.q.size for w in base.weights.values())
    assert 0 < len(encode_diff_bundle(diff, base)) <= 0.2 * model_file_bytes(base)
    assert all(isinstance(d, SparseDelta) for d in diff.deltas.values())
    # the server's predicted target hash is what the device-side apply produces
    updated = apply_diff(base, diff)
    assert updated.content_hash() == diff.target_hash and diff.base_hash == base.content_hash()
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    assert mean_loss(updated, examples) < mean_loss(base, examples)
    zeros_before = 1 - sum(w.nnz for w in base.weights.values()) / total
    zeros_after = 1 - sum(w.nnz for w in updated.weights.values()) / total
    assert abs(zeros_after - zeros_before) <= diff.nonzero_entries() / total


def test_hashed_diff_preserves_sparsity_and_learns(manifest: Path) -> None:
    base = tiny_device_model()
    diff = learn_diff(base, manifest, HashedDiffConfig(budget="40%", epochs=6, lr=0.3, replay_ratio=0.0))
    assert all(isinstance(d, HashedDelta) for d in diff.deltas.values())
    updated = apply_diff(base, diff)
    assert updated.content_hash() == diff.target_hash
    for name, w in base.weights.items():
        assert np.all(updated.weights[name].q[w.q == 0] == 0)
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    assert mean_loss(updated, examples) < mean_loss(base, examples)


def test_baselines_share_the_harness(manifest: Path) -> None:
    from diffing.diffs.baselines import (FullFinetuneConfig, LoRADiffConfig, bsdiff_bytes, lora_rank, topk_of,
                                         zstd_patch_from_bytes)
    from device_agent.model_format import encode_model
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    full = learn_diff(base, manifest, FullFinetuneConfig(epochs=3, lr=0.3, replay_ratio=0.0))
    top = topk_of(base, full, "10%")
    assert 0 < len(encode_diff_bundle(top, base)) <= 0.1 * model_file_bytes(base)
    assert 0 < top.nonzero_entries() < full.nonzero_entries()
    assert apply_diff(base, top).content_hash() == top.target_hash
    lora = learn_diff(base, manifest, LoRADiffConfig(budget="50%", epochs=2, replay_ratio=0.0))
    assert int(lora.metadata["rank"]) == lora_rank(base, 0.5) >= 1
    assert int(lora.metadata["wire_bytes"]) <= 0.5 * model_file_bytes(base)
    with pytest.raises(ConfigError, match="rank 1 on every matrix"):  # LoRA cannot go below rank 1
        learn_diff(base, manifest, LoRADiffConfig(budget="100B", epochs=1))
    assert apply_diff(base, lora).content_hash() == lora.target_hash
    base_file, new_file = encode_model(base), encode_model(apply_diff(base, full))
    assert 0 < zstd_patch_from_bytes(base_file, new_file) < len(new_file) + 64
    assert 0 < bsdiff_bytes(base_file, new_file)


def test_byte_budget_is_met_by_the_serialized_bundle(manifest: Path) -> None:
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    diff = learn_diff(base, manifest, SparseMaskDiffConfig(budget="400B", epochs=3, lr=0.3, replay_ratio=0.0))
    assert 0 < len(encode_diff_bundle(diff, base)) <= 400
    assert apply_diff(base, diff).content_hash() == diff.target_hash


def test_sparse_byte_budget_is_filled(manifest: Path) -> None:
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    logs: list[str] = []
    diff = learn_diff(base, manifest, SparseMaskDiffConfig(budget="1500B", epochs=3, replay_ratio=0.0), log=logs.append)
    # the final prune measures real encoded bytes, so a clustered diff is not left far under budget
    assert 0.8 * 1500 <= len(encode_diff_bundle(diff, base)) <= 1500, logs


def test_distillation_keeps_replay_outputs_closer_to_the_deployed_model(manifest: Path, tmp_path: Path) -> None:
    from diffing.diffs.baselines import FullFinetuneConfig

    base = tiny_device_model()
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    # replay = other digits of the same speaker; the update pushes hard on one word
    adapt = write_manifest(tmp_path / "adapt.jsonl", [Utterance(p, "seven", 0.5, "jackson")
                                                      for p in sorted(FSDD.glob("*_jackson_[3-5].wav"))])
    drift = {}
    for distill in (0.0, 5.0):
        diff = learn_diff(base, adapt, FullFinetuneConfig(epochs=3, lr=1.0, replay_ratio=1.0, distill=distill),
                          replay_manifest=manifest)
        drift[distill] = mean_kl(base, apply_diff(base, diff), examples)
    assert 0 < drift[5.0] < drift[0.0], drift


def test_a_teacher_pulls_the_diff_towards_its_outputs(manifest: Path, tmp_path: Path) -> None:
    from device_agent.model_format import encode_model

    # the deployed model as the teacher: taught, the diff should move the outputs far less
    base = tiny_device_model()
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    teacher = tmp_path / "teacher.otam"
    teacher.write_bytes(encode_model(base))
    drift = {}
    for path in ("", str(teacher)):
        # teach 1000: this random tiny model's transcript loss is ~90 per utterance, its per-node KLs < 1
        diff = learn_diff(base, manifest, SparseMaskDiffConfig(budget="20%", epochs=4, lr=0.3, replay_ratio=0.0,
                                                               teacher=path, teach=1000.0))
        updated = apply_diff(base, diff)
        assert updated.content_hash() == diff.target_hash
        drift[path] = mean_kl(base, updated, examples)
    assert drift[str(teacher)] < 0.5 * drift[""], drift


def test_a_teacher_of_another_architecture_is_refused(manifest: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from device_agent.model_format import encode_model
    from tests.tiny import TINY_CONFIG

    other = tmp_path / "other.otam"
    other.write_bytes(encode_model(tiny_device_model(config=replace(TINY_CONFIG, joint_dim=12))))
    with pytest.raises(ConfigError, match="teacher .*other.otam: expected a model with the deployed model's"):
        learn_diff(tiny_device_model(), manifest, SparseMaskDiffConfig(budget="10%", epochs=1, teacher=str(other)))
    with pytest.raises(ConfigError, match="teach"):
        SparseMaskDiffConfig(teach=-1.0)


def test_lr_schedule_and_distill_are_validated(manifest: Path) -> None:
    with pytest.raises(ConfigError, match="lr_schedule"):
        SparseMaskDiffConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="distill"):
        SparseMaskDiffConfig(distill=-1.0)
    # distillation keeps the deployed model's outputs on replay batches: without replay it would do nothing
    with pytest.raises(ConfigError, match="distill 1.0: expected a replay manifest"):
        learn_diff(tiny_device_model(), manifest, SparseMaskDiffConfig(budget="10%", epochs=1, distill=1.0))


def test_hashed_byte_budget_holds_when_the_sizing_guess_is_too_generous(manifest: Path, monkeypatch) -> None:
    from diffing.diffs import hashed
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    # a sizing guess far too generous (every nonzero entry its own bucket) stands in for values
    # that spread wider than sized: the learner must retrain smaller, not ship over budget
    monkeypatch.setattr(hashed, "hashed_buckets_for_bytes",
                        lambda model, b, **_: sum(w.nnz for w in model.weights.values()))
    logs: list[str] = []
    diff = learn_diff(base, manifest, HashedDiffConfig(budget="2000B", epochs=2, lr=1.0, replay_ratio=0.0, max_frames=2400), log=logs.append)
    assert any("over the 2000-byte budget" in line for line in logs)
    assert len(encode_diff_bundle(diff, base)) <= 2000
    assert apply_diff(base, diff).content_hash() == diff.target_hash


def test_byte_budgets_are_filled_not_just_respected(manifest: Path) -> None:
    from diffing.diffs.baselines import FullFinetuneConfig, topk_of
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    full = learn_diff(base, manifest, FullFinetuneConfig(epochs=2, lr=0.3, replay_ratio=0.0))
    full_size = len(encode_diff_bundle(full, base))
    for budget in (int(0.5 * full_size), int(0.8 * full_size)):
        top = topk_of(base, full, budget)  # the entry count comes from measured bytes per entry
        assert 0.6 * budget <= len(encode_diff_bundle(top, base)) <= budget
        assert apply_diff(base, top).content_hash() == top.target_hash


@pytest.mark.parametrize("config", [SparseMaskDiffConfig, HashedDiffConfig])
def test_unreachable_byte_budget_is_refused_before_training(manifest: Path, config) -> None:
    base = tiny_device_model()
    with pytest.raises(ConfigError, match="cannot be met"):
        learn_diff(base, manifest, config(budget="100B", epochs=1))


def test_hybrid_diff_hashes_the_chosen_matrices_within_the_byte_budget(manifest: Path) -> None:
    from device_agent.bundle import apply_bundle, decode_bundle
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    diff = learn_diff(base, manifest, HybridDiffConfig(budget="2500B", epochs=3, replay_ratio=0.0))
    assert diff.method == "hybrid"
    kinds = {name: type(d) for name, d in diff.deltas.items()}
    assert {n for n, k in kinds.items() if k is HashedDelta} == {n for n, w in base.weights.items()
                                                                  if n.startswith("encoder.") and w.nnz}
    assert any(k is SparseDelta for k in kinds.values())
    data = encode_diff_bundle(diff, base)
    assert len(data) <= 2500
    # the shipped bundle (seed included) reproduces the server's predicted model on the device
    updated = apply_bundle(decode_bundle(data), base)
    assert updated.content_hash() == diff.target_hash
    examples = load_examples(manifest, base.tokenizer, base.config.features, None, False)
    assert mean_loss(updated, examples) < mean_loss(base, examples)


def test_values_on_a_step_carry_more_entries_in_the_same_bytes(manifest: Path) -> None:
    from device_agent.bundle import apply_bundle, decode_bundle
    from packager.bundle import encode_diff_bundle

    base = tiny_device_model()
    entries = {}
    for step in (1, 4):
        diff = learn_diff(base, manifest, SparseMaskDiffConfig(budget="1500B", epochs=3, replay_ratio=0.0,
                                                               value_step=step))
        data = encode_diff_bundle(diff, base)
        assert len(data) <= 1500
        values = np.concatenate([d.values for d in diff.deltas.values()]).astype(np.int16)
        positions = {n: d.positions for n, d in diff.deltas.items()}
        q = np.concatenate([base.weights[n].q.reshape(-1)[p] for n, p in positions.items()]).astype(np.int16)
        # a multiple of the step, unless the int8 range clipped it
        assert np.all((values % step == 0) | (np.abs(q + values) == 127))
        assert apply_bundle(decode_bundle(data), base).content_hash() == diff.target_hash
        entries[step] = diff.nonzero_entries()
    assert entries[4] > entries[1]
    with pytest.raises(ConfigError, match="value_step"):
        SparseMaskDiffConfig(value_step=3)


def test_a_compact_bundle_carries_more_of_the_diff_in_the_same_bytes(manifest: Path, tmp_path: Path) -> None:
    """`ota diff train --compact` sizes for format 3 (manifest compressed): more entries within the same budget."""
    import torch
    from click.testing import CliRunner

    from cli.main import cli
    from device_agent.bundle import apply_bundle, decode_bundle
    from device_agent.model_format import save_model

    base = tiny_device_model()
    save_model(base, tmp_path / "base.otam")
    entries, sizes = {}, {}
    threads = torch.get_num_threads()
    for flags in ([], ["--compact"]):
        out = tmp_path / f"v2{''.join(flags)}.otab"
        try:
            result = CliRunner().invoke(cli, ["diff", "train", "--method", "hybrid", "--budget", "2500B", "--base",
                                              str(tmp_path / "base.otam"), "--data", str(manifest), "--epochs", "2",
                                              "--threads", "1", *flags, "--out", str(out)])
        finally:
            torch.set_num_threads(threads)
        assert result.exit_code == 0, result.output
        bundle = decode_bundle(out.read_bytes())
        assert bundle.format_version == (3 if flags else 1)
        assert apply_bundle(bundle, base).content_hash() == bundle.target_hash
        entries[bool(flags)], sizes[bool(flags)] = bundle.diff.nonzero_entries(), out.stat().st_size
    assert sizes[True] <= 2500 and sizes[False] <= 2500
    assert entries[True] > entries[False]


def test_hybrid_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="hashed_share"):
        HybridDiffConfig(hashed_prefixes=())
    with pytest.raises(ConfigError, match="hashed_share"):
        HybridDiffConfig(hashed_share=1.0)
    with pytest.raises(ConfigError, match="no weight matrix"):
        learn_diff(tiny_device_model(), "unused.jsonl", HybridDiffConfig(budget="20KB", hashed_prefixes=("decoder.",)))
    with pytest.raises(ConfigError, match="cannot be met"):
        learn_diff(tiny_device_model(), "unused.jsonl", HybridDiffConfig(budget="400B"))


@pytest.mark.parametrize("method", ["sparse", "hashed", "hybrid", "channel"])
def test_written_bundle_is_within_a_share_of_the_model_file(manifest: Path, tmp_path: Path, method: str) -> None:
    """`--budget 40%` means 40% of the base model file's bytes, for the bundle `ota diff train` writes."""
    import torch
    from click.testing import CliRunner

    from cli.main import cli
    from device_agent.model_format import save_model

    base = tiny_device_model()
    save_model(base, tmp_path / "base.otam")
    out = tmp_path / "v2.otab"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["diff", "train", "--method", method, "--budget", "40%", "--base",
                                          str(tmp_path / "base.otam"), "--data", str(manifest), "--epochs", "1",
                                          "--threads", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2  # --threads reaches torch, as in `ota train`
    finally:
        torch.set_num_threads(threads)
    file_bytes = (tmp_path / "base.otam").stat().st_size
    assert file_bytes == model_file_bytes(base)
    assert out.stat().st_size <= 0.4 * file_bytes
    if method != "channel":  # a channel diff has a fixed number of values; the others fill the budget
        assert out.stat().st_size > 0.5 * 0.4 * file_bytes


def test_hybrid_refuses_to_ship_over_budget_when_its_buckets_alone_do_not_fit() -> None:
    from device_agent.errors import DiffError
    from diffing.diffs.sparse_mask import diff_within_budget

    base = tiny_device_model()
    name = next(n for n, w in base.weights.items() if n.startswith("encoder.") and w.nnz)
    # buckets that spread wider than sized (random int8 barely compresses): trimming the
    # sparse entries cannot make room, so the learner fails instead of shipping over budget
    rng = np.random.default_rng(0)
    wide = {name: HashedDelta(3000, rng.integers(-127, 128, 3000).astype(np.int8))}
    sparse = {n: np.ones(w.q.shape, dtype=np.int16) for n, w in base.weights.items() if n != name}
    with pytest.raises(DiffError, match="hashed and channel parts alone"):
        diff_within_budget(base, "hybrid", sparse, 2000, base.version + 1, wide, seed=1)


def test_hashed_sizing_leaves_room_for_the_wider_spread_of_shared_buckets() -> None:
    """Buckets shared by more entries train to wider values: sized for that, a 1% hashed diff of the
    shipped model fits its budget even at the widest spread measured on the chain (std 18.4)."""
    from device_agent.model_format import encode_model, load_model
    from diffing.diffs.sizing import (HASHED_STD, _encoded_size, _typical_values, hashed_buckets_for_bytes,
                                      hashed_value_std, split_buckets)

    model = load_model(Path(__file__).resolve().parents[1] / "models" / "base-v1.otam")
    budget = len(encode_model(model)) // 100
    nnz = {n: w.nnz for n, w in model.weights.items() if w.nnz}
    assert hashed_value_std(80) > HASHED_STD > hashed_value_std(10)
    rng = np.random.default_rng(1)

    def size_at(buckets: int, std: float) -> int:
        return _encoded_size(model, {n: HashedDelta(b, _typical_values(rng, b, std, nonzero=False))
                                     for n, b in split_buckets(nnz, buckets).items()})

    widened = hashed_buckets_for_bytes(model, budget, spread_with_sharing=True)
    flat = hashed_buckets_for_bytes(model, budget)
    assert widened < flat
    assert size_at(widened, 18.4) <= budget
    assert size_at(flat, 18.4) > budget  # what made 3 of 5 chain updates train twice


def test_dense_deltas_beyond_int8_are_cut_to_what_a_bundle_carries() -> None:
    from diffing.diffs.int8_domain import finish_diff, sparse_deltas_from_dense

    # a learned delta can grow past 127 steps; a bundle's values are int8, so it moves the weight by 127
    base = tiny_device_model()
    name, w = next((n, w) for n, w in base.weights.items() if (w.q < -100).any())
    at = int(np.flatnonzero(w.q.reshape(-1) < -100)[0])
    dense = np.zeros(w.q.size, dtype=np.int16)
    dense[at] = 250
    deltas = sparse_deltas_from_dense(base, {name: dense})
    assert deltas[name].values.tolist() == [127]
    updated = apply_diff(base, finish_diff(base, "sparse", deltas, base.version + 1))
    assert int(updated.weights[name].q.reshape(-1)[at]) == int(w.q.reshape(-1)[at]) + 127


def test_words_the_base_misses_join_the_diff_within_its_budget(manifest: Path, tmp_path: Path) -> None:
    """`ota diff train --words`: the adaptation data's words the base does not transcribe ride along in
    format 4, out of the same byte budget, and the applied model lists them."""
    import torch
    from click.testing import CliRunner

    from cli.main import cli
    from device_agent.bundle import apply_bundle, decode_bundle
    from device_agent.model_format import save_model
    from diffing.diffs.word_list import missed_words

    base = tiny_device_model()
    assert missed_words(base, manifest) == tuple(sorted(WORDS))  # random weights transcribe none of them
    save_model(base, tmp_path / "base.otam")
    out = tmp_path / "v2.otab"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["diff", "train", "--method", "hybrid", "--budget", "2500B", "--base",
                                          str(tmp_path / "base.otam"), "--data", str(manifest), "--epochs", "1",
                                          "--threads", "1", "--words", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    bundle = decode_bundle(out.read_bytes())
    assert bundle.format_version == 4 and out.stat().st_size <= 2500
    model = apply_bundle(bundle, base)
    assert model.tokenizer.words == tuple(sorted(WORDS)) and model.content_hash() == bundle.target_hash
    assert missed_words(model, manifest) == ()  # listed words are not listed again

