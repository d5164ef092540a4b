"""How many entries (or buckets) fit a byte budget, measured with the real bundle encoder.

Bytes per entry fall as a diff gets denser (position gaps shrink) and the
bundle's fixed overhead weighs less, so a constant guess under- or over-fills
budgets. These functions encode synthetic diffs of the candidate size, with
small deltas like trained ones, and iterate to a fixed point.
"""
from __future__ import annotations

from typing import Callable, Collection

import numpy as np

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import Diff, HashedDelta, SparseDelta, TensorDelta
from device_agent.errors import ConfigError

# Spread of trained values, measured on novel-names diffs: sparse entries are mostly +-1..3;
# hashed buckets sum the pull of thousands of entries and spread much wider (~0.76 B/bucket).
SPARSE_STD = 2.0
HASHED_STD = 16.0
# How a hashed diff's bucket spread grows with the entries that share a bucket, measured on the
# stage-5 chain's 15 hashed diffs (docs/diffs.md): std 12.8-14.0 at 12 entries per bucket (5% of
# the model's bytes), 15.2-16.6 at 32 (2%), 16.8-18.4 at 78 (1%).
HASHED_STD_AT, HASHED_STD_SLOPE, HASHED_STD_HEADROOM = 32, 0.15, 1.05
START_GUESS = 1.7  # bytes per entry at ~1% density, the starting point of the iteration


def _typical_values(rng: np.random.Generator, n: int, std: float, nonzero: bool) -> np.ndarray:
    v = np.clip(np.round(rng.normal(0.0, std, n)), -QMAX, QMAX).astype(np.int8)
    if nonzero:
        v[v == 0] = np.where(rng.random(int((v == 0).sum())) < 0.5, -1, 1)
    return v


def hashed_value_std(entries_per_bucket: float) -> float:
    """The bucket spread to size an all-hashed diff for: the top of the measured range, because a
    hashed diff over its byte budget costs a second training run (1% of the bytes, sized at a flat
    std of 16: 3 of 5 chain updates retrained)."""
    return HASHED_STD * (entries_per_bucket / HASHED_STD_AT) ** HASHED_STD_SLOPE * HASHED_STD_HEADROOM


def serialized_bytes(diff: Diff, base: DeviceModel, compact: bool = False) -> int:
    """Bytes of the bundle that would ship `diff` (`compact`: format version 3, manifest compressed)."""
    from packager.bundle import encode_diff_bundle  # server side: the packager is available

    return len(encode_diff_bundle(diff, base, compact=compact))


def _encoded_size(deployed: DeviceModel, deltas: dict[str, TensorDelta], compact: bool = False, seed: int = 0) -> int:
    h = deployed.content_hash()
    return serialized_bytes(Diff("probe", deployed.model_id, deployed.version, deployed.version + 1, h, h, deltas, seed),
                            deployed, compact)


def check_budget_reachable(deployed: DeviceModel, budget_bytes: int, compact: bool = False) -> None:
    """ConfigError, before any training, if a bundle of one changed entry already exceeds the budget."""
    name = next(iter(deployed.weights))
    smallest = _encoded_size(deployed, {name: SparseDelta(np.array([0]), np.array([1], dtype=np.int8))}, compact)
    if smallest > budget_bytes:
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot be met: a diff bundle for this model takes "
                          f"{smallest} bytes with a single changed entry (manifest, hashes, signatures' inputs)")


def _fixed_point(budget_bytes: int, limit: int, size_of: Callable[[int], tuple[int, int]], rounds: int = 3) -> int:
    """size_of(k) -> (encoded bytes, entries actually placed); returns the k that fills the budget."""
    per_entry = START_GUESS
    k = 1
    for _ in range(rounds):
        k = int(min(limit, max(16, budget_bytes / per_entry)))
        size, placed = size_of(k)
        per_entry = size / max(1, placed)
    return max(1, min(limit, int(budget_bytes / per_entry)))


