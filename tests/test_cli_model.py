"""`ota transcribe` and `ota model inspect` through click's runner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.exit_codes import code_for_error
from cli.main import cli
from device_agent.errors import AudioError, ModelFormatError
from device_agent.model_format import save_model
from tests.tiny import tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.otam"
    save_model(tiny_device_model(), path)
    return path


def test_transcribe_json(model_file: Path) -> None:
    wav = FSDD / "3_nicolas_0.wav"
    result = CliRunner().invoke(cli, ["transcribe", str(wav), "--model", str(model_file), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["audio"] == str(wav)
    assert isinstance(record["text"], str)
    assert record["model_hash"] == tiny_device_model().content_hash()
    assert 0.2 < record["seconds"] < 2.0


def test_inspect_reports_sparsity_and_hash(model_file: Path) -> None:
    result = CliRunner().invoke(cli, ["model", "inspect", str(model_file), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["content_hash"] == tiny_device_model().content_hash()
    assert 0.4 < info["weight_sparsity"] < 0.6
    assert {t["coding"] for t in info["tensors"]} <= {"bitmask", "index", "dense"}
    table = CliRunner().invoke(cli, ["model", "inspect", str(model_file)])
    assert table.exit_code == 0 and "encoder.weight_ih_l0" in table.output


def test_corrupt_model_is_one_line_error_with_its_exit_code(model_file: Path) -> None:
    model_file.write_bytes(b"garbage" * 10)
    result = CliRunner().invoke(cli, ["model", "inspect", str(model_file)])
    assert result.exit_code == code_for_error(ModelFormatError(""))
    assert "bad magic" in result.output and len(result.output.strip().splitlines()) == 1


def test_unreadable_audio_is_one_line_error(model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF not really audio")
    result = CliRunner().invoke(cli, ["transcribe", str(bad), "--model", str(model_file)])
    assert result.exit_code == code_for_error(AudioError("")), result.output
    assert str(bad) in result.output and len(result.output.strip().splitlines()) == 1


def test_every_command_has_help_with_an_example() -> None:
    def walk(group, path):
        for name, command in group.commands.items():
            yield path + [name], command
            if hasattr(command, "commands"):
                yield from walk(command, path + [name])

    for path, command in walk(cli, []):
        result = CliRunner().invoke(cli, path + ["--help"])
        assert result.exit_code == 0, path
        if not hasattr(command, "commands"):
            assert "Example" in result.output, f"`ota {' '.join(path)} --help` has no example"


def test_diff_train_apply_inspect_hybrid(model_file: Path, tmp_path: Path) -> None:
    from device_agent.manifest import Utterance, write_manifest
    from device_agent.model_format import load_model

    words = "zero one two three four five six seven eight nine".split()
    data = write_manifest(tmp_path / "adapt.jsonl", [Utterance(p, words[int(p.name[0])], 0.5, "jackson")
                                                     for p in sorted(FSDD.glob("*_jackson_0.wav"))])
    out = tmp_path / "v2.otab"
    trained = CliRunner().invoke(cli, ["diff", "train", "--method", "hybrid", "--budget", "2500B", "--base",
                                       str(model_file), "--data", str(data), "--epochs", "1", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    record = json.loads(trained.output.strip().splitlines()[-1])
    assert record["bytes"] == out.stat().st_size <= 2500
    info = CliRunner().invoke(cli, ["diff", "inspect", str(out)])
    assert info.exit_code == 0 and "hybrid" in info.output and "hashed" in info.output, info.output
    applied = CliRunner().invoke(cli, ["diff", "apply", str(out), "--base", str(model_file),
                                       "--out", str(tmp_path / "v2.otam")])
    assert applied.exit_code == 0, applied.output
    assert load_model(tmp_path / "v2.otam").content_hash() == record["target_hash"]
