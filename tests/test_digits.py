"""Digit manifests from the real FSDD folder: texts, splits, durations."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from device_agent.errors import ConfigError
from device_agent.manifest import read_manifest
from device_agent.tokenizer import CharTokenizer
from diffing.digits import DIGIT_WORDS, build_digit_manifests, scan_recordings

FSDD = Path(__file__).resolve().parent / "data" / "fsdd"  # shipped: see its README
TOK = CharTokenizer()


def test_scan_reads_speakers_from_names() -> None:
    recs = scan_recordings(FSDD)
    assert len(recs) == len(list((FSDD / "recordings").glob("*.wav"))) >= 100
    assert {"george", "jackson", "lucas", "nicolas"} <= {r.speaker for r in recs}
    assert all(re.fullmatch(rf"{r.digit}_{r.speaker}_{r.take}", r.path.stem) for r in recs)


def test_take_split_single_recordings(tmp_path: Path) -> None:
    manifests = build_digit_manifests(FSDD, tmp_path, n_strings=100, seed=1)
    for name, takes in (("train", range(5, 50)), ("test", range(0, 5))):
        utts = read_manifest(manifests[name], TOK)
        assert utts
        for u in utts:
            digit, speaker, take = re.fullmatch(r"(\d)_(.+)_(\d+)", u.audio_path.stem).groups()
            assert u.text == DIGIT_WORDS[int(digit)]  # text matches the source file name
            assert u.speaker == speaker and int(take) in takes and u.duration > 0
    info = sf.info(str(utts[0].audio_path))
    assert info.samplerate == 16000 and info.subtype == "PCM_16"


def test_speaker_disjoint_digit_strings(tmp_path: Path) -> None:
    manifests = build_digit_manifests(FSDD, tmp_path, concat=(1, 4), n_strings=60, seed=2, test_speakers=("george",))
    train = read_manifest(manifests["train"], TOK)
    test = read_manifest(manifests["test"], TOK)
    assert {u.speaker for u in test} == {"george"}
    assert "george" not in {u.speaker for u in train} and len({u.speaker for u in train}) >= 3
    lengths = set()
    for u in train + test:
        digits = u.audio_path.stem.rsplit("_", 1)[1]  # e.g. george_00003_417
        assert u.text == " ".join(DIGIT_WORDS[int(d)] for d in digits)
        assert u.audio_path.stem.startswith(u.speaker + "_") and u.duration > 0
        lengths.add(len(digits))
    assert lengths <= {1, 2, 3, 4} and len(lengths) > 1
    audio, rate = sf.read(str(test[0].audio_path), dtype="float32")
    assert rate == 16000 and np.sqrt(np.mean(audio**2)) > 0.005


def test_unknown_test_speaker_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nobody"):
        build_digit_manifests(FSDD, tmp_path, test_speakers=("nobody",))


def test_cli_digits(tmp_path: Path) -> None:
    from cli.main import cli as group
    result = CliRunner().invoke(group, ["data", "digits", str(FSDD), "--out", str(tmp_path), "--concat", "2-3",
                                        "--strings", "20", "--take-split", "0"])
    assert result.exit_code == 0, result.output
    assert "all: 20 utterances" in result.output
    assert read_manifest(tmp_path / "all.jsonl", TOK)
    bad = CliRunner().invoke(group, ["data", "digits", str(FSDD), "--out", str(tmp_path), "--concat", "4-2"])
    assert bad.exit_code == 2 and "LOW <= HIGH" in bad.output
