"""bench/free_positions.py: entries on positions earlier diffs touched, counted and priced on real bundles."""
from __future__ import annotations

import numpy as np

from bench.free_positions import measure
from device_agent.diff import SparseDelta, apply_diff
from diffing.diffs.int8_domain import finish_diff
from packager.bundle import encode_diff_bundle
from tests.tiny import tiny_device_model


def test_entries_on_touched_positions_are_counted_and_priced() -> None:
    base = tiny_device_model()
    name = max(base.weights, key=lambda n: base.weights[n].q.size)
    rng = np.random.default_rng(0)
    first_positions = np.sort(rng.choice(base.weights[name].q.size, 120, replace=False))
    # the second diff reuses 50 of the first's positions and adds 70 new ones
    unused = np.setdiff1d(np.arange(base.weights[name].q.size), first_positions)
    second_positions = np.sort(np.concatenate([first_positions[::2][:50], rng.choice(unused, 70, replace=False)]))

    def values(n: int) -> np.ndarray:
        return rng.choice([-6, -4, -2, 2, 4, 6], n).astype(np.int8)

    first = finish_diff(base, "sparse", {name: SparseDelta(first_positions, values(120))}, 2)
    second = finish_diff(apply_diff(base, first), "sparse", {name: SparseDelta(second_positions, values(120))}, 3)

    rows = measure(base, [first, second])
    assert [r["at_touched_positions"] for r in rows] == [0, 50]
    assert [r["touched_positions_before"] for r in rows] == [0, 120]
    assert rows[0]["bytes_shipped"] == rows[0]["bytes_values_over_touched"] == rows[0]["bytes_bound_values_only"]
    # priced on the bundles that ship: the second against the model the first produced
    assert rows[1]["bytes_shipped"] == len(encode_diff_bundle(second, apply_diff(base, first)))
