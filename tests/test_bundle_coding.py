"""bench/bundle_coding.py: a real hybrid bundle's fixed part, and the same diff in format 3."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.bundle_coding import coding_headroom
from device_agent.diff import HashedDelta, SparseDelta
from diffing.diffs.int8_domain import finish_diff
from packager.bundle import encode_diff_bundle
from tests.tiny import tiny_device_model


def test_format_3_keeps_the_payload_and_shrinks_the_fixed_part(tmp_path: Path) -> None:
    base = tiny_device_model()
    rng = np.random.default_rng(0)
    names = sorted(base.weights)
    deltas = {names[0]: HashedDelta(64, rng.integers(-20, 21, 64).astype(np.int8))}
    for name in names[1:]:
        positions = np.sort(rng.choice(base.weights[name].q.size, 40, replace=False))
        deltas[name] = SparseDelta(positions, rng.choice([-6, -4, 4, 6], 40).astype(np.int8))
    path = tmp_path / "d.otab"
    path.write_bytes(encode_diff_bundle(finish_diff(base, "hybrid", deltas, 2, seed=7), base))
    row = coding_headroom(path, base)
    assert row["format"] == 1 and row["sections"] == len(deltas)
    assert row["fixed"] + row["payload"] == row["bytes"] == path.stat().st_size
    assert row["compact_bytes"] == row["compact_fixed"] + row["payload"]  # the same sections
    assert row["compact_fixed"] < row["fixed"]  # JSON rows of one shape compress
    assert row["compact_and_one_frame_bytes"] < row["compact_bytes"]
