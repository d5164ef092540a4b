"""The exact model a device runs: int8 weight matrices, fp32 scales and biases.

`DeviceModel` is format-agnostic (the file codec lives in `model_format`).
Its content hash covers the canonical tensors, the config and the tokenizer,
never the compression, so a model has one identity however it was encoded.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np
import xxhash

from device_agent.errors import ModelFormatError
from device_agent.model_config import ModelConfig, tensor_layout
from device_agent.tokenizer import CharTokenizer
from device_agent.version import parse_version

QMAX = 127  # symmetric int8: -128 is never used


@dataclass
class QuantizedWeight:
    """Per-output-channel symmetric int8: w[i, j] ~= q[i, j] * scale[i]."""

    q: np.ndarray  # (N, K) int8
    scale: np.ndarray  # (N,) float32, > 0

    def dequantize(self) -> np.ndarray:
        return self.q.astype(np.float32) * self.scale[:, None]

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.q))


@dataclass
class DeviceModel:
    config: ModelConfig
    tokenizer: CharTokenizer
    weights: dict[str, QuantizedWeight]
    floats: dict[str, np.ndarray]
    model_id: str = "speech-commands"
    version: int = 1
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Tensors must match the config's layout exactly (names, kinds, shapes, dtypes); the version is one."""
        parse_version(self.version, "model version", ModelFormatError)
        if self.tokenizer.vocab_size != self.config.vocab_size:
            raise ModelFormatError(
                f"tokenizer has {self.tokenizer.vocab_size} classes, config expects {self.config.vocab_size}")
        layout = tensor_layout(self.config)
        present = set(self.weights) | set(self.floats)
        if present != set(layout):
            raise ModelFormatError(f"tensor set differs from the config layout: missing "
                                   f"{sorted(set(layout) - present)}, unexpected {sorted(present - set(layout))}")
        for name, (kind, shape) in layout.items():
            if kind == "int8":
                w = self.weights.get(name)
                if w is None or w.q.dtype != np.int8 or w.q.shape != shape or w.scale.shape != shape[:1] \
                        or w.scale.dtype != np.float32:
                    raise ModelFormatError(f"{name}: expected int8 {shape} with float32 scales {shape[:1]}")
                if np.any(w.q == -128):
                    raise ModelFormatError(f"{name}: int8 value -128 is outside the symmetric range [-127, 127]")
                if not np.all(np.isfinite(w.scale)) or np.any(w.scale <= 0):
                    raise ModelFormatError(f"{name}: scales must be finite and > 0")
            else:
                t = self.floats.get(name)
                if t is None or t.dtype != np.float32 or t.shape != shape:
                    raise ModelFormatError(f"{name}: expected float32 {shape}")
                if not np.all(np.isfinite(t)):
                    raise ModelFormatError(f"{name}: values must be finite")

    def content_hash(self) -> str:
        return content_hash(self)

    def weight_sparsity(self) -> float:
        total = sum(w.q.size for w in self.weights.values())
        return 1.0 - sum(w.nnz for w in self.weights.values()) / total

    def num_parameters(self) -> int:
        return sum(w.q.size for w in self.weights.values()) + sum(t.size for t in self.floats.values())


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_hash(model: DeviceModel) -> str:
    """xxh3-128 over config, tokenizer and every tensor in canonical order (little-endian)."""
    h = xxhash.xxh3_128()
    h.update(b"OTAM-content-v1\0")
    meta = canonical_json({"config": model.config.to_json(), "tokenizer": model.tokenizer.to_json()})
    h.update(struct.pack("<I", len(meta)) + meta)
    for name, (kind, shape) in tensor_layout(model.config).items():
        encoded = name.encode()
        h.update(struct.pack("<I", len(encoded)) + encoded + struct.pack(f"<B{len(shape)}I", len(shape), *shape))
        if kind == "int8":
            w = model.weights[name]
            h.update(np.ascontiguousarray(w.q))  # buffer protocol: hashed without a copy
            h.update(np.ascontiguousarray(w.scale, dtype="<f4"))
        else:
            h.update(np.ascontiguousarray(model.floats[name], dtype="<f4"))
    return h.hexdigest()
