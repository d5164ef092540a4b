"""Manifests from real spoken-digit recordings laid out like FSDD.

Recordings are named `{digit}_{speaker}_{take}.wav` (in `recordings/` or the
folder itself). Speakers are read from the names: no speaker list is assumed.
Optionally joins several recordings of one speaker into digit strings
("four one seven") with short silences, so the real-speech test looks like
multi-word commands rather than isolated words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agent.audio import SAMPLE_RATE, load_audio, save_wav
from device_agent.errors import AudioError, ConfigError
from device_agent.manifest import Utterance, write_manifest

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Greedy middle group: a speaker name may itself contain underscores.
_NAME = re.compile(r"^(\d)_(.+)_(\d+)\.wav$")
PEAK = 0.99


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def word(self) -> str:
        return DIGIT_WORDS[self.digit]


def scan_recordings(fsdd_dir: str | Path) -> list[Recording]:
    """Every `{digit}_{speaker}_{take}.wav` under fsdd_dir/recordings (or fsdd_dir), sorted."""
    root = Path(fsdd_dir)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    recs = []
    for p in sorted(folder.glob("*.wav")):
        m = _NAME.match(p.name)
        if m:
            recs.append(Recording(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not recs:
        raise AudioError(f"no recordings named {{digit}}_{{speaker}}_{{take}}.wav in {folder}")
    return recs


def split_recordings(
    recs: list[Recording], test_speakers: tuple[str, ...] | None, take_split: int | None
) -> dict[str, list[Recording]]:
    """Speaker-disjoint split if test speakers are given, else the take split, else one 'all' part."""
    if test_speakers:
        known = {r.speaker for r in recs}
        unknown = set(test_speakers) - known
        if unknown:
            raise ConfigError(f"test speakers {sorted(unknown)} have no recordings; speakers here: {sorted(known)}")
        return {"train": [r for r in recs if r.speaker not in test_speakers],
                "test": [r for r in recs if r.speaker in test_speakers]}
    if take_split is not None:
        # FSDD's own convention: takes 0-4 are test.
        return {"train": [r for r in recs if r.take >= take_split], "test": [r for r in recs if r.take < take_split]}
    return {"all": list(recs)}


def group_strings(
    recs: list[Recording], concat: tuple[int, int], n: int | None, rng: np.random.Generator
) -> list[list[Recording]]:
    """Group one speaker's recordings into strings of concat[0]..concat[1] digits.

    Each pass shuffles every speaker's recordings and cuts them into strings,
    so one pass uses every recording once; more passes run until `n` strings.
    """
    lo, hi = concat
    by_speaker: dict[str, list[Recording]] = {}
    for r in recs:
        by_speaker.setdefault(r.speaker, []).append(r)
    strings: list[list[Recording]] = []
    while True:
        for speaker in sorted(by_speaker):
            pool = [by_speaker[speaker][i] for i in rng.permutation(len(by_speaker[speaker]))]
            while pool:
                k = int(rng.integers(lo, hi + 1))
                strings.append(pool[:k])
                pool = pool[k:]
        if n is None or len(strings) >= n:
            break
    order = rng.permutation(len(strings))
    strings = [strings[i] for i in order]
    return strings if n is None else strings[:n]


def build_digit_manifests(
    fsdd_dir: str | Path,
    out_dir: str | Path,
    *,
    concat: tuple[int, int] = (1, 1),
    n_strings: int | None = None,
    seed: int = 0,
    test_speakers: tuple[str, ...] | None = None,
    take_split: int | None = 5,
    silence: tuple[float, float] = (0.1, 0.3),
) -> dict[str, Path]:
    """Write 16 kHz WAVs and one manifest per part (train/test, or all).

    `n_strings` is the total over all parts, shared in proportion to their
    recordings; None means one pass (every recording used exactly once).
    """
    lo, hi = concat
    if not 1 <= lo <= hi:
        raise ConfigError(f"concat must be (low, high) with 1 <= low <= high, got {concat}")
    if n_strings is not None and n_strings < 1:
        raise ConfigError(f"n_strings must be positive or None, got {n_strings}")
    out_dir = Path(out_dir)
    recs = scan_recordings(fsdd_dir)
    parts = split_recordings(recs, test_speakers, take_split)
    rng = np.random.default_rng(seed)
    cache: dict[Path, np.ndarray] = {}
    manifests = {}
    for name, part_recs in parts.items():
        n = None if n_strings is None else max(1, round(n_strings * len(part_recs) / len(recs)))
        folder = out_dir / "audio" / name
        folder.mkdir(parents=True, exist_ok=True)
        utts = []
        for i, string in enumerate(group_strings(part_recs, concat, n, rng)):
            audio = _join(string, rng, silence, cache)
            # Single words keep their source name (traceable); strings carry their digits.
            stem = string[0].path.stem if hi == 1 else (
                f"{string[0].speaker}_{i:05d}_" + "".join(str(r.digit) for r in string))
            path = folder / f"{stem}.wav"
            save_wav(path, audio)
            utts.append(Utterance(path, " ".join(r.word for r in string), len(audio) / SAMPLE_RATE, string[0].speaker))
        manifests[name] = write_manifest(out_dir / f"{name}.jsonl", utts)
    return manifests


def _join(
    string: list[Recording], rng: np.random.Generator, silence: tuple[float, float], cache: dict[Path, np.ndarray]
) -> np.ndarray:
    pieces = []
    for j, r in enumerate(string):
        if r.path not in cache:
            cache[r.path] = load_audio(r.path)
        if j:
            pieces.append(np.zeros(int(rng.uniform(*silence) * SAMPLE_RATE), dtype=np.float32))
        pieces.append(cache[r.path])
    audio = np.concatenate(pieces)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return audio * np.float32(PEAK / peak) if peak > PEAK else audio  # resampling can overshoot
