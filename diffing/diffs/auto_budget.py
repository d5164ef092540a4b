"""The automatic budget: learn a diff at each rung of a ladder of budgets, score each on a dev
split, and ship the smallest whose dev WER is within `max_gap` points of the best rung. What a
fleet operator wants: the smallest update that is good enough. The dev split is a manifest the
operator keeps, or else one held out of the adaptation data (which then teaches the diffs less).
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, replace
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
DEV_SHARE = 0.2  # of the adaptation utterances (or speakers), held out to score the rungs


@dataclass
class Rung:
    budget: str
    budget_bytes: int
    bytes: int  # of the bundle learned at this rung
    dev_wer: float
    diff: Diff


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
        raise ConfigError(f"an automatic budget without a dev manifest holds a dev split out of the adaptation "
                          f"data; got {len(utts)} utterances, too few to split")
    return train, dev


def learn_auto_budget(deployed: DeviceModel, train_manifest: str | Path, config: DiffConfig, *, max_gap: float,
                      ladder: tuple[str, ...] = DEFAULT_LADDER, dev_share: float = DEV_SHARE,
                      replay_manifest: str | Path | None = None, dev_manifest: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> tuple[Diff, list[Rung]]:
    """-> (the diff of the smallest rung within `max_gap` WER points of the best rung, every rung).
    With `dev_manifest` the diffs learn from all of `train_manifest` and are scored on it; without,
    a dev split is held out of `train_manifest` (`split_dev`) and the diffs learn from the rest."""
    log = log or (lambda _: None)
    if not 0 <= max_gap <= 100 or not 0 < dev_share < 1 or not ladder:
        raise ConfigError(f"max_gap must be in [0, 100] points, dev_share in (0, 1) and the ladder non-empty; "
                          f"got {max_gap}, {dev_share}, {ladder}")
    rungs = sorted(((str(b), budget_bytes(deployed, parse_budget(b))) for b in ladder), key=lambda r: r[1])
    results: list[Rung] = []
    with tempfile.TemporaryDirectory(prefix="ota-auto-budget-") as tmp:
        train_path, dev = _train_and_dev(deployed, train_manifest, dev_manifest, dev_share, config.seed, Path(tmp))
        log(f"automatic budget: {len(dev)} dev utterances score {len(rungs)} budgets")
        for label, limit in rungs:
            diff = learn_diff(deployed, train_path, replace(config, budget=limit), replay_manifest=replay_manifest,
                              log=log)
            wer = evaluate(Int8Runtime(apply_diff(deployed, diff)).transcribe, dev).wer
            results.append(Rung(label, limit, serialized_bytes(diff, deployed, config.compact), wer, diff))
            log(f"learned at {label}: {results[-1].bytes} bytes, dev WER {100 * wer:.1f}%")
    best = min(r.dev_wer for r in results)
    chosen = next(r for r in results if 100 * (r.dev_wer - best) <= max_gap)
    return chosen.diff, results


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
