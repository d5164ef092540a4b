"""Sparse-mask diffs: a trainable integer delta per weight matrix whose number
of nonzero entries is pruned on a cubic schedule down to the budget.

Pruned zeros of the base may become nonzero (a diff may revive a weight), so
a diff with k entries moves the model's zero count by at most k: a 1% diff
keeps a 60%-sparse model within 59-61% zeros.

The hybrid method is the same learner with a hashed delta (zeros stay zero)
over some matrices, trained jointly with the sparse entries over the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xxhash

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import ChannelDeltas, Diff, HashedDelta
from device_agent.errors import ConfigError, DiffError
from diffing.compression import cubic_schedule
from diffing.diffs.api import DiffConfig, register
from diffing.diffs.channel import channel_layout
from diffing.diffs.hashed import HashedLayout
from diffing.diffs.int8_domain import (Int8Twin, finish_diff, fit, load_adaptation_data, round_ste,
                                       sparse_deltas_from_dense, split_flat, top_k_entries)
from diffing.diffs.sizing import (hashed_buckets_for_bytes, largest_prefix_within, min_hashed_bytes,
                                  serialized_bytes, sparse_entries_for_bytes, split_buckets)

# For a byte budget the schedule prunes towards OVERSHOOT x the sizing estimate, then the
# final prune keeps as many top-ranked entries as actually encode within FILL x the budget.
# Why: trained diffs cluster in a few matrices (joint output, predictor), so they encode
# smaller than the uniform-position estimate, which left ~12% of the budget unused.
OVERSHOOT = 1.3
FILL = 0.96


@dataclass
class SparseMaskDiffConfig(DiffConfig):
    """Pruned integer deltas: the entries that matter most, with their positions, within the budget."""

    # Measured on a novel-names update at 2% of the model's bytes, 6 epochs (docs/diffs.md):
    # a short dense phase finds which entries matter, a quick prune to the budget, then
    # most of training fine-tunes the survivors with a large step (lr 0.5 -> 1.0: 45.1% -> 38.3% WER).
    epochs: int = 6
    lr: float = 1.0
    prune_start: float = 0.15  # fraction of steps: dense until here ...
    prune_end: float = 0.3  # ... budget reached here, then fine-tuned with a fixed mask
    prune_every: int = 10  # steps between mask updates
    # Which entries survive: "obd" ranks by the loss increase of dropping an entry,
    # 1/2 * F * delta^2 with Adam's running mean of squared gradients as the Fisher
    # diagonal F (Optimal Brain Damage); "magnitude" by |delta| * scale. Adam moves
    # every coordinate at about the same rate, so magnitude alone says little.
    score: str = "obd"
    # Entries' values are trained as multiples of this step (straight-through rounding to it): the
    # bundle's zstd stage then codes each value in fewer bits and the same bytes carry more entries.
    value_step: int = 1
    # Experimental, measuring only ("masks from a shipped seed"): at the final selection, replace the
    # OBD mask by per-matrix positions drawn from a seeded RNG the device could replay, with as many
    # entries as fill FILL x the budget when positions cost nothing; the returned diff keeps the real
    # bundle format (positions included), so it is over budget: an upper bound, not a shippable diff.
    seed_mask: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_step not in (1, 2, 4, 8):
            raise ConfigError(f"value_step must be 1, 2, 4 or 8, got {self.value_step}")
        if not 0 <= self.prune_start <= self.prune_end <= 1:
            raise ConfigError(f"need 0 <= prune_start <= prune_end <= 1, got {self.prune_start}, {self.prune_end}")
        if self.score not in ("obd", "magnitude"):
            raise ConfigError(f"score must be 'obd' or 'magnitude', got {self.score!r}")


@dataclass
class HybridDiffConfig(SparseMaskDiffConfig):
    """Sparse entries plus a hashed delta: matrices whose names start with one of `hashed_prefixes`
    get a hashed delta (every nonzero entry moves, through shared buckets) worth `hashed_share` of
    the budget; sparse entries compete for the rest over the other matrices. Why: a new speaker
    (real voices, FSDD) needs small changes everywhere in the acoustic encoder, new words need
    a few large changes in the prediction network and joint (docs/diffs.md)."""

    hashed_prefixes: tuple[str, ...] = ("encoder.",)
    # one update at 2% of the model's bytes, names / FSDD WER: share 0.3 -> 34.4% / 22.0%,
    # 0.5 -> 38.3% / 21.0%, 0.7 -> 40.1% / 23.0% (sparse alone: 37.7% / 52.0%)
    hashed_share: float = 0.3
    hash_seed: int = 0x5EED
    # Five-update chain at 3% of the model's bytes, taught, distill 4, three seeds, 600 test utterances
    # per update: step 2 -> mean gap to the full fine-tune +0.9 / +0.5 / +0.2, step 1 -> +2.0 / +2.1 / +2.1
    # (docs/diffs.md, "Cheaper entries"); about 6% more entries in the same bytes
    value_step: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hashed_prefixes = tuple(self.hashed_prefixes)
        if not 0 < self.hashed_share < 1 or not self.hashed_prefixes:
            raise ConfigError(f"hashed_share must be in (0, 1) and hashed_prefixes non-empty, got "
                              f"{self.hashed_share} and {self.hashed_prefixes}")


def diff_within_budget(deployed: DeviceModel, method: str, dense: dict[str, np.ndarray], budget: int,
                       target_version: int, fixed: dict[str, HashedDelta] | None = None, seed: int = 0,
                       channels: ChannelDeltas | None = None) -> Diff:
    """Integer deltas (plus `fixed` hashed deltas and channel deltas) -> Diff; drop the smallest sparse
    entries until the bundle fits `budget` bytes."""
    fixed = fixed or {}

    def make(dense: dict[str, np.ndarray]) -> Diff:
        return finish_diff(deployed, method, {**sparse_deltas_from_dense(deployed, dense), **fixed}, target_version,
                           seed=seed, channels=channels)

    diff = make(dense)
    while (size := serialized_bytes(diff, deployed)) > budget:
        entries = sum(int(np.count_nonzero(d)) for d in dense.values())
        if entries == 0:
            raise DiffError(f"the hashed and channel parts alone take {size} bytes, over the {budget}-byte budget")
        dense = top_k_entries(deployed, dense, int(entries * min(0.98, budget / size)))
        diff = make(dense)
    return diff


@register("sparse", SparseMaskDiffConfig)
def learn_sparse_mask(deployed: DeviceModel, train_manifest: str | Path, cfg: SparseMaskDiffConfig, *,
                      replay_manifest: str | Path | None, target_version: int, progress: bool,
                      log: Callable[[str], None]) -> Diff:
    assert isinstance(cfg.budget, int), "learn_diff resolves the budget to bytes"
    channels = channel_layout(deployed, cfg)
    reserve = channels.reserve_bytes(deployed) if channels is not None else 0
    hashed, sparse_budget = _hashed_part(deployed, cfg, cfg.budget - reserve)  # first: fails before any work
    k_final = sparse_entries_for_bytes(deployed, sparse_budget, cfg.value_step)
    sparse_names = [n for n in deployed.weights if n not in hashed.counts]
    total_entries = sum(deployed.weights[n].q.size for n in sparse_names)
    k_sched = min(total_entries, int(k_final * OVERSHOOT))
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    deltas = {n: torch.zeros(deployed.weights[n].q.shape, requires_grad=True) for n in sparse_names}
    masks = {n: torch.ones(deployed.weights[n].q.shape, dtype=torch.bool) for n in sparse_names}
    shapes = {n: deployed.weights[n].q.shape for n in sparse_names}
    hybrid = isinstance(cfg, HybridDiffConfig)
    method, seed = ("hybrid", cfg.hash_seed) if hybrid else ("sparse", 0)
    step = cfg.value_step

    def to_steps(d: torch.Tensor) -> torch.Tensor:
        return step * torch.round(d / step)

    twin = Int8Twin(deployed, lambda name: step * round_ste(deltas[name] * masks[name] / step) if name in deltas
                    else hashed.delta(name))
    params = list(deltas.values()) + list(hashed.values.values())
    if channels is not None:
        channels.attach(twin)
        params += channels.parameters()
    optimizer = torch.optim.Adam(params, lr=cfg.lr)

    def importance(name: str) -> torch.Tensor:
        d = deltas[name] * masks[name]
        state = optimizer.state.get(deltas[name], {})
        if cfg.score == "obd" and "exp_avg_sq" in state:
            return state["exp_avg_sq"] * d * d
        return d.abs() * twin.scale[name]

    finalised: list[int] = []  # the byte-exact selection happens once, at prune_end

    def entries_within_bytes(scores: torch.Tensor, limit: int) -> int:
        """How many of the top-ranked entries, with their current rounded deltas, encode within FILL x budget."""
        order = scores.topk(limit).indices.numpy()
        flat = torch.cat([to_steps(deltas[n]).flatten() for n in deltas]).numpy()
        # an entry that rounds to 0 now still costs a position once it moves: count it as one step
        values = np.where(flat[order] == 0, step, flat[order])
        hashed_now = hashed.deltas()  # fixed while the bisection probes sizes
        channels_now = channels.deltas(deployed) if channels is not None else None

        def size_of(k: int) -> int:
            dense = np.zeros(flat.size, dtype=np.int16)
            dense[order[:k]] = values[:k]
            parts = split_flat(dense, shapes)
            return serialized_bytes(finish_diff(deployed, method, {**sparse_deltas_from_dense(deployed, parts),
                                                                   **hashed_now}, target_version,
                                                seed=seed, channels=channels_now), deployed)

        return largest_prefix_within(int(FILL * cfg.budget), limit, size_of)

    def build(values: dict[str, np.ndarray]) -> Diff:
        return finish_diff(deployed, method, {**sparse_deltas_from_dense(deployed, values), **hashed.deltas()},
                           target_version, seed=seed,
                           channels=channels.deltas(deployed) if channels is not None else None)

    dense_phase: dict[str, torch.Tensor] = {}  # seed_mask: the deltas when pruning starts

    @torch.no_grad()
    def seed_masks(obd_keep: dict[str, torch.Tensor]) -> int:
        """seed_mask: per-matrix random positions, round(f x k_m) each, with the largest f whose bundle
        without position bits fits FILL x the budget; masks and deltas set to them. -> entries kept."""
        # deltas: current where the schedule kept them, else their values at the end of the dense phase
        source = {n: torch.where(masks[n], deltas[n], dense_phase.get(n, deltas[n])) for n in deltas}
        steps = {n: np.clip(to_steps(source[n]).flatten().numpy(), -QMAX, QMAX) for n in deltas}
        steps = {n: np.where(v == 0, step, v).astype(np.int16) for n, v in steps.items()}
        k_obd = {n: int(m.sum()) for n, m in obd_keep.items()}
        obd_values = {n: np.where(obd_keep[n].flatten().numpy(), steps[n], 0).reshape(shapes[n]) for n in deltas}
        obd_diff = build(obd_values)
        fixed = _position_free_bytes(deployed, obd_diff, {})  # hashed part and manifest
        perms = {n: np.random.default_rng(_seed_of(n, getattr(cfg, "hash_seed", 0))).permutation(steps[n].size)
                 for n in deltas}

        def positions(f: float) -> dict[str, np.ndarray]:
            return {n: np.sort(perms[n][:min(steps[n].size, int(round(f * k)))]) for n, k in k_obd.items()}

        def bytes_of(f: float) -> int:
            return fixed + _values_only_bytes({n: steps[n][p] for n, p in positions(f).items()})

        limit = int(FILL * cfg.budget)
        lo, hi = 1.0, max(steps[n].size / k for n, k in k_obd.items() if k)
        if bytes_of(hi) <= limit:
            lo = hi
        elif bytes_of(lo) > limit:
            log(f"seed_mask: even f = 1 takes {bytes_of(lo)} bytes position-free, over {limit}; keeping f = 1")
        else:
            while hi - lo > 1e-3 * lo:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if bytes_of(mid) <= limit else (lo, mid)
        chosen = positions(lo)
        for n, p in chosen.items():
            keep_n = torch.zeros(steps[n].size, dtype=torch.bool)
            keep_n[torch.from_numpy(p)] = True
            masks[n] = keep_n.reshape(shapes[n])
            deltas[n].copy_(source[n] * masks[n])
        K = sum(p.size for p in chosen.values())
        log(f"seed_mask: f = {lo:.4f}, K = {K} seeded entries (OBD k = {sum(k_obd.values())}; per matrix OBD / "
            f"seeded: {', '.join(f'{n} {k_obd[n]}/{chosen[n].size}' for n in deltas)}), position-free bytes "
            f"{bytes_of(lo)} of limit {limit} (OBD diff as selected: {serialized_bytes(obd_diff, deployed)} B)")
        return K

    @torch.no_grad()
    def prune(step: int, total: int) -> None:
        # 1) scheduled density: 1 before prune_start, k_sched / total at prune_end (then the
        #    entries that encode within the byte budget)
        progress_frac = step / total
        if cfg.seed_mask and finalised:
            return  # the seeded mask stays as drawn
        if cfg.seed_mask and progress_frac >= cfg.prune_start and not dense_phase:
            dense_phase.update({n: d.detach().clone() for n, d in deltas.items()})
        if progress_frac < cfg.prune_start or (step % cfg.prune_every and progress_frac < cfg.prune_end):
            return
        span = max(1e-9, cfg.prune_end - cfg.prune_start)
        removed = cubic_schedule((progress_frac - cfg.prune_start) / span, 1.0 - k_sched / total_entries)
        keep = max(k_sched, int(round((1.0 - removed) * total_entries)))
        select_by_bytes = progress_frac >= cfg.prune_end and not finalised
        if sum(int(m.sum()) for m in masks.values()) <= keep and not select_by_bytes:
            return
        # 2) global top-k by the chosen importance score
        scores = torch.cat([importance(n).flatten() for n in deltas])
        if select_by_bytes:
            keep = entries_within_bytes(scores, min(keep, int((scores > 0).sum())))
            finalised.append(keep)
        flat_keep = torch.zeros(scores.numel(), dtype=torch.bool)
        flat_keep[scores.topk(keep, sorted=False).indices] = True  # exactly `keep` entries
        if select_by_bytes and cfg.seed_mask:
            finalised[-1] = seed_masks(split_flat(flat_keep, shapes))
            return
        for n, keep_n in split_flat(flat_keep, shapes).items():
            masks[n] &= keep_n
            deltas[n].mul_(masks[n])

    fit(twin, params, adapt, replay, cfg, after_step=prune, log=log, optimizer=optimizer)

    # 3) integer deltas, trimmed until the byte budget is met
    with torch.no_grad():
        dense = {n: to_steps(deltas[n] * masks[n]).to(torch.int16).numpy() for n in deltas}
    if cfg.seed_mask:  # no trimming: the real bundle carries positions and is over budget (a bound)
        diff = build(dense)
        seeded = {n: np.clip(dense[n].flatten()[masks[n].flatten().numpy()], -QMAX, QMAX) for n in deltas}
        free = _position_free_bytes(deployed, diff, {n: np.where(v == 0, step, v) for n, v in seeded.items()})
        log(f"seed_mask: {sum(v.size for v in seeded.values())} seeded entries "
            f"({sum(int(np.count_nonzero(v)) for v in seeded.values())} nonzero); real bundle "
            f"{serialized_bytes(diff, deployed)} B, position-free {free} B (budget {cfg.budget} B)")
        return diff
    diff = diff_within_budget(deployed, method, dense, cfg.budget, target_version, hashed.deltas(), seed,
                              channels.deltas(deployed) if channels is not None else None)
    log(f"{method} diff: {diff.nonzero_entries()} entries and buckets")
    return diff


register("hybrid", HybridDiffConfig)(learn_sparse_mask)


def _seed_of(name: str, seed: int) -> int:
    """The RNG seed of a matrix's seeded positions (seed_mask)."""
    return xxhash.xxh64_intdigest(name.encode(), seed=seed)


