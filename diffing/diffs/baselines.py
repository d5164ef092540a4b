"""Baselines measured in the same harness as the learned diffs.

- full fine-tune: every int8 entry may change (shipped as a whole model);
- post-hoc top-k: the full fine-tune's integer delta cut to a budget;
- LoRA at matched bytes: rank-r float factors per matrix (fp16 on the wire),
  rounded into the int8 domain with the same straight-through estimator;
- generic binary deltas of the fine-tuned model file against the base file:
  zstd with the base as a raw-content dictionary (patch-from) and bsdiff4.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zstandard

from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, dense_delta
from device_agent.errors import ConfigError
from diffing.diffs.api import DiffConfig, budget_bytes, register
from diffing.diffs.int8_domain import (Int8Twin, finish_diff, fit, load_adaptation_data, round_ste,
                                       sparse_deltas_from_dense, top_k_entries)
from diffing.diffs.sizing import sparse_entries_for_bytes
from diffing.diffs.sparse_mask import diff_within_budget

LORA_BYTES_PER_VALUE = 2  # fp16 factors


@dataclass
class FullFinetuneConfig(DiffConfig):
    """Dense integer deltas on every weight matrix; `budget` is ignored."""

    uses_budget = False  # class attribute: learn_diff leaves the budget alone
    budget: float | int = 1.0
    max_frames: int = 2400  # the dense fine-tune gains nothing from smaller batches (intent dev: 18.0% vs 17.8% at 1200)


@register("full", FullFinetuneConfig)
def learn_full(deployed: DeviceModel, train_manifest: str | Path, cfg: FullFinetuneConfig, *,
               replay_manifest: str | Path | None, target_version: int, progress: bool,
               log: Callable[[str], None]) -> Diff:
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    deltas = {n: torch.zeros(w.q.shape, requires_grad=True) for n, w in deployed.weights.items()}
    twin = Int8Twin(deployed, lambda name: round_ste(deltas[name]))
    fit(twin, list(deltas.values()), adapt, replay, cfg, log=log)
    with torch.no_grad():
        dense = {n: torch.round(d).to(torch.int16).numpy() for n, d in deltas.items()}
    return finish_diff(deployed, "full", sparse_deltas_from_dense(deployed, dense), target_version)


def topk_of(deployed: DeviceModel, full: Diff, budget: str | float | int) -> Diff:
    """The largest entries of a dense diff, by float-domain size |delta| * scale, that fit `budget`
    (bytes, or a share of the deployed model file's bytes)."""
    limit = budget_bytes(deployed, budget)
    dense = {n: dense_delta(n, d, deployed.weights[n], full.seed) for n, d in full.deltas.items()}
    cut = top_k_entries(deployed, dense, sparse_entries_for_bytes(deployed, limit))
    return diff_within_budget(deployed, "topk", cut, limit, full.target_version)


@dataclass
class LoRADiffConfig(DiffConfig):
    """Rank chosen per matrix so the fp16 factors fit the byte budget."""

    lr: float = 1e-3


def lora_rank(deployed: DeviceModel, budget: str | float | int) -> int:
    limit = budget_bytes(deployed, budget)
    per_rank = sum((w.q.shape[0] + w.q.shape[1]) * LORA_BYTES_PER_VALUE for w in deployed.weights.values())
    if limit < per_rank:  # rank 1 on every matrix is LoRA's smallest diff
        raise ConfigError(f"a LoRA budget of {limit} bytes cannot be met: rank 1 on every matrix "
                          f"already takes {per_rank} bytes")
    return limit // per_rank


@register("lora", LoRADiffConfig)
def learn_lora(deployed: DeviceModel, train_manifest: str | Path, cfg: LoRADiffConfig, *,
               replay_manifest: str | Path | None, target_version: int, progress: bool,
               log: Callable[[str], None]) -> Diff:
    rank = lora_rank(deployed, cfg.budget)  # first: an unreachable budget fails before any work
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    factors = {n: (torch.zeros(w.q.shape[0], rank, requires_grad=True),
                   (torch.randn(rank, w.q.shape[1], generator=gen) * 0.01).requires_grad_())
               for n, w in deployed.weights.items()}
    twin = Int8Twin(deployed, lambda n: None)
    # the delta in int8 units is the float low-rank update divided by the channel scale
    twin.delta_fn = lambda n: round_ste((factors[n][0] @ factors[n][1]) / twin.scale[n])
    fit(twin, [p for pair in factors.values() for p in pair], adapt, replay, cfg, log=log)
    with torch.no_grad():
        dense = {n: torch.round((a.half().float() @ b.half().float()) / twin.scale[n]).to(torch.int16).numpy()
                 for n, (a, b) in factors.items()}
    diff = finish_diff(deployed, "lora", sparse_deltas_from_dense(deployed, dense), target_version)
    diff.metadata["wire_bytes"] = str(sum((a.numel() + b.numel()) * LORA_BYTES_PER_VALUE for a, b in factors.values()))
    diff.metadata["rank"] = str(rank)
    return diff


def zstd_patch_from_bytes(base_file: bytes, new_file: bytes, level: int = 19) -> int:
    """Size of a zstd patch (base file as raw-content dictionary)."""
    dictionary = zstandard.ZstdCompressionDict(base_file, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=max(20, len(new_file).bit_length() + 1))
    return len(zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new_file))


def bsdiff_bytes(base_file: bytes, new_file: bytes) -> int:
    import bsdiff4  # test/benchmark extra

    return len(bsdiff4.diff(base_file, new_file))
