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

Channel deltas (`Diff.channels`, LHUC / BitFit style) change one float per
output channel, coded as int8 `codes` times a power-of-two step 2^e:
- an int8 matrix's scales: scale * (1 + code * 2^e), e in [-16, -7];
- a bias vector (float tensors named `*bias*`): bias + code * 2^e, e in [-24, -1].
`1 + code * 2^e` and `code * 2^e` are exact in float32, and one IEEE float32
multiply or add is correctly rounded, so every platform gets the same bytes.
Only channels with a nonzero code change.

Words (`Diff.words`) join the tokenizer's word list, which the decoder favours
(device_agent.runtime): the list after apply is the sorted union. Config,
tokenizer symbols and the other float tensors are never changed by a diff.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device_agent.device_model import QMAX, DeviceModel, QuantizedWeight
from device_agent.errors import DiffError, TokenizerError, WrongBaseError
from device_agent.hashing import buckets_and_signs
from device_agent.model_config import tensor_layout
from device_agent.tokenizer import CharTokenizer, check_words

MAX_BUCKETS = 1 << 24
SCALE_STEP_EXPS = range(-16, -6)  # factor 1 + code * 2^e in [1/128, 2): positive, exact in float32
BIAS_STEP_EXPS = range(-24, 0)


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
class ChannelDeltas:
    """Channel deltas for every tensor of `channel_tensors(model)`, in that order, packed: one step
    exponent per tensor (0 for a tensor left unchanged) and one int8 code per channel, all tensors'
    channels back to back. The packing needs no names: the base model's layout says which is which."""

    step_exps: np.ndarray  # (tensors,) int8
    codes: np.ndarray  # (channels,) int8 in [-127, 127]

    def __post_init__(self) -> None:
        self.step_exps = np.asarray(self.step_exps, dtype=np.int8)
        self.codes = np.asarray(self.codes, dtype=np.int8)

    @classmethod
    def pack(cls, model: DeviceModel, per_tensor: dict[str, tuple[int, np.ndarray]]) -> "ChannelDeltas":
        """{tensor name: (step exponent, codes)} -> the packed form (unnamed tensors: unchanged)."""
        tensors = channel_tensors(model)
        unknown = set(per_tensor) - {n for n, _, _ in tensors}
        if unknown:
            raise DiffError(f"channel deltas for {sorted(unknown)}: the model has no int8 matrix or bias vector "
                            "of those names")
        exps, codes = [], []
        for name, _, channels in tensors:
            exp, c = per_tensor.get(name, (0, np.zeros(channels, dtype=np.int8)))
            c = np.asarray(c, dtype=np.int8)
            exps.append(exp if np.any(c) else 0)
            codes.append(c)
        return cls(np.array(exps, dtype=np.int8), np.concatenate(codes) if codes else np.zeros(0, np.int8))

    def unpack(self, model: DeviceModel) -> dict[str, tuple[str, int, np.ndarray]]:
        """-> {name: (kind, step exponent, codes)} for the tensors that change; DiffError if the
        packing does not fit `model` or breaks a rule."""
        tensors = channel_tensors(model)
        total = sum(c for _, _, c in tensors)
        if self.step_exps.shape != (len(tensors),) or self.codes.shape != (total,):
            raise DiffError(f"channel deltas cover {self.step_exps.size} tensors and {self.codes.size} channels; "
                            f"this model has {len(tensors)} and {total}")
        if np.any(self.codes < -QMAX):
            raise DiffError(f"channel codes must be within [-{QMAX}, {QMAX}]")
        out, start = {}, 0
        for (name, kind, channels), exp in zip(tensors, self.step_exps.tolist()):
            codes = self.codes[start:start + channels]
            start += channels
            steps = SCALE_STEP_EXPS if kind == "scale" else BIAS_STEP_EXPS
            if not np.any(codes):
                if exp != 0:
                    raise DiffError(f"{name}: unchanged {kind}s must have step exponent 0, got {exp}")
                continue
            if exp not in steps:
                raise DiffError(f"{name}: {kind} step exponent {exp} outside [{steps[0]}, {steps[-1]}]")
            out[name] = (kind, exp, codes)
        return out


