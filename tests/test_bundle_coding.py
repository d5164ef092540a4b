"""bench/bundle_coding.py: the fixed part of a real hybrid bundle and what a tighter container would save."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.bundle_coding import coding_headroom
from device_agent.diff import HashedDelta, SparseDelta
from diffing.diffs.int8_domain import finish_diff
from packager.bundle import encode_diff_bundle
from tests.tiny import tiny_device_model


def test_headroom_splits_the_bundle_and_finds_the_manifest_compressible(tmp_path: Path) -> None:
    base = tiny_device_model()
    rng = np.random.default_rng(0)
    names = sorted(base.weights)
    deltas = {names[0]: HashedDelta(64, rng.integers(-20, 21, 64).astype(np.int8))}
    for name in names[1:]:
        positions = np.sort(rng.choice(base.weights[name].q.size, 40, replace=False))
        deltas[name] = SparseDelta(positions, rng.choice([-6, -4, 4, 6], 40).astype(np.int8))
    path = tmp_path / "d.otab"
    path.write_bytes(encode_diff_bundle(finish_diff(base, "hybrid", deltas, 2, seed=7), base))
    row = coding_headroom(path)
    assert row["sections"] == len(deltas)
    assert row["fixed"] + row["payload"] == row["bytes"] == path.stat().st_size
    assert row["fixed_compressed"] < row["fixed"]  # JSON rows of one shape compress
    assert row["tighter_bytes"] == row["fixed_compressed"] + row["payload_one_frame_per_kind"] < row["bytes"]
