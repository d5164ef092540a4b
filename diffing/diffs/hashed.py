"""Hashed diffs (HashedNets style): each weight matrix's nonzero entries share
B trainable integer buckets, chosen with a sign by xxh64(seed, name, position).
Only bucket values, the seed and B are shipped; zeros stay zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import Diff, HashedDelta
from device_agent.hashing import buckets_and_signs
from diffing.diffs.api import DiffConfig, register
from diffing.diffs.int8_domain import Int8Twin, finish_diff, fit, load_adaptation_data, round_ste
from diffing.diffs.sizing import hashed_buckets_for_bytes, serialized_bytes


@dataclass
class HashedDiffConfig(DiffConfig):
    lr: float = 1.0  # novel names, 2% of the model's bytes: lr 1.0 -> 32.1% WER (lr 0.3 learned far less)
    hash_seed: int = 0x5EED


def bucket_counts(deployed: DeviceModel, budget: float | int) -> dict[str, int]:
    """Split the bucket budget across matrices in proportion to their nonzero entries."""
    total = sum(w.q.size for w in deployed.weights.values())
    nnz = {n: w.nnz for n, w in deployed.weights.items()}
    # a fraction budget counts entries; a byte budget is measured (a bucket compresses to well under a byte)
    buckets = budget * total if isinstance(budget, float) else hashed_buckets_for_bytes(deployed, budget)
    return {n: max(1, min(c, int(buckets * c / max(1, sum(nnz.values()))))) for n, c in nnz.items() if c}


@register("hashed", HashedDiffConfig)
def learn_hashed(deployed: DeviceModel, train_manifest: str | Path, cfg: HashedDiffConfig, *,
                 replay_manifest: str | Path | None, target_version: int, progress: bool,
                 log: Callable[[str], None]) -> Diff:
    counts = bucket_counts(deployed, cfg.budget)  # first: an unreachable budget fails before any work
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    layout = {}
    for name, b in counts.items():
        w = deployed.weights[name]
        positions = np.flatnonzero(w.q)
        bucket, sign = buckets_and_signs(positions, cfg.hash_seed, name, b)
        layout[name] = (torch.from_numpy(positions), torch.from_numpy(bucket), torch.from_numpy(sign).float(), w.q.size)
    values = {n: torch.zeros(b, requires_grad=True) for n, b in counts.items()}

    def delta(name: str) -> torch.Tensor | None:
        if name not in layout:
            return None
        positions, bucket, sign, numel = layout[name]
        dense = torch.zeros(numel)
        dense = dense.index_put((positions,), sign * round_ste(values[name])[bucket])
        return dense.view(deployed.weights[name].q.shape)

    twin = Int8Twin(deployed, delta)
    fit(twin, list(values.values()), adapt, replay, epochs=cfg.epochs, lr=cfg.lr, max_frames=cfg.max_frames,
        replay_ratio=cfg.replay_ratio, seed=cfg.seed, threads=cfg.threads, log=log)
    with torch.no_grad():
        deltas = {n: HashedDelta(counts[n], torch.clamp(torch.round(v), -QMAX, QMAX).to(torch.int8).numpy())
                  for n, v in values.items()}
    diff = finish_diff(deployed, "hashed", deltas, target_version, seed=cfg.hash_seed)
    log(f"hashed diff: {sum(counts.values())} buckets over {len(counts)} matrices")
    if isinstance(cfg.budget, int) and (size := serialized_bytes(diff, deployed)) > cfg.budget:
        # buckets cannot be dropped after training (every entry uses one); say so rather than hide it
        log(f"hashed diff is {size} bytes, over the {cfg.budget}-byte budget: its values spread wider than the sizing assumed")
    return diff