def channel_tensors(model: DeviceModel) -> list[tuple[str, str, int]]:
    """(name, "scale" | "bias", channels) of every tensor a channel delta may change, in the model's
    canonical order: every int8 matrix's scales, then every float vector named `*bias*`."""
    layout = tensor_layout(model.config)
    scales = [(n, "scale", shape[0]) for n, (kind, shape) in layout.items() if kind == "int8"]
    biases = [(n, "bias", shape[0]) for n, (kind, shape) in layout.items()
              if kind != "int8" and "bias" in n and len(shape) == 1]
    return scales + biases


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
    channels: ChannelDeltas | None = None  # per-channel scale and bias deltas
    words: tuple[str, ...] = ()  # added to the tokenizer's word list (sorted, unique)

    def nonzero_entries(self) -> int:
        """Shipped values: sparse entries, hashed buckets and nonzero channel codes."""
        return sum(d.values.size if isinstance(d, SparseDelta) else d.buckets.size for d in self.deltas.values()) \
            + (int(np.count_nonzero(self.channels.codes)) if self.channels is not None else 0)


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


def _channel_applied(name: str, kind: str, step_exp: int, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """New float32 scales or biases; DiffError if a scale is not a positive normal float or a bias overflows."""
    out = values.astype(np.float32, copy=True)
    changed = codes != 0
    step = np.float32(2.0 ** step_exp)
    codes = codes[changed].astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "scale":
            out[changed] = out[changed] * (np.float32(1) + codes * step)
        else:
            out[changed] = out[changed] + codes * step
    if not np.all(np.isfinite(out)) or (kind == "scale" and np.any(out < np.finfo(np.float32).tiny)):
        what = "finite positive normal floats" if kind == "scale" else "finite"
        raise DiffError(f"{name}: the {kind} delta makes {kind}s that are not {what}")
    return out


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
            raise WrongBaseError(f"diff expects base model {diff.base_hash} (version {diff.base_version}), "
                            f"this model is {actual} (version {base.version})")
    unknown = set(diff.deltas) - set(base.weights)
    if unknown:
        raise DiffError(f"diff changes tensors the model does not have: {sorted(unknown)}")
    # every check before anything is written (in place, a refused diff leaves the base intact)
    tokenizer = tokenizer_with_words(base, diff.words)
    channels = diff.channels.unpack(base) if diff.channels is not None else {}
    for name, delta in diff.deltas.items():
        check_delta(name, delta, base.weights[name])
    new_floats = {name: _channel_applied(name, kind, exp, codes, base.floats[name])
                  for name, (kind, exp, codes) in channels.items() if kind == "bias"}
    new_scales = {name: _channel_applied(name, kind, exp, codes, base.weights[name].scale)
                  for name, (kind, exp, codes) in channels.items() if kind == "scale"}
    weights = dict(base.weights)  # unchanged tensors are shared, not copied
    for name, delta in diff.deltas.items():
        w = base.weights[name]
        weights[name] = QuantizedWeight(_applied(name, delta, w, diff.seed, in_place).reshape(w.q.shape), w.scale)
    for name, scale in new_scales.items():
        weights[name] = QuantizedWeight(weights[name].q, scale)
    result = DeviceModel(base.config, tokenizer, weights, {**base.floats, **new_floats}, base.model_id,
                         diff.target_version, dict(base.metadata))
    if check_hashes:
        actual = result.content_hash()
        if actual != diff.target_hash:
            raise DiffError(f"applying the diff produced {actual}, expected target {diff.target_hash}")
    return result


def tokenizer_with_words(base: DeviceModel, words: tuple[str, ...]) -> CharTokenizer:
    """The base's tokenizer with the diff's words added; DiffError if they do not make a valid word list."""
    if not words:
        return base.tokenizer
    try:
        check_words(words, base.tokenizer.symbols)
        return base.tokenizer.with_words(words)
    except TokenizerError as exc:
        raise DiffError(f"diff words: {exc}") from None
