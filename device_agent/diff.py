"""Neural diffs in the int8 domain and the one function that applies them.

A diff changes a deployed model's int8 weight matrices by integer deltas:
    q_new = clamp(q_base + delta, -127, 127)
computed in int16, so every platform produces the same bytes. The server's
learners call `apply_diff` too, which is how they predict `target_hash`.

Kinds of per-tensor delta:
- SparseDelta: explicit flat positions and int8 deltas. A position may be a
  pruned zero of the base (the learner bounds how many: see docs).
- HashedDelta: HashedNets-style. The base's nonzero entries, in row-major
  order, share `buckets` by xxh64 of (seed, tensor name, flat position);
  entry p gets sign(p) * buckets[bucket(p)]. Zeros stay zero.
Scales, biases and the tokenizer are never changed by a diff.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device_agent.device_model import QMAX, DeviceModel, QuantizedWeight
from device_agent.errors import DiffError
from device_agent.hashing import buckets_and_signs

MAX_BUCKETS = 1 << 24


@dataclass
class SparseDelta:
    positions: np.ndarray  # (n,) int64, strictly increasing flat indices
    values: np.ndarray  # (n,) int8, nonzero

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.int8)


@dataclass
class HashedDelta:
    num_buckets: int
    buckets: np.ndarray  # (num_buckets,) int8

    def __post_init__(self) -> None:
        self.buckets = np.asarray(self.buckets, dtype=np.int8)


TensorDelta = SparseDelta | HashedDelta


@dataclass
class Diff:
    method: str  # "sparse" | "hashed" | ... (informational; apply looks at delta types)
    model_id: str
    base_version: int
    target_version: int
    base_hash: str
    target_hash: str
    deltas: dict[str, TensorDelta]
    seed: int = 0  # hashed diffs: the hash seed
    metadata: dict[str, str] = field(default_factory=dict)

    def nonzero_entries(self) -> int:
        return sum(d.values.size if isinstance(d, SparseDelta) else d.buckets.size for d in self.deltas.values())


def check_delta(name: str, delta: TensorDelta, w: QuantizedWeight) -> None:
    """DiffError unless `delta` is well formed for `w` (shared by apply and the bundle encoder)."""
    numel = w.q.size
    if isinstance(delta, SparseDelta):
        p, v = delta.positions, delta.values
        if p.ndim != 1 or p.shape != v.shape:
            raise DiffError(f"{name}: positions {p.shape} and values {v.shape} must be equal 1-D shapes")
        if p.size and (p[0] < 0 or p[-1] >= numel or np.any(np.diff(p) <= 0)):
            raise DiffError(f"{name}: positions must be strictly increasing within [0, {numel})")
        if np.any(v == 0) or np.any(v < -QMAX):
            raise DiffError(f"{name}: delta values must be nonzero and within [-{QMAX}, {QMAX}]")
    elif isinstance(delta, HashedDelta):
        if not 1 <= delta.num_buckets <= MAX_BUCKETS or delta.buckets.shape != (delta.num_buckets,):
            raise DiffError(f"{name}: expected {delta.num_buckets} buckets (1..{MAX_BUCKETS}), got {delta.buckets.shape}")
        if np.any(delta.buckets < -QMAX):
            raise DiffError(f"{name}: bucket values must be within [-{QMAX}, {QMAX}]")
    else:
        raise DiffError(f"{name}: unknown delta type {type(delta).__name__}")


def dense_delta(name: str, delta: TensorDelta, w: QuantizedWeight, seed: int) -> np.ndarray:
    """The int16 delta a tensor receives, flat (numel,)."""
    out = np.zeros(w.q.size, dtype=np.int16)
    if isinstance(delta, SparseDelta):
        out[delta.positions] = delta.values
    else:
        positions = np.flatnonzero(w.q)
        bucket, sign = buckets_and_signs(positions, seed, name, delta.num_buckets)
        out[positions] = sign.astype(np.int16) * delta.buckets[bucket].astype(np.int16)
    return out


HASH_BLOCK = 1 << 20  # entries per block when expanding hashed deltas (bounds temporaries)


def _applied(name: str, delta: TensorDelta, w: QuantizedWeight, seed: int, in_place: bool) -> np.ndarray:
    """New flat int8 values; memory beyond the copy is O(changed entries) or O(HASH_BLOCK)."""
    flat = w.q.reshape(-1)
    out = flat if in_place else flat.copy()
    if isinstance(delta, SparseDelta):
        p = delta.positions
        out[p] = np.clip(flat[p].astype(np.int16) + delta.values, -QMAX, QMAX)
        return out
    buckets = delta.buckets.astype(np.int16)
    for start in range(0, flat.size, HASH_BLOCK):
        p = np.flatnonzero(flat[start:start + HASH_BLOCK]) + start
        bucket, sign = buckets_and_signs(p, seed, name, delta.num_buckets)
        out[p] = np.clip(out[p].astype(np.int16) + sign * buckets[bucket], -QMAX, QMAX)
    return out


def apply_diff(base: DeviceModel, diff: Diff, *, check_hashes: bool = True, in_place: bool = False) -> DeviceModel:
    """Return a DeviceModel = base + diff.

    With `check_hashes`, the base must hash to `diff.base_hash` and the result
    to `diff.target_hash`; otherwise DiffError / no model. By default `base` is
    not modified (changed tensors are copied); `in_place` writes into base's
    arrays instead, so extra memory is O(changed entries): for a device that
    loaded the base from disk just to apply it (on failure, reload it).
    """
    if diff.model_id != base.model_id:
        raise DiffError(f"diff is for model {diff.model_id!r}, this model is {base.model_id!r}")
    if check_hashes:
        actual = base.content_hash()
        if actual != diff.base_hash:
            raise DiffError(f"diff expects base model {diff.base_hash} (version {diff.base_version}), "
                            f"this model is {actual} (version {base.version})")
    unknown = set(diff.deltas) - set(base.weights)
    if unknown:
        raise DiffError(f"diff changes tensors the model does not have: {sorted(unknown)}")
    weights = dict(base.weights)  # unchanged tensors are shared, not copied
    for name, delta in diff.deltas.items():
        w = base.weights[name]
        check_delta(name, delta, w)
        weights[name] = QuantizedWeight(_applied(name, delta, w, diff.seed, in_place).reshape(w.q.shape), w.scale)
    result = DeviceModel(base.config, base.tokenizer, weights, dict(base.floats), base.model_id,
                         diff.target_version, dict(base.metadata))
    if check_hashes:
        actual = result.content_hash()
        if actual != diff.target_hash:
            raise DiffError(f"applying the diff produced {actual}, expected target {diff.target_hash}")
    return result
