"""The exact integer diff between two models that differ only in int8 weight values and added words."""
from __future__ import annotations

import numpy as np

from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, SparseDelta
from device_agent.errors import DiffError


def exact_diff(base: DeviceModel, target: DeviceModel) -> Diff:
    """Every changed int8 entry, so applying it to `base` yields `target` bit for bit.

    Raises DiffError when an int8 diff cannot express the change (other config
    or model id, changed scales or float tensors, a step beyond the int8 range):
    such releases ship as full bundles.
    """
    if base.config != target.config or base.model_id != target.model_id:
        raise DiffError("models differ in config or model id; build a full bundle instead")
    added = tuple(sorted(set(target.tokenizer.words) - set(base.tokenizer.words)))
    if target.tokenizer.symbols != base.tokenizer.symbols or len(base.tokenizer.words) + len(added) != \
            len(target.tokenizer.words):
        raise DiffError("models differ in tokenizer symbols, or the target drops words of the base's word list "
                        "(a diff only adds words); build a full bundle instead")
    deltas = {}
    for name, w in base.weights.items():
        t = target.weights[name]
        if not np.array_equal(w.scale, t.scale):
            raise DiffError(f"{name}: scales differ, an int8 diff cannot express that; build a full bundle")
        d = t.q.reshape(-1).astype(np.int16) - w.q.reshape(-1).astype(np.int16)
        positions = np.flatnonzero(d)
        if np.any(np.abs(d[positions]) > 127):
            raise DiffError(f"{name}: a change exceeds the int8 delta range; build a full bundle")
        if positions.size:
            deltas[name] = SparseDelta(positions, d[positions].astype(np.int8))
    for name, t in base.floats.items():
        if not np.array_equal(t, target.floats[name]):
            raise DiffError(f"{name}: float tensors differ; build a full bundle")
    return Diff("exact", base.model_id, base.version, target.version, base.content_hash(), target.content_hash(),
                deltas, words=added)
