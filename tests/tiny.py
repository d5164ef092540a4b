"""Tiny deterministic models for tests (no training, no torch RNG)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from device_agent.device_model import DeviceModel, QuantizedWeight
from device_agent.features import FeatureConfig
from device_agent.model_config import ModelConfig, tensor_layout
from device_agent.tokenizer import CharTokenizer

# The format-1 front end (no level normaliser) keeps the pinned hashes of earlier tests stable;
# TINY_LEVEL_CONFIG is the same model with the level normaliser on.
TINY_CONFIG = ModelConfig(features=FeatureConfig(n_mels=8, stack=2, level_attack=0, level_release=0, level_range_db=0,
                                                         level_floor_db=0), enc_hidden=8,
                          enc_layers=2, embed_dim=4, pred_hidden=8, joint_dim=8)
TINY_LEVEL_CONFIG = replace(TINY_CONFIG, features=FeatureConfig(n_mels=8, stack=2))


def tiny_device_model(seed: int = 0, config: ModelConfig = TINY_CONFIG, sparsity: float = 0.5) -> DeviceModel:
    """Random int8 weights with about `sparsity` zeros; fixed by `seed`."""
    rng = np.random.default_rng(seed)
    weights, floats = {}, {}
    for name, (kind, shape) in tensor_layout(config).items():
        if kind == "int8":
            q = rng.integers(-127, 128, size=shape).astype(np.int8)
            q[rng.random(shape) < sparsity] = 0
            scale = (rng.random(shape[0]) * 0.02 + 0.001).astype(np.float32)
            weights[name] = QuantizedWeight(q, scale)
        elif name == "frontend.inv_std":
            floats[name] = np.full(shape, 0.25, dtype=np.float32)
        elif name == "frontend.mean":
            floats[name] = np.full(shape, -6.0, dtype=np.float32)
        else:
            floats[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return DeviceModel(config, CharTokenizer(), weights, floats, "tiny", 1)
