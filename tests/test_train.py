"""Base training: pruning reaches the target, QAT export, resumable checkpoints."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_format import load_model
from device_agent.features import FeatureConfig
from diffing.compression import CompressionState, cubic_schedule, fake_quant_per_channel, magnitude_mask
from diffing.data import _vtlp_matrix, speed_perturb, vtlp
from diffing.train import TrainConfig, train
from tests.tiny import TINY_CONFIG

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    files = sorted(FSDD.glob("*_lucas_1[0-4].wav"))
    return write_manifest(tmp_path_factory.mktemp("d") / "train.jsonl",
                          [Utterance(p, WORDS[int(p.name[0])], 0.5, "lucas") for p in files])


def test_cubic_schedule_rises_to_target_and_stays() -> None:
    values = [cubic_schedule(p / 10, 0.5) for p in range(-2, 14)]
    assert values[0] == 0 and values[-1] == 0.5 and all(a <= b for a, b in zip(values, values[1:]))
    assert cubic_schedule(0.5, 0.5) > 0.25  # front-loaded


def test_fake_quant_matches_export_grid_and_passes_gradients() -> None:
    w = torch.randn(4, 16, requires_grad=True)
    q = fake_quant_per_channel(w)
    scale = w.detach().abs().amax(1, keepdim=True) / 127
    assert torch.allclose(q / scale, torch.round(q / scale), atol=1e-4)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert magnitude_mask(torch.arange(10.0), 0.3).sum() == 7


def test_vtlp_moves_formants_with_alpha_and_keeps_shapes() -> None:
    cfg = FeatureConfig()
    assert torch.allclose(_vtlp_matrix(1.0, cfg), torch.eye(cfg.n_mels))
    for alpha in (0.9, 1.1):  # every output bin is a convex mix of input bins
        assert torch.allclose(_vtlp_matrix(alpha, cfg).sum(0), torch.ones(cfg.n_mels))
    peak = torch.zeros(cfg.n_mels)
    peak[30] = 1.0
    assert int((peak @ _vtlp_matrix(1.1, cfg)).argmax()) > 30 > int((peak @ _vtlp_matrix(0.9, cfg)).argmax())
    batch = torch.randn(3, 7, cfg.stacked_dim)
    assert vtlp(batch, cfg, random.Random(0), 0.0) is batch
    warped = vtlp(batch, cfg, random.Random(0), 0.1)
    assert warped.shape == batch.shape and not torch.allclose(warped, batch)
    assert torch.equal(warped, vtlp(batch, cfg, random.Random(0), 0.1))  # seeded
    # each stacked slot is warped alike: a frame repeated in every slot stays repeated
    same = batch[:, :, : cfg.n_mels].repeat(1, 1, cfg.stack)
    out = vtlp(same, cfg, random.Random(1), 0.1).view(3, 7, cfg.stack, cfg.n_mels)
    assert torch.allclose(out[:, :, 0], out[:, :, 2])


def test_speed_perturbation_scales_duration_and_frequencies_together() -> None:
    cfg = FeatureConfig()
    feats = torch.randn(90, cfg.n_mels).half()  # the cache stores half precision
    assert torch.allclose(speed_perturb(feats, cfg, 1.0), feats.float())
    assert speed_perturb(feats, cfg, 1.2).shape == (75, cfg.n_mels)  # faster: fewer frames
    assert speed_perturb(feats, cfg, 0.9).shape == (100, cfg.n_mels)
    peak = torch.zeros(40, cfg.n_mels)
    peak[:, 30] = 1.0  # a steady formant moves up when sped up, down when slowed
    assert int(speed_perturb(peak, cfg, 1.2)[10].argmax()) > 30 > int(speed_perturb(peak, cfg, 0.85)[10].argmax())


def test_train_prunes_exports_and_resumes(manifest: Path, tmp_path: Path) -> None:
    cfg = dict(train_manifest=str(manifest), dev_manifest=str(manifest), out_dir=str(tmp_path / "run"),
               model=TINY_CONFIG, max_frames=400, target_sparsity=0.6, prune_start=0.0, prune_end=0.5,
               qat_start=0.5, dev_utterances=4, threads=1)
    logs: list[str] = []
    path = train(TrainConfig(epochs=2, **cfg), log=logs.append, progress=False)
    model = load_model(path)
    assert model.weight_sparsity() >= 0.6 - 1e-3
    assert model.config == TINY_CONFIG
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["model_config"] == TINY_CONFIG.to_json() and ckpt["data_identity"]["train"]
    # the same command with more epochs resumes instead of starting over
    with pytest.raises(ConfigError, match="different data or settings"):
        train(TrainConfig(epochs=3, **{**cfg, "lr": 1e-3}), log=logs.append, progress=False)
    logs.clear()
    train(TrainConfig(epochs=2, **cfg), log=logs.append, progress=False)  # already done: nothing to run
    assert not any('"epoch"' in line for line in logs)


def test_fine_tune_stage_starts_from_a_checkpoint_and_only_prunes_further(manifest: Path, tmp_path: Path) -> None:
    common = dict(train_manifest=str(manifest), model=TINY_CONFIG, max_frames=400, dev_utterances=2, threads=1)
    first = load_model(train(TrainConfig(out_dir=str(tmp_path / "a"), epochs=1, target_sparsity=0.5, prune_start=0.0,
                                         prune_end=0.2, **common), log=lambda _: None, progress=False))
    logs: list[str] = []
    second = load_model(train(TrainConfig(out_dir=str(tmp_path / "b"), epochs=1, target_sparsity=0.7, prune_start=0.0,
                                          prune_end=0.3, qat_start=0.0, init_from=str(tmp_path / "a" / "last.pt"),
                                          vtlp=0.1, speed=0.2, **common), log=logs.append, progress=False))
    assert any("initialised from" in line and "50.0% zeros" in line for line in logs)
    assert second.weight_sparsity() >= 0.7 - 1e-3
    for name, w in first.weights.items():  # a pruned weight is never revived
        assert not second.weights[name].q[w.q == 0].any()
    with pytest.raises(ConfigError, match="different model config"):
        bigger = TINY_CONFIG.to_json() | {"joint_dim": TINY_CONFIG.joint_dim * 2}
        train(TrainConfig(out_dir=str(tmp_path / "c"), epochs=1, init_from=str(tmp_path / "a" / "last.pt"),
                          **{**common, "model": bigger}), log=lambda _: None, progress=False)


def test_fine_tune_settings_given_explicitly_override_the_stage_defaults(manifest: Path) -> None:
    stage = TrainConfig.for_stage(str(manifest), None, "out", init_from="base.otam")
    assert (stage.warmup_steps, stage.qat_start) == (100, 0.0)
    mine = TrainConfig.for_stage(str(manifest), None, "out", init_from="base.otam", warmup_steps=20, epochs=2)
    assert (mine.warmup_steps, mine.qat_start, mine.epochs) == (20, 0.0, 2)


def test_bad_train_config_is_refused(manifest: Path) -> None:
    with pytest.raises(ConfigError, match="target_sparsity"):
        TrainConfig(str(manifest), target_sparsity=1.5)
    with pytest.raises(ConfigError, match="vtlp"):
        TrainConfig(str(manifest), vtlp=0.6)
    with pytest.raises(ConfigError, match="speed"):
        TrainConfig(str(manifest), speed=-0.1)
    with pytest.raises(ConfigError, match="unknown train config keys"):
        TrainConfig.from_json({"train_manifest": "x", "exec": "rm -rf"})
