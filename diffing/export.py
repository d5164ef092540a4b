"""Float RNN-T <-> device model.

Export quantizes every weight matrix per output channel (symmetric int8);
an int8 value of 0 is a pruned weight. Import builds a float model from the
dequantized int8 weights: the exact function the device computes, which
diff learners start from and tests compare against.
"""
from __future__ import annotations

import numpy as np
import torch

from device_agent.device_model import QMAX, DeviceModel, QuantizedWeight
from device_agent.model_config import tensor_layout
from device_agent.tokenizer import CharTokenizer
from diffing.model import RNNT


def channel_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric scale; all-zero rows get scale 1 (any positive value works)."""
    amax = w.detach().abs().amax(dim=1)
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax)).float()


def quantize_weight(w: torch.Tensor) -> QuantizedWeight:
    scale = channel_scales(w)
    q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return QuantizedWeight(q.numpy(), scale.numpy().astype(np.float32))


def export_model(model: RNNT, tokenizer: CharTokenizer, model_id: str = "speech-commands", version: int = 1,
                 metadata: dict[str, str] | None = None) -> DeviceModel:
    state = model.device_state()
    weights: dict[str, QuantizedWeight] = {}
    floats: dict[str, np.ndarray] = {}
    for name, (kind, _) in tensor_layout(model.cfg).items():
        if kind == "int8":
            weights[name] = quantize_weight(state[name])
        else:
            floats[name] = state[name].detach().float().numpy().copy()
    device = DeviceModel(model.cfg, tokenizer, weights, floats, model_id, version, dict(metadata or {}))
    device.validate()
    return device


def float_model_from_device(device: DeviceModel) -> RNNT:
    """A float RNN-T whose weights are exactly the dequantized int8 weights."""
    model = RNNT(device.config)
    state = {name: torch.from_numpy(w.dequantize()) for name, w in device.weights.items()}
    state.update({name: torch.from_numpy(t.copy()) for name, t in device.floats.items()})
    model.load_device_state(state)
    return model.eval()
