"""Compression-aware training pieces: magnitude pruning on a rising schedule
and per-channel int8 fake quantization with a straight-through estimator."""
from __future__ import annotations

import torch

from device_agent.device_model import QMAX


def cubic_schedule(progress: float, final: float) -> float:
    """Zhu & Gupta gradual pruning: fast at first, flattening as it nears `final`."""
    p = min(max(progress, 0.0), 1.0)
    return final * (1.0 - (1.0 - p) ** 3)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest-magnitude (1 - sparsity) fraction of entries."""
    k = int(round(sparsity * w.numel()))
    if k <= 0:
        return torch.ones_like(w, dtype=torch.bool)
    threshold = w.detach().abs().flatten().kthvalue(k).values
    return w.detach().abs() > threshold


def fake_quant_per_channel(w: torch.Tensor) -> torch.Tensor:
    """Round to the int8 grid the exporter will use; gradients pass straight through."""
    amax = w.detach().abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale), -QMAX, QMAX) * scale
    return w + (q - w).detach()


class CompressionState:
    """Masks per weight matrix plus whether fake quantization is on.

    Used as the model's `weight_transform`: w -> fake_quant(w * mask).
    """

    def __init__(self, weights: dict[str, torch.nn.Parameter]) -> None:
        self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
        self.quantize = False

    def __call__(self, name: str, w: torch.Tensor) -> torch.Tensor:
        mask = self.masks.get(name)
        if mask is not None:
            w = w * mask
        return fake_quant_per_channel(w) if self.quantize else w

    @torch.no_grad()
    def prune_to(self, weights: dict[str, torch.nn.Parameter], sparsity: float) -> None:
        for name, w in weights.items():
            self.masks[name] = magnitude_mask(w * self.masks[name], sparsity)
            w.mul_(self.masks[name])  # pruned weights stay exactly zero

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    def state_dict(self) -> dict:
        return {"masks": self.masks, "quantize": self.quantize}

    def load_state_dict(self, state: dict) -> None:
        # masks follow the weights' device (checkpoints are read on the CPU)
        self.masks = {n: m.to(self.masks[n].device) if n in self.masks else m for n, m in state["masks"].items()}
        self.quantize = state["quantize"]
