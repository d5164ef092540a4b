"""Build synthetic corpora: grammar text x voices -> 16-bit 16 kHz WAVs + manifests.

Layout of `out_dir`:
    train.jsonl / test.jsonl (or adapt.jsonl / test.jsonl for update sets)
    audio/{part}/{part}_{index:06d}.wav
    meta.json   what was built, from what seed, how long it took
Everything is a function of (seed, split, part, index), so a rebuild with the
same arguments gives the same text, voices, prosody and augmentation.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from device_agent.atomic import write_atomic
from device_agent.audio import SAMPLE_RATE, save_wav
from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, write_manifest
from diffing.synth.augment import PEAK, augment
from diffing.synth.grammar import SPLITS, sample_commands
from diffing.synth.voices import (DEFAULT_NATURAL_SHARE, NATURAL_SHARE, VOICE_SETS, Prosody, Voice, pick_voice,
                                  render, sample_prosody, voice_set)

UPDATE_KINDS = ("novel_names", "novel_places", "novel_accent", "novel_intent")


@dataclass(frozen=True)
class Part:
    """One manifest of a corpus: how many utterances, from which voices, augmented or not."""

    name: str
    n: int
    voices: str
    augment: bool


@dataclass(frozen=True)
class Job:
    path: Path
    text: str
    voice: Voice
    prosody: Prosody
    aug_seed: tuple[int, ...] | None


def build_corpus(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    split: str = "base",
    voices: tuple[str, str] = ("train", "test"),
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Write train.jsonl (augmented, `voices[0]`) and test.jsonl (clean, `voices[1]`)."""
    parts = [Part("train", n_train, voices[0], True), Part("test", n_test, voices[1], False)]
    return _build(Path(out_dir), parts, split, seed, workers, progress)


def build_update_set(
    out_dir: str | Path,
    kind: str,
    n_adapt: int = 600,
    n_test: int = 200,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Write adapt.jsonl / test.jsonl for a held-out update.

    novel_names / novel_places / novel_intent: new text, known kinds of voices
    (train voices to adapt, test voices to test). novel_accent: base text
    spoken by the held-out accents.
    """
    if kind not in UPDATE_KINDS:
        raise ConfigError(f"unknown update kind {kind!r}; expected one of {UPDATE_KINDS}")
    adapt_voices, test_voices = (
        ("novel_accent_adapt", "novel_accent_test") if kind == "novel_accent" else ("train", "test")
    )
    parts = [Part("adapt", n_adapt, adapt_voices, True), Part("test", n_test, test_voices, False)]
    return _build(Path(out_dir), parts, kind, seed, workers, progress)


def _derive(*keys: object) -> int:
    """A 64-bit seed from any keys; stable across processes (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "big")


def plan(out_dir: Path, part: Part, split: str, seed: int) -> list[Job]:
    """Decide text, voice, prosody and augmentation seed of every utterance of a part."""
    part_seed = _derive(seed, split, part.name)
    texts = sample_commands(part.n, part_seed, split)
    pool = voice_set(part.voices)
    jobs = []
    for i, text in enumerate(texts):
        rng = np.random.default_rng([part_seed, i])
        voice = pick_voice(pool, rng, NATURAL_SHARE.get(part.voices, DEFAULT_NATURAL_SHARE))
        prosody = sample_prosody(rng)
        aug_seed = (part_seed, i, 1) if part.augment else None
        jobs.append(Job(out_dir / "audio" / part.name / f"{part.name}_{i:06d}.wav", text, voice, prosody, aug_seed))
    return jobs


def render_job(job: Job) -> Utterance:
    """Render, augment, write one WAV (atomically); runs in a worker process."""
    audio = render(job.text, job.voice, job.prosody)
    if job.aug_seed is not None:
        audio = augment(audio, job.aug_seed)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > PEAK:  # some espeak variants overshoot full scale
        audio = audio * np.float32(PEAK / peak)
    save_wav(job.path, audio)  # atomic
    return Utterance(job.path, job.text, len(audio) / SAMPLE_RATE, job.voice.id)


def _build(out_dir: Path, parts: list[Part], split: str, seed: int, workers: int, progress: bool) -> dict[str, Path]:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    for part in parts:
        if part.n < 0 or part.voices not in VOICE_SETS:
            raise ConfigError(f"bad part {part}: n must be >= 0 and voices one of {VOICE_SETS}")
    start = time.perf_counter()
    plans = {p.name: plan(out_dir, p, split, seed) for p in parts}
    for p in parts:
        (out_dir / "audio" / p.name).mkdir(parents=True, exist_ok=True)
    results = _run([job for p in parts for job in plans[p.name]], workers, progress)

    manifests, meta_parts = {}, {}
    for p in parts:
        utts = [results[job.path] for job in plans[p.name]]
        manifests[p.name] = write_manifest(out_dir / f"{p.name}.jsonl", utts)
        meta_parts[p.name] = {
            "utterances": len(utts),
            "hours": sum(u.duration for u in utts) / 3600,
            "voice_set": p.voices,
            "voices_used": len({u.speaker for u in utts}),
            "augmented": p.augment,
            "distinct_words": len({w for u in utts for w in u.text.split()}),
        }
    meta = {"split": split, "seed": seed, "workers": workers, "parts": meta_parts,
            "wall_seconds": time.perf_counter() - start}
    write_atomic(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return manifests


def _run(jobs: list[Job], workers: int, progress: bool) -> dict[Path, Utterance]:
    """Render jobs, in a process pool when workers > 1, with a progress bar."""
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    results: dict[Path, Utterance] = {}
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("synth", total=len(jobs))
        if workers <= 1:
            for job in jobs:
                results[job.path] = render_job(job)
                bar.advance(task)
        else:
            # spawn: workers start clean, no inherited threads or locks
            with mp.get_context("spawn").Pool(workers) as pool:
                for utt in pool.imap_unordered(render_job, jobs, chunksize=8):
                    results[utt.audio_path] = utt
                    bar.advance(task)
    return results
