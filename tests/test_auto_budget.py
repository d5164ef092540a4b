"""`ota diff train --budget auto`: a ladder of budgets scored on a held-out dev split."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from device_agent.manifest import Utterance, read_manifest, write_manifest
from device_agent.model_format import save_model
from diffing.diffs.auto_budget import split_dev
from tests.tiny import tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "base-v1.otam"
SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "validation.jsonl"
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    files = sorted(FSDD.glob("*_jackson_[0-1].wav")) + sorted(FSDD.glob("*_theo_[0-1].wav")) \
        + sorted(FSDD.glob("*_nicolas_0.wav"))
    utts = [Utterance(p, WORDS[int(p.name[0])], 0.5, p.name.split("_")[1]) for p in files]
    return write_manifest(tmp_path_factory.mktemp("data") / "adapt.jsonl", utts)


def test_dev_split_holds_out_whole_speakers(manifest: Path) -> None:
    utts = read_manifest(manifest)
    train, dev = split_dev(utts, 0.3, seed=0)
    assert len(train) + len(dev) == len(utts) and dev
    assert not {u.speaker for u in train} & {u.speaker for u in dev}
    anonymous = [Utterance(u.audio_path, u.text, u.duration) for u in utts]
    train, dev = split_dev(anonymous, 0.2, seed=0)
    assert len(dev) == round(0.2 * len(utts)) and len(train) + len(dev) == len(utts)


def test_auto_budget_ships_the_smallest_rung_within_the_gap(manifest: Path, tmp_path: Path) -> None:
    base = tiny_device_model()
    save_model(base, tmp_path / "base.otam")
    out = tmp_path / "v2.otab"
    result = CliRunner().invoke(cli, ["diff", "train", "--budget", "auto", "--ladder", "60%,25%,40%", "--max-gap", "0",
                                      "--base", str(tmp_path / "base.otam"), "--data", str(manifest), "--epochs", "1",
                                      "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    ladder = json.loads(lines[-1])["ladder"]
    # every rung is printed with its bytes and dev WER, smallest budget first, each within its budget
    assert [r["budget"] for r in ladder] == ["25%", "40%", "60%"]
    assert sum(line.startswith("budget ") and "dev WER" in line for line in lines) == 3
    file_bytes = (tmp_path / "base.otam").stat().st_size
    assert all(r["bytes"] <= float(r["budget"][:-1]) / 100 * file_bytes for r in ladder)
    best = min(r["dev_wer"] for r in ladder)
    chosen = next(r for r in ladder if r["dev_wer"] <= best)  # max gap 0: the smallest rung as good as the best
    assert out.stat().st_size == chosen["bytes"] == json.loads(lines[-1])["bytes"]
    assert sum("<- shipped" in line for line in lines) == 1


def test_auto_budget_with_a_dev_manifest_learns_from_all_the_data(tmp_path: Path) -> None:
    # the shipped model on real digits, its rungs scored on the sample commands
    files = sorted(FSDD.glob("*_jackson_[0-1].wav")) + sorted(FSDD.glob("*_lucas_[0-1].wav"))
    adapt = write_manifest(tmp_path / "adapt.jsonl",
                           [Utterance(p, WORDS[int(p.name[0])], 0.5, p.name.split("_")[1]) for p in files])
    common = ["--method", "hybrid", "--base", str(SHIPPED), "--data", str(adapt), "--epochs", "2", "--threads", "1"]
    auto = CliRunner().invoke(cli, ["diff", "train", *common, "--budget", "auto", "--ladder", "2%,3%",
                                    "--max-gap", "100", "--dev", str(SAMPLES), "--out", str(tmp_path / "auto.otab")])
    assert auto.exit_code == 0, auto.output
    shipped = json.loads(auto.output.strip().splitlines()[-1])
    assert [r["budget"] for r in shipped["ladder"]] == ["2%", "3%"]  # max gap 100: the smallest rung ships
    # what shipped is exactly what one run at that budget learns from all of --data (nothing held out)
    single = CliRunner().invoke(cli, ["diff", "train", *common, "--budget", "2%", "--out", str(tmp_path / "one.otab")])
    assert single.exit_code == 0, single.output
    assert json.loads(single.output.strip().splitlines()[-1])["target_hash"] == shipped["target_hash"]
    assert (tmp_path / "auto.otab").read_bytes() == (tmp_path / "one.otab").read_bytes()
    # without --dev, a speaker is held out and the same rung learns from less: another diff
    held = CliRunner().invoke(cli, ["diff", "train", *common, "--budget", "auto", "--ladder", "2%", "--out",
                                    str(tmp_path / "held.otab")])
    assert held.exit_code == 0, held.output
    assert json.loads(held.output.strip().splitlines()[-1])["target_hash"] != shipped["target_hash"]


def test_dev_without_an_automatic_budget_is_refused(manifest: Path, tmp_path: Path) -> None:
    base = tiny_device_model()
    save_model(base, tmp_path / "base.otam")
    out = tmp_path / "v2.otab"
    result = CliRunner().invoke(cli, ["diff", "train", "--budget", "40%", "--dev", str(manifest), "--base",
                                      str(tmp_path / "base.otam"), "--data", str(manifest), "--out", str(out)])
    assert result.exit_code == 4 and "--dev" in result.output and not out.exists()
