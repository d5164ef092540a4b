"""Channel deltas in training: a trainable int8 code per output channel (LHUC / BitFit style).

The twin computes with exactly what the device's apply makes of the codes:
scale * (1 + round(code) * 2^e) for an int8 matrix's rows, bias + round(code) * 2^e
for a bias vector (`device_agent/diff.py`); rounding uses the straight-through
estimator. Any learner can train them next to its entries (`channels` in
DiffConfig); the `channel` method ships nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.utils import parametrize

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import ChannelDeltas, Diff, channel_tensors
from device_agent.errors import ConfigError, DiffError
from diffing.diffs.api import DiffConfig, register
from diffing.diffs.int8_domain import Int8Twin, finish_diff, fit, load_adaptation_data, round_ste
from diffing.diffs.sizing import serialized_bytes
from diffing.model import RNNT

# Spread of trained codes assumed when reserving bytes for the channels section before training
# (the sparse entries are trimmed, and a channel-only diff drops its smallest codes, if it is wider).
CODE_STD = 6.0


class ChannelLayout:
    """Trainable codes for the channels chosen by `which` ("scale", "bias" or "both")."""

    def __init__(self, deployed: DeviceModel, which: str, scale_step_exp: int, bias_step_exp: int) -> None:
        self.tensors = [(n, kind, c) for n, kind, c in channel_tensors(deployed) if which in ("both", kind)]
        self.exps = {n: scale_step_exp if kind == "scale" else bias_step_exp for n, kind, _ in self.tensors}
        self.kinds = {n: kind for n, kind, _ in self.tensors}
        self.values = {n: torch.zeros(c, requires_grad=True) for n, _, c in self.tensors}
        self.model: RNNT | None = None

    def _codes(self, name: str) -> torch.Tensor:
        return torch.clamp(round_ste(self.values[name]), -QMAX, QMAX) * 2.0 ** self.exps[name]

    def scale_factor(self, name: str) -> torch.Tensor | None:
        return 1.0 + self._codes(name) if self.kinds.get(name) == "scale" else None

    def attach(self, twin: Int8Twin) -> None:
        """Scales through the twin's weight transform, biases as parametrizations of its bias parameters
        (off while the twin computes the deployed model, weight_transform None, as for distillation)."""
        self.model = twin.model
        twin.channels = self
        for name, kind in self.kinds.items():
            if kind == "bias":
                module_path, attr = RNNT.module_path(name).rsplit(".", 1)
                module = twin.model.get_submodule(module_path)
                parametrize.register_parametrization(module, attr, _BiasOffset(self, name))

    def parameters(self) -> list[torch.Tensor]:
        return list(self.values.values())

    @torch.no_grad()
    def deltas(self, deployed: DeviceModel) -> ChannelDeltas:
        return ChannelDeltas.pack(deployed, {n: (self.exps[n], torch.clamp(torch.round(v), -QMAX, QMAX)
                                                 .to(torch.int8).numpy()) for n, v in self.values.items()})

    def reserve_bytes(self, deployed: DeviceModel, compact: bool = False) -> int:
        """Bytes the channels section adds to a bundle, for codes of the typical spread."""
        rng = np.random.default_rng(0)
        codes = {n: (self.exps[n], np.clip(np.round(rng.normal(0, CODE_STD, c)), -QMAX, QMAX))
                 for n, _, c in self.tensors}
        h = deployed.content_hash()

        def size(channels: ChannelDeltas | None) -> int:
            return serialized_bytes(Diff("probe", deployed.model_id, deployed.version, deployed.version + 1, h, h, {},
                                         0, {}, channels), deployed, compact)

        return size(ChannelDeltas.pack(deployed, codes)) - size(None)


class _BiasOffset(torch.nn.Module):
    def __init__(self, layout: ChannelLayout, name: str) -> None:
        super().__init__()
        self.layout, self.name = layout, name

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        if self.layout.model is not None and self.layout.model.weight_transform is None:
            return bias
        return bias + self.layout._codes(self.name)


def channel_layout(deployed: DeviceModel, cfg: DiffConfig) -> ChannelLayout | None:
    return None if cfg.channels == "none" else ChannelLayout(deployed, cfg.channels, cfg.scale_step_exp,
                                                              cfg.bias_step_exp)


def trimmed_to_budget(deployed: DeviceModel, diff: Diff, budget: int, compact: bool = False) -> Diff:
    """Drop the smallest channel codes until the bundle fits `budget` bytes (DiffError if the rest alone
    does not fit)."""
    sizes = [c for _, _, c in channel_tensors(deployed)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    while diff.channels is not None and (size := serialized_bytes(diff, deployed, compact)) > budget:
        codes = diff.channels.codes.copy()
        nonzero = np.flatnonzero(codes)
        if nonzero.size == 0:
            raise DiffError(f"the diff without channel codes still takes {size} bytes, over the {budget}-byte budget")
        drop = int(nonzero.size * (1 - budget / size)) + 1  # about the share of bytes over budget
        codes[nonzero[np.argsort(np.abs(codes[nonzero]), kind="stable")[:drop]]] = 0
        # a tensor left without codes gets step exponent 0 (the canonical form)
        exps = np.where(np.add.reduceat(np.abs(codes.astype(np.int16)), starts) > 0, diff.channels.step_exps, 0)
        diff = finish_diff(deployed, diff.method, diff.deltas, diff.target_version, diff.seed, diff.metadata,
                           ChannelDeltas(exps, codes))
    return diff


@dataclass
class ChannelDiffConfig(DiffConfig):
    """Per-channel scale and bias codes only (LHUC / BitFit style): no positions to ship."""

    channels: str = "both"
    lr: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels == "none":
            raise ConfigError("a channel diff needs channels 'scale', 'bias' or 'both'")


@register("channel", ChannelDiffConfig)
def learn_channels(deployed: DeviceModel, train_manifest: str | Path, cfg: ChannelDiffConfig, *,
                   replay_manifest: str | Path | None, target_version: int, progress: bool,
                   log: Callable[[str], None]) -> Diff:
    assert isinstance(cfg.budget, int), "learn_diff resolves the budget to bytes"
    layout = channel_layout(deployed, cfg)
    assert layout is not None
    adapt, replay = load_adaptation_data(deployed, train_manifest, replay_manifest, progress)
    twin = Int8Twin(deployed, lambda name: None)
    layout.attach(twin)
    fit(twin, layout.parameters(), adapt, replay, cfg, log=log)
    diff = finish_diff(deployed, "channel", {}, target_version, channels=layout.deltas(deployed))
    diff = trimmed_to_budget(deployed, diff, cfg.budget, cfg.compact)
    log(f"channel diff: {diff.nonzero_entries()} channels changed")
    return diff