def _values_only_bytes(values: dict[str, np.ndarray]) -> int:
    """Compressed bytes of each matrix's values alone (positions replayed from a seed)."""
    from packager.bundle import compress_section

    return sum(len(compress_section(v.astype(np.int8).tobytes())) for v in values.values() if v.size)


def _position_free_bytes(deployed: DeviceModel, diff: Diff, values: dict[str, np.ndarray]) -> int:
    """The bundle's bytes with its sparse sections replaced by `values` alone, compressed."""
    from device_agent.diff import SparseDelta
    from packager.bundle import _encode_sparse

    stored = sum(len(_encode_sparse(d, deployed.weights[n].q.size)[2]) for n, d in diff.deltas.items()
                 if isinstance(d, SparseDelta))
    return serialized_bytes(diff, deployed) - stored + _values_only_bytes(values)


def _hashed_part(deployed: DeviceModel, cfg: SparseMaskDiffConfig, budget: int) -> tuple[HashedLayout, int]:
    """The hybrid's hashed matrices with their buckets, and the bytes left for sparse entries out of
    `budget` (what channel deltas leave). It is split above the bundle's floor (manifest, one bucket
    per hashed matrix)."""
    if budget < 64:
        raise ConfigError(f"a budget of {cfg.budget} bytes cannot be met: the channel deltas alone take about "
                          f"{cfg.budget - budget} bytes")
    if not isinstance(cfg, HybridDiffConfig):
        return HashedLayout(deployed, {}, 0), budget
    names = [n for n, w in deployed.weights.items() if n.startswith(cfg.hashed_prefixes) and w.nnz]
    if not names:
        raise ConfigError(f"no weight matrix with nonzero entries matches hashed_prefixes {cfg.hashed_prefixes}; "
                          f"matrices: {sorted(deployed.weights)}")
    floor = min_hashed_bytes(deployed, names)
    if floor >= budget:
        raise ConfigError(f"a budget of {budget} bytes cannot be met: the bundle with one bucket for each "
                          f"of the {len(names)} hashed matrices already takes {floor} bytes")
    hashed_bytes = int(cfg.hashed_share * (budget - floor))
    buckets, rest = hashed_buckets_for_bytes(deployed, floor + hashed_bytes, names), budget - hashed_bytes
    counts = split_buckets({n: deployed.weights[n].nnz for n in names}, buckets)
    return HashedLayout(deployed, counts, cfg.hash_seed), rest
