"""`ota distill`: a model with the level normaliser, taught by the same model with the old front end."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from device_agent.errors import ConfigError
from device_agent.features import FeatureConfig
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_config import LEVEL_KEYS
from device_agent.model_format import load_model, save_model
from diffing.data import batch_groups, load_examples
from diffing.distill import (DistillConfig, distill, encoder_gap, spoken_faster_or_slower, student_hearing,
                             student_of)
from diffing.export import export_model, float_model_from_device
from diffing.train import model_from_checkpoint
from tests.tiny import TINY_CONFIG, TINY_LEVEL_CONFIG, tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("distill")
    files = sorted(FSDD.glob("*_jackson_*.wav"))[:12]
    manifest = write_manifest(folder / "train.jsonl", [Utterance(p, WORDS[int(p.name[0])], 0.5, "jackson")
                                                       for p in files])
    teacher = folder / "teacher.otam"
    save_model(tiny_device_model(3, TINY_CONFIG), teacher)
    return teacher, manifest


def settings(setup: tuple[Path, Path], out: Path, **kw: object) -> DistillConfig:
    teacher, manifest = setup
    return DistillConfig(**{"teacher": str(teacher), "train_manifest": str(manifest), "out_dir": str(out),
                            "features": TINY_LEVEL_CONFIG.features, "epochs": 3, "lr": 3e-2, "warmup_steps": 2,
                            "max_frames": 120, "rooms": 0.5, **kw})


def test_student_nears_the_teacher_keeps_its_zeros_and_decoder(setup, tmp_path) -> None:
    cfg = settings(setup, tmp_path / "run")
    student_file = distill(cfg, log=lambda _: None, progress=False)
    teacher, student = load_model(cfg.teacher), load_model(student_file)
    assert student.config.features.level_norm and not teacher.config.features.level_norm
    assert student.config == TINY_LEVEL_CONFIG
    for name, w in teacher.weights.items():
        # the teacher's zeros stay zeros; the decoder side is the teacher's up to the int8 grid
        assert np.all(student.weights[name].q[w.q == 0] == 0), name
        if not name.startswith("encoder."):
            step = np.maximum(w.scale, student.weights[name].scale)[:, None]
            assert np.all(np.abs(student.weights[name].dequantize() - w.dequantize()) <= step), name
    assert any(not np.array_equal(student.weights[n].q, w.q) for n, w in teacher.weights.items()
               if n.startswith("encoder."))
    assert student.metadata["distilled_from"] == teacher.content_hash()
    # the checkpoint reads as a training checkpoint: its float model is what was exported
    float_model, _, _ = model_from_checkpoint(Path(cfg.out_dir) / "last.pt")
    assert export_model(float_model, teacher.tokenizer, teacher.model_id, teacher.version,
                        metadata=student.metadata).content_hash() == student.content_hash()

    # on the same clean batch, the trained student reproduces the teacher's encoder better than its start
    examples = load_examples(cfg.train_manifest, load_model(cfg.teacher).tokenizer, TINY_CONFIG.features,
                             progress=False)
    batch = [examples[i] for i in batch_groups(examples, 1000, TINY_CONFIG.features.stack)[0]]
    teacher_net = float_model_from_device(teacher)
    untrained = student_of(teacher_net, TINY_LEVEL_CONFIG.features, examples)
    trained = float_model_from_device(student)
    gap_before = encoder_gap(untrained, teacher_net, batch, TINY_CONFIG.features, None).item()
    gap_after = encoder_gap(trained, teacher_net, batch, TINY_CONFIG.features, None).item()
    assert gap_after < 0.8 * gap_before


def test_rerun_resumes_and_other_settings_are_refused(setup, tmp_path) -> None:
    out = tmp_path / "run"
    first = load_model(distill(settings(setup, out), log=lambda _: None, progress=False)).content_hash()
    lines: list[str] = []
    again = load_model(distill(settings(setup, out), log=lines.append, progress=False)).content_hash()
    assert again == first and any("resumed" in line for line in lines)
    assert load_model(distill(settings(setup, out, threads=2), log=lambda _: None,
                              progress=False)).content_hash() == first  # threads: how it runs, not what
    with pytest.raises(ConfigError, match="other settings"):
        distill(settings(setup, out, seed=1), log=lambda _: None, progress=False)


def test_hearing_is_seeded_and_changes_the_level(setup) -> None:
    cfg = settings(setup, Path("unused"))
    examples = load_examples(cfg.train_manifest, load_model(cfg.teacher).tokenizer, TINY_CONFIG.features,
                             progress=False)
    a = student_hearing(cfg, TINY_CONFIG.features, examples, random.Random(5))
    b = student_hearing(cfg, TINY_CONFIG.features, examples, random.Random(5))
    heard = [a(e.feats) for e in examples[:4]]
    assert all(np.array_equal(x.numpy(), b(e.feats).numpy()) for x, e in zip(heard, examples))
    assert all(x.shape == e.feats.shape and not np.allclose(x.numpy(), e.feats.float().numpy())
               for x, e in zip(heard, examples))


def test_speed_perturbation_is_seeded_and_shared(setup) -> None:
    cfg = settings(setup, Path("unused"), speed=0.2)
    examples = load_examples(cfg.train_manifest, load_model(cfg.teacher).tokenizer, TINY_CONFIG.features,
                             progress=False)[:6]
    a = spoken_faster_or_slower(examples, cfg, TINY_CONFIG.features, random.Random(1))
    b = spoken_faster_or_slower(examples, cfg, TINY_CONFIG.features, random.Random(1))
    assert [x.feats.shape for x in a] == [x.feats.shape for x in b]
    assert any(x.feats.shape[0] != e.feats.shape[0] for x, e in zip(a, examples))
    assert [x.text for x in a] == [e.text for e in examples]
    assert spoken_faster_or_slower(examples, settings(setup, Path("unused")), TINY_CONFIG.features,
                                   random.Random(1)) is examples
    with pytest.raises(ConfigError, match="speed"):
        settings(setup, Path("unused"), speed=0.5)


def test_cli_distills_and_a_student_of_another_shape_is_refused(setup, tmp_path) -> None:
    teacher, manifest = setup
    result = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher), "--train", str(manifest),
                                      "--out", str(tmp_path / "cli"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "cli" / "model.otam")
    assert model.config.features == replace(TINY_CONFIG.features, **{k: getattr(FeatureConfig(), k)
                                                                        for k in LEVEL_KEYS})
    with pytest.raises(ConfigError, match="only in its level normaliser"):  # e.g. the shipped 80 mels
        distill(settings(setup, tmp_path / "other", features=FeatureConfig()), log=lambda _: None, progress=False)
    assert not (tmp_path / "other" / "model.otam").exists()
    with pytest.raises(ConfigError, match="rooms"):
        DistillConfig(teacher=str(teacher), train_manifest=str(manifest), rooms=1.5)
