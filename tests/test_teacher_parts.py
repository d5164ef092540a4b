"""bench/teacher_parts.py: a fine-tune's matrices swapped into the base, part by part."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.teacher_parts import PARTS, mix
from device_agent.device_model import QuantizedWeight
from tests.tiny import tiny_device_model


def test_a_mix_takes_exactly_the_parts_matrices_from_the_fine_tune() -> None:
    base = tiny_device_model()
    tuned = replace(base, weights={n: QuantizedWeight(np.clip(w.q.astype(np.int16) + 1, -127, 127).astype(np.int8),
                                                      w.scale) for n, w in base.weights.items()})
    for prefixes in PARTS.values():
        mixed = mix(base, tuned, prefixes)
        for name, w in mixed.weights.items():
            source = tuned if name.startswith(prefixes) else base
            assert np.array_equal(w.q, source.weights[name].q), name
        assert mixed.content_hash() not in (base.content_hash(), tuned.content_hash())
