"""Base training: pruning reaches the target, QAT export, resumable checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_format import load_model
from diffing.compression import CompressionState, cubic_schedule, fake_quant_per_channel, magnitude_mask
from diffing.train import TrainConfig, train
from tests.tiny import TINY_CONFIG

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
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
                                          **common), log=logs.append, progress=False))
    assert any("initialised from" in line and "50.0% zeros" in line for line in logs)
    assert second.weight_sparsity() >= 0.7 - 1e-3
    for name, w in first.weights.items():  # a pruned weight is never revived
        assert not second.weights[name].q[w.q == 0].any()
    with pytest.raises(ConfigError, match="different model config"):
        bigger = TINY_CONFIG.to_json() | {"joint_dim": TINY_CONFIG.joint_dim * 2}
        train(TrainConfig(out_dir=str(tmp_path / "c"), epochs=1, init_from=str(tmp_path / "a" / "last.pt"),
                          **{**common, "model": bigger}), log=lambda _: None, progress=False)


def test_bad_train_config_is_refused(manifest: Path) -> None:
    with pytest.raises(ConfigError, match="target_sparsity"):
        TrainConfig(str(manifest), target_sparsity=1.5)
    with pytest.raises(ConfigError, match="unknown train config keys"):
        TrainConfig.from_json({"train_manifest": "x", "exec": "rm -rf"})
