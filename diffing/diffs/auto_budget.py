"""Choosing a diff on a dev split: learn candidates, score each through the int8 runtime on utterances
the diffs did not learn from, ship one.

- The automatic budget learns at each rung of a ladder of budgets and ships the smallest whose dev
  WER is within `max_gap` points of the best rung: what a fleet operator wants, the smallest update
  that is good enough.
- `tries` learns each rung with that many training seeds (batch order, replay sample, augmentation)
  and keeps the seed with the best dev WER: on the five-update chain the seed alone moved single
  updates by up to 14 WER points (docs/diffs.md), so a second try is the cheapest guard against a
  bad draw. It costs one training run per seed and rung.
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, apply_diff
from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, read_manifest, write_manifest
from device_agent.runtime import Int8Runtime
from device_agent.wer import evaluate
from diffing.diffs.api import DiffConfig, budget_bytes, learn_diff, parse_budget
from diffing.diffs.sizing import serialized_bytes

DEFAULT_LADDER = ("1%", "2%", "3%", "5%", "10%")
DEV_SHARE = 0.2  # of the adaptation utterances (or speakers), held out to score the candidates
MAX_TRIES = 16


@dataclass
class Rung:
    budget: str
    budget_bytes: int
    bytes: int  # of the bundle kept at this rung
    dev_wer: float  # of the kept bundle: the best of its seeds
    diff: Diff
    seed: int = 0  # the training seed of the kept bundle
    seed_wers: dict[int, float] = field(default_factory=dict)  # dev WER of every seed tried


def split_dev(utts: list[Utterance], share: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(train, dev): whole speakers held out when the manifest names at least two (so the dev WER is
    that of voices the diff did not learn from), else a random `share` of the utterances."""
    rng = random.Random(seed)
    speakers = sorted({u.speaker for u in utts if u.speaker})
    if len(speakers) >= 2 and all(u.speaker for u in utts):
        held = set(rng.sample(speakers, max(1, round(share * len(speakers)))))
        train, dev = [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]
    else:
        order = list(range(len(utts)))
        rng.shuffle(order)
        cut = max(1, round(share * len(utts)))
        dev_ids = set(order[:cut])
        train, dev = [u for i, u in enumerate(utts) if i not in dev_ids], [utts[i] for i in sorted(dev_ids)]
    if not train or not dev:
        raise ConfigError(f"choosing a diff on a dev split needs adaptation data to hold one out from; "
                          f"got {len(utts)} utterances")
    return train, dev


def learn_auto_budget(deployed: DeviceModel, train_manifest: str | Path, config: DiffConfig, *, max_gap: float,
                      ladder: tuple[str | float | int, ...] = DEFAULT_LADDER, dev_share: float = DEV_SHARE,
                      replay_manifest: str | Path | None = None, tries: int = 1,
                      dev_manifest: str | Path | None = None, log: Callable[[str], None] | None = None
                      ) -> tuple[Diff, list[Rung]]:
    """-> (the diff of the smallest rung within `max_gap` WER points of the best rung, every rung).
    Each rung keeps the best of `tries` seeds (config.seed, config.seed + 1, ...). With `dev_manifest`
    the diffs learn from all of `train_manifest` and are scored on it; without, a dev split is held
    out of `train_manifest` (`split_dev`) and the diffs learn from the rest."""
    log = log or (lambda _: None)
    if not 0 <= max_gap <= 100 or not 0 < dev_share < 1 or not ladder:
        raise ConfigError(f"max_gap must be in [0, 100] points, dev_share in (0, 1) and the ladder non-empty; "
                          f"got {max_gap}, {dev_share}, {ladder}")
    if not 1 <= tries <= MAX_TRIES:
        raise ConfigError(f"tries must be 1 to {MAX_TRIES} training seeds per budget; got {tries}")
    rungs = sorted(((str(b), budget_bytes(deployed, parse_budget(b))) for b in ladder), key=lambda r: r[1])
    results: list[Rung] = []
    with tempfile.TemporaryDirectory(prefix="ota-dev-choice-") as tmp:
        train_path, dev = _train_and_dev(deployed, train_manifest, dev_manifest, dev_share, config.seed, Path(tmp))
        log(f"choosing on a dev split: {len(dev)} utterances score {len(rungs)} budget(s) x {tries} seed(s)")
        for label, limit in rungs:
            seed_wers: dict[int, float] = {}
            kept: tuple[float, int, Diff] | None = None
            for seed in range(config.seed, config.seed + tries):
                diff = learn_diff(deployed, train_path, replace(config, budget=limit, seed=seed),
                                  replay_manifest=replay_manifest, log=log)
                wer = evaluate(Int8Runtime(apply_diff(deployed, diff)).transcribe, dev).wer
                seed_wers[seed] = wer
                log(f"learned at {label}, seed {seed}: dev WER {100 * wer:.1f}%")
                if kept is None or wer < kept[0]:  # ties keep the lower seed
                    kept = (wer, seed, diff)
            wer, seed, diff = kept
            results.append(Rung(label, limit, serialized_bytes(diff, deployed), wer, diff, seed, seed_wers))
            log(f"kept at {label}: seed {seed}, {results[-1].bytes} bytes, dev WER {100 * wer:.1f}%")
    best = min(r.dev_wer for r in results)
    chosen = next(r for r in results if 100 * (r.dev_wer - best) <= max_gap)
    return chosen.diff, results


def learn_best_of(deployed: DeviceModel, train_manifest: str | Path, config: DiffConfig, *, tries: int,
                  dev_share: float = DEV_SHARE, replay_manifest: str | Path | None = None,
                  dev_manifest: str | Path | None = None, log: Callable[[str], None] | None = None
                  ) -> tuple[Diff, Rung]:
    """-> (the best on dev of `tries` diffs learned at `config.budget` with consecutive seeds, its record)."""
    diff, rungs = learn_auto_budget(deployed, train_manifest, config, max_gap=0.0, ladder=(config.budget,),
                                    dev_share=dev_share, replay_manifest=replay_manifest, tries=tries,
                                    dev_manifest=dev_manifest, log=log)
    return diff, rungs[0]


def _train_and_dev(deployed: DeviceModel, train_manifest: str | Path, dev_manifest: str | Path | None,
                   dev_share: float, seed: int, tmp: Path) -> tuple[Path, list[Utterance]]:
    """-> (the manifest the diffs learn from, the dev utterances that score them)."""
    if dev_manifest is not None:
        dev = read_manifest(dev_manifest, deployed.tokenizer)
        if not dev:
            raise ConfigError(f"dev manifest {dev_manifest} holds no utterances; expected held-out adaptation data")
        return Path(train_manifest), dev
    train, dev = split_dev(read_manifest(train_manifest, deployed.tokenizer), dev_share, seed)
    return write_manifest(tmp / "train.jsonl", train), dev
