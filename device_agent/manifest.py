"""NeMo-style JSONL manifests: the one data interface between corpus and model.

One JSON object per line: `audio_filepath` (relative paths resolve against
the manifest's folder), `text`, `duration` (seconds), optional `speaker`.
Runs on devices too, so it imports nothing from `diffing`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import soundfile as sf

from device_agent.atomic import write_atomic
from device_agent.errors import ManifestError
from device_agent.tokenizer import CharTokenizer, normalize_text

REQUIRED_KEYS = ("audio_filepath", "text", "duration")


@dataclass(frozen=True)
class Utterance:
    audio_path: Path
    text: str  # normalized (normalize_text)
    duration: float  # seconds, > 0
    speaker: str | None = None


def read_manifest(
    path: str | Path, tokenizer: CharTokenizer | None = None, check_audio: bool = True
) -> list[Utterance]:
    """Parse and validate a manifest; the first bad line raises ManifestError.

    Audio files must exist; `check_audio` also opens each header (cheap, but
    one file open per line), which catches truncated or non-audio files early.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path} (expected a JSONL file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc} (expected UTF-8 JSONL)") from exc
    folder = path.parent
    utterances = []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():  # blank lines (e.g. a trailing newline pair) carry nothing
            utterances.append(_parse_line(line, f"{path}:{lineno}", folder, tokenizer, check_audio))
    return utterances


def _parse_line(
    line: str, where: str, folder: Path, tokenizer: CharTokenizer | None, check_audio: bool
) -> Utterance:
    obj = _parse_object(line, where)  # 1) syntax and shape
    audio, text, duration, speaker = obj["audio_filepath"], obj["text"], obj["duration"], obj.get("speaker")
    text = _check_text(text, where, tokenizer)  # 2) values
    # bool is an int subclass; `true` is never a duration
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        raise ManifestError(f"{where}: 'duration' must be a number of seconds, got {duration!r:.80}")
    if duration <= 0:
        raise ManifestError(f"{where}: non-positive duration {duration}; expected seconds > 0")
    audio_path = _check_audio(audio, where, folder, check_audio)  # 3) the audio it points at
    return Utterance(audio_path=audio_path, text=text, duration=float(duration), speaker=speaker)


def _parse_object(line: str, where: str) -> dict:
    """One JSON object with the required keys, a non-empty audio path, a text and an optional speaker."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: invalid JSON ({exc.msg}); expected one JSON object per line") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise ManifestError(f"{where}: missing key {key!r}; expected keys {list(REQUIRED_KEYS)}")
    audio, text, speaker = obj["audio_filepath"], obj["text"], obj.get("speaker")
    if not isinstance(audio, str) or not audio:
        raise ManifestError(f"{where}: 'audio_filepath' must be a non-empty string, got {audio!r:.80}")
    if not isinstance(text, str):
        raise ManifestError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if speaker is not None and not isinstance(speaker, str):
        raise ManifestError(f"{where}: 'speaker' must be a string or absent, got {speaker!r:.80}")
    return obj


def _check_text(text: str, where: str, tokenizer: CharTokenizer | None) -> str:
    """The normalised transcript: non-empty, and within the tokenizer's alphabet if one is given."""
    text = normalize_text(text)
    if not text:
        raise ManifestError(f"{where}: empty text; expected a non-empty transcript")
    if tokenizer is not None:
        bad = tokenizer.unknown_chars(text)
        if bad:
            raise ManifestError(
                f"{where}: text {text!r:.80} has characters {sorted(bad)} outside the tokenizer "
                f"alphabet {tokenizer.symbols!r}"
            )
    return text


def _check_audio(audio: str, where: str, folder: Path, check_audio: bool) -> Path:
    """The audio file (relative paths from the manifest's folder); with `check_audio`, readable too."""
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = folder / audio_path
    if not audio_path.is_file():
        raise ManifestError(f"{where}: audio file not found: {audio_path}")
    if check_audio:
        try:
            sf.info(str(audio_path))
        except Exception as exc:  # soundfile raises several foreign types
            raise ManifestError(
                f"{where}: unreadable audio {audio_path}: {exc} (expected WAV, FLAC or OGG)"
            ) from None
    return audio_path


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> Path:
    """Write atomically (temp file + os.replace), so readers never see half a manifest.

    Audio under the manifest's folder is stored relative to it, so a corpus
    folder can be moved or copied as a whole.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_to_json(u, folder), ensure_ascii=False) + "\n" for u in utterances]
    write_atomic(path, "".join(lines).encode("utf-8"))
    return path


def _to_json(u: Utterance, folder: Path) -> dict:
    audio = Path(u.audio_path)
    try:
        rel = audio.resolve().relative_to(folder.resolve())
        audio_str = rel.as_posix()
    except ValueError:  # outside the manifest folder: keep it absolute
        audio_str = str(audio.resolve())
    obj: dict = {"audio_filepath": audio_str, "text": u.text, "duration": u.duration}
    if u.speaker is not None:
        obj["speaker"] = u.speaker
    return obj