def sparse_entries_for_bytes(deployed: DeviceModel, budget_bytes: int, value_step: int = 1,
                             compact: bool = False) -> int:
    """Entries of a sparse diff (uniform positions over all matrices) that fit `budget_bytes`, with
    values on multiples of `value_step`."""
    check_budget_reachable(deployed, budget_bytes, compact)
    rng = np.random.default_rng(0)
    names = list(deployed.weights)
    sizes = np.array([deployed.weights[n].q.size for n in names])

    def size_of(k: int) -> tuple[int, int]:
        deltas: dict[str, TensorDelta] = {}
        for name, size, count in zip(names, sizes, rng.multinomial(k, sizes / sizes.sum())):
            if count:
                positions = np.sort(rng.choice(size, size=min(count, size), replace=False))
                steps = _typical_values(rng, positions.size, SPARSE_STD / value_step, nonzero=True).astype(np.int16)
                deltas[name] = SparseDelta(positions, np.clip(steps * value_step, -QMAX, QMAX).astype(np.int8))
        return _encoded_size(deployed, deltas, compact), sum(d.values.size for d in deltas.values())

    return _fixed_point(budget_bytes, int(sizes.sum()), size_of)


def largest_prefix_within(budget_bytes: int, limit: int, size_of: Callable[[int], int]) -> int:
    """The largest k in [1, limit] with size_of(k) <= budget_bytes (size_of non-decreasing), by bisection."""
    lo, hi = 1, limit
    if size_of(hi) <= budget_bytes:
        return hi
    while hi - lo > max(1, limit // 200):  # 0.5% resolution: a dozen encodes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size_of(mid) <= budget_bytes else (lo, mid)
    return lo


def split_buckets(nnz: dict[str, int], buckets: int) -> dict[str, int]:
    """`buckets` split across matrices in proportion to their nonzero entries (at least 1, at most
    one per entry); matrices without nonzero entries get none."""
    total = sum(nnz.values())
    return {n: max(1, min(c, int(buckets * c / total))) for n, c in nnz.items() if c}


def min_hashed_bytes(deployed: DeviceModel, names: Collection[str] | None = None, compact: bool = False) -> int:
    """A hashed diff always covers every matrix (or every one of `names`): one bucket each is its floor."""
    return _encoded_size(deployed, {n: HashedDelta(1, np.zeros(1, dtype=np.int8)) for n, w in deployed.weights.items()
                                    if w.nnz and (names is None or n in names)}, compact)


def hashed_buckets_for_bytes(deployed: DeviceModel, budget_bytes: int, names: Collection[str] | None = None, *,
                             spread_with_sharing: bool = False, compact: bool = False) -> int:
    """Total buckets of a hashed diff over all matrices (or `names`), split by nonzero count, that fit
    `budget_bytes`. Bucket values are assumed to spread like HASHED_STD, or, with `spread_with_sharing`,
    like `hashed_value_std` of the entries per bucket (for diffs that cannot be trimmed after training)."""
    check_budget_reachable(deployed, budget_bytes, compact)
    rng = np.random.default_rng(0)
    nnz = {n: w.nnz for n, w in deployed.weights.items() if w.nnz and (names is None or n in names)}
    total = sum(nnz.values())

    def size_of(k: int) -> tuple[int, int]:
        counts = split_buckets(nnz, k)
        std = hashed_value_std(total / k) if spread_with_sharing else HASHED_STD
        deltas: dict[str, TensorDelta] = {n: HashedDelta(b, _typical_values(rng, b, std, nonzero=False))
                                          for n, b in counts.items()}
        return _encoded_size(deployed, deltas, compact), sum(counts.values())

    smallest = min_hashed_bytes(deployed, nnz, compact)
    if smallest > budget_bytes:
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot be met by a hashed diff: one bucket for each of "
                          f"its {len(nnz)} matrices already takes {smallest} bytes")

    return _fixed_point(budget_bytes, total, size_of)
