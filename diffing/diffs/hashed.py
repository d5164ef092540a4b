"""Hashed diffs (HashedNets style): each weight matrix's nonzero entries share
B trainable integer buckets, chosen with a sign by xxh64(seed, name, position).
Only bucket values, the seed and B are shipped; zeros stay zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import Diff, HashedDelta
from device_agent.errors import DiffError
from device_agent.hashing import buckets_and_signs
from diffing.diffs.api import DiffConfig, register
from diffing.diffs.channel import ChannelLayout, channel_layout
from diffing.diffs.int8_domain import Int8Twin, finish_diff, fit, load_adaptation_data, round_ste
from diffing.diffs.sizing import hashed_buckets_for_bytes, min_hashed_bytes, serialized_bytes, split_buckets


@dataclass
class HashedDiffConfig(DiffConfig):
    """Every entry of a weight matrix moves through a few shared, hashed buckets: bucket values ship, no positions."""

    lr: float = 1.0  # novel names, 2% of the model's bytes: lr 1.0 -> 32.1% WER (lr 0.3 learned far less)
    hash_seed: int = 0x5EED


# A byte budget is a promise: if the trained values spread wider than the sizing
# assumed, retrain with fewer buckets (buckets cannot be dropped after training,
# every entry uses one). Each retrain costs a full training run.
MAX_ATTEMPTS = 4
SHRINK_MARGIN = 0.97


def total_buckets(deployed: DeviceModel, budget: int, compact: bool = False) -> int:
    """Buckets that fit `budget` bytes, measured (a bucket compresses to under a byte) and sized for
    the wide end of trained spreads, since an all-hashed diff cannot be trimmed after training."""
    return hashed_buckets_for_bytes(deployed, budget, spread_with_sharing=True, compact=compact)


def bucket_counts(deployed: DeviceModel, buckets: int) -> dict[str, int]:
    """Split `buckets` across matrices in proportion to their nonzero entries."""
    return split_buckets({n: w.nnz for n, w in deployed.weights.items()}, buckets)


@register("hashed", HashedDiffConfig)
def learn_hashed(deployed: DeviceModel, train_manifest: str | Path, cfg: HashedDiffConfig, *,
                 replay_manifest: str | Path | None, target_version: int, progress: bool,
                 log: Callable[[str], None]) -> Diff:
    assert isinstance(cfg.budget, int), "learn_diff resolves the budget to bytes"
    channels = channel_layout(deployed, cfg)
    reserve = channels.reserve_bytes(deployed, cfg.compact) if channels is not None else 0
    # first: an unreachable budget fails before any work
    buckets = total_buckets(deployed, cfg.budget - reserve, cfg.compact)
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    # (buckets, bytes) of each attempt; the floor is one zero bucket per matrix
    tried = [(len([w for w in deployed.weights.values() if w.nnz]), min_hashed_bytes(deployed, compact=cfg.compact))]
    for _ in range(MAX_ATTEMPTS):
        diff = _train(deployed, bucket_counts(deployed, buckets), adapt, replay, cfg, target_version, log,
                      channel_layout(deployed, cfg))
        if (size := serialized_bytes(diff, deployed, cfg.compact)) <= cfg.budget:
            return diff
        tried.append((buckets, size))
        buckets = _buckets_for(cfg.budget * SHRINK_MARGIN, tried[-2], tried[-1])
        log(f"hashed diff is {size} bytes, over the {cfg.budget}-byte budget (its values spread wider than "
            f"the sizing assumed); retraining with {buckets} buckets")
    raise DiffError(f"hashed diff still takes {size} bytes after {MAX_ATTEMPTS} attempts, over the "
                    f"{cfg.budget}-byte budget; give a larger budget")


def _buckets_for(target_bytes: float, a: tuple[int, int], b: tuple[int, int]) -> int:
    """Secant through the last two (buckets, bytes) points; fewer buckets spread wider, so bytes are not linear."""
    slope = (b[1] - a[1]) / max(1, b[0] - a[0])
    guess = b[0] - (b[1] - target_bytes) / slope if slope > 0 else b[0] * target_bytes / b[1]
    return max(1, min(b[0] - 1, int(guess)))


class HashedLayout:
    """Which bucket and sign each nonzero entry of each hashed matrix uses; expands trainable
    bucket values into the dense delta the twin trains through (what the device's apply computes)."""

    def __init__(self, deployed: DeviceModel, counts: dict[str, int], seed: int) -> None:
        self.counts, self.shapes = counts, {n: deployed.weights[n].q.shape for n in counts}
        self.layout: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, b in counts.items():
            positions = np.flatnonzero(deployed.weights[name].q)
            bucket, sign = buckets_and_signs(positions, seed, name, b)
            self.layout[name] = (torch.from_numpy(positions), torch.from_numpy(bucket), torch.from_numpy(sign).float())
        self.values = {n: torch.zeros(b, requires_grad=True) for n, b in counts.items()}

    def delta(self, name: str) -> torch.Tensor | None:
        if name not in self.layout:
            return None
        positions, bucket, sign = self.layout[name]
        dense = torch.zeros(math.prod(self.shapes[name]))
        dense = dense.index_put((positions,), sign * round_ste(self.values[name])[bucket])
        return dense.view(self.shapes[name])

    @torch.no_grad()
    def deltas(self) -> dict[str, HashedDelta]:
        return {n: HashedDelta(self.counts[n], torch.clamp(torch.round(v), -QMAX, QMAX).to(torch.int8).numpy())
                for n, v in self.values.items()}


def _train(deployed: DeviceModel, counts: dict[str, int], adapt: list, replay: list, cfg: HashedDiffConfig,
           target_version: int, log: Callable[[str], None], channels: ChannelLayout | None) -> Diff:
    hashed = HashedLayout(deployed, counts, cfg.hash_seed)
    twin = Int8Twin(deployed, hashed.delta)
    params = list(hashed.values.values())
    if channels is not None:
        channels.attach(twin)
        params += channels.parameters()
    fit(twin, params, adapt, replay, cfg, log=log)
    log(f"hashed diff: {sum(counts.values())} buckets over {len(counts)} matrices")
    return finish_diff(deployed, "hashed", hashed.deltas(), target_version, seed=cfg.hash_seed,
                       channels=channels.deltas(deployed) if channels is not None else None)
