"""Manifest round trip, and every kind of bad line raises ManifestError naming file:line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.audio import save_wav
from device_agent.errors import ManifestError
from device_agent.manifest import Utterance, read_manifest, write_manifest
from device_agent.tokenizer import CharTokenizer


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "audio" / "a.wav"
    path.parent.mkdir()
    save_wav(path, np.zeros(1600, dtype=np.float32))
    return path


def _write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_round_trip_relative_and_absolute(tmp_path: Path, wav: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "b.wav"
    save_wav(outside, np.zeros(800, dtype=np.float32))
    utts = [
        Utterance(wav, "turn on the lights", 0.1, "espeak:en-us+m3"),
        Utterance(outside, "what's the weather", 0.05, None),
    ]
    path = write_manifest(tmp_path / "m.jsonl", utts)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert raw[0]["audio_filepath"] == "audio/a.wav"  # under the folder: relative
    assert Path(raw[1]["audio_filepath"]).is_absolute()  # outside: absolute
    assert "speaker" not in raw[1]
    back = read_manifest(path, CharTokenizer())
    assert [(u.audio_path.resolve(), u.text, u.duration, u.speaker) for u in back] == [
        (u.audio_path.resolve(), u.text, u.duration, u.speaker) for u in utts
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_text_is_normalized_and_blank_lines_skipped(tmp_path: Path, wav: Path) -> None:
    m = _write_lines(tmp_path / "m.jsonl", [
        {"audio_filepath": "audio/a.wav", "text": "  Turn ON   the Lights ", "duration": 0.1}, ""])
    (u,) = read_manifest(m)
    assert u.text == "turn on the lights" and u.speaker is None


GOOD = {"audio_filepath": "audio/a.wav", "text": "call mom", "duration": 0.1}


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "text"}, "missing key 'text'"),
        ({k: v for k, v in GOOD.items() if k != "duration"}, "missing key 'duration'"),
        ({k: v for k, v in GOOD.items() if k != "audio_filepath"}, "missing key 'audio_filepath'"),
        ({**GOOD, "text": "   "}, "empty text"),
        ({**GOOD, "text": "call mom at 5pm!"}, "['!', '5']"),
        ({**GOOD, "duration": 0}, "non-positive duration"),
        ({**GOOD, "duration": -1.5}, "non-positive duration"),
        ({**GOOD, "duration": "long"}, "'duration' must be a number"),
        ({**GOOD, "audio_filepath": "audio/missing.wav"}, "audio file not found"),
        ({**GOOD, "audio_filepath": "audio/junk.wav"}, "unreadable audio"),
        ({**GOOD, "speaker": 7}, "'speaker' must be a string"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, wav: Path, bad: object, expected: str) -> None:
    (wav.parent / "junk.wav").write_bytes(b"this is not a wav file")
    m = _write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(ManifestError) as info:
        read_manifest(m, CharTokenizer())
    msg = str(info.value)
    assert f"{m}:3:" in msg, msg
    assert expected in msg, msg


def test_oov_ignored_without_tokenizer_and_unreadable_ignored_without_check(tmp_path: Path, wav: Path) -> None:
    (wav.parent / "junk.wav").write_bytes(b"junk")
    m = _write_lines(tmp_path / "m.jsonl", [{**GOOD, "text": "call mom at 5"}, {**GOOD, "audio_filepath": "audio/junk.wav"}])
    assert len(read_manifest(m, tokenizer=None, check_audio=False)) == 2


def test_missing_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_cli_merge_keeps_audio_paths_valid(tmp_path: Path, wav: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    a = write_manifest(tmp_path / "a" / "m.jsonl", [Utterance(wav, "one", 0.5)])
    b = write_manifest(tmp_path / "b" / "m.jsonl", [Utterance(wav, "two", 0.5), Utterance(wav, "three", 0.5)])
    out = tmp_path / "c" / "merged.jsonl"
    result = CliRunner().invoke(cli, ["data", "merge", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    merged = read_manifest(out)
    assert [u.text for u in merged] == ["one", "two", "three"]
    assert all(u.audio_path.resolve() == wav.resolve() for u in merged)
