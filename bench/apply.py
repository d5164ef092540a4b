"""Applying a ~2% diff on the device vs copying the model file, in one run.

Model: models/base-v1.otam when present, else a random model of the default
ModelConfig (same layout and size class). The diff changes ~2% of the entries
of every int8 matrix by +-1..2 (sparse bundle).

Measured (best of N wall times, peak extra Python/numpy memory via tracemalloc):
- copy:          shutil.copyfile of the .otam + fsync (what a full-model install costs locally)
- apply_verify:  decode the diff bundle, apply it to the loaded base, check base and target
                 content hashes (device_agent.diff.apply_diff via device_agent.bundle.apply_bundle)
- slot_write:    the agent's whole APPLYING step: load base file, apply_verify, encode the new
                 .otam (zstd level 3: slots never leave the device), write it atomically, read it back
                 and hash it again

    python bench/apply.py
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, best_of, write_results  # noqa: E402
from device_agent.diff import Diff, SparseDelta, apply_diff  # noqa: E402
from device_agent.model_format import FAST_LEVEL, encode_model, load_model, save_model  # noqa: E402
from device_agent.bundle import apply_bundle, decode_bundle  # noqa: E402
from packager.bundle import encode_diff_bundle  # noqa: E402


def base_model(tmp: Path) -> tuple[Path, str]:
    if SHIPPED_MODEL.is_file():
        return SHIPPED_MODEL, "models/base-v1.otam"
    from device_agent.model_config import ModelConfig
    from tests.tiny import tiny_device_model

    path = tmp / "random-default.otam"
    save_model(tiny_device_model(0, ModelConfig(), 0.5), path)
    return path, "random model, default ModelConfig (models/base-v1.otam absent)"


def two_percent_diff(base, seed: int = 0) -> Diff:
    rng = np.random.default_rng(seed)
    deltas = {}
    for name, w in base.weights.items():
        k = max(1, int(w.q.size * 0.02))
        positions = np.sort(rng.choice(w.q.size, k, replace=False))
        deltas[name] = SparseDelta(positions, (rng.integers(1, 3, k) * rng.choice([-1, 1], k)).astype(np.int8))
    diff = Diff("sparse", base.model_id, base.version, base.version + 1, base.content_hash(), "", deltas)
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def peak_extra(fn) -> int:
    """Peak bytes allocated (numpy included) above what was live before `fn`."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as d:
        tmp = Path(d)
        model_path, source = base_model(tmp)
        base = load_model(model_path)
        diff = two_percent_diff(base)
        bundle_bytes = encode_diff_bundle(diff, base)
        changed = diff.nonzero_entries()
        total = sum(w.q.size for w in base.weights.values())

        def copy() -> None:
            dest = tmp / "copy.otam"
            shutil.copyfile(model_path, dest)
            with open(dest, "rb+") as f:
                os.fsync(f.fileno())

        fresh: list = []

        def fresh_base() -> None:  # outside the timed region: the device loads its base from the slot
            fresh[:] = [load_model(model_path)]

        def apply_verify() -> None:
            # in place: the freshly loaded base becomes the result, extra memory is O(diff)
            new = apply_bundle(decode_bundle(bundle_bytes), fresh.pop(), in_place=True)
            assert new.content_hash() == diff.target_hash

        def slot_write() -> None:
            from device_agent.atomic import write_atomic

            b = load_model(model_path)
            new = apply_bundle(decode_bundle(bundle_bytes), b, in_place=True)
            write_atomic(tmp / "slot.otam", encode_model(new, FAST_LEVEL))
            assert load_model(tmp / "slot.otam").content_hash() == diff.target_hash

        fresh_base()
        copy(), apply_verify()  # warm caches and lazy imports
        t_copy = best_of(copy, args.repeats)
        t_apply = float("inf")
        for _ in range(args.repeats):
            fresh_base()
            t_apply = min(t_apply, best_of(apply_verify, 1))
        t_slot = best_of(slot_write, max(1, args.repeats // 2))
        fresh_base()
        m_apply = peak_extra(apply_verify)
        m_slot = peak_extra(slot_write)
        m_copy = peak_extra(copy)
        size = model_path.stat().st_size
    weights = sum(w.q.nbytes for w in base.weights.values()) + sum(a.nbytes for a in base.floats.values())
    result = {
        "model": source, "model_file_bytes": size, "model_in_memory_bytes": weights,
        "diff_changed_entries": changed, "diff_fraction": round(changed / total, 4), "bundle_bytes": len(bundle_bytes),
        "seconds": {"copy": t_copy, "apply_verify": t_apply, "slot_write": t_slot},
        "time_ratio_apply_verify_vs_copy": round(t_apply / t_copy, 2),
        "time_ratio_slot_write_vs_copy": round(t_slot / t_copy, 2),
        "peak_extra_bytes": {"copy": m_copy, "apply_verify": m_apply, "slot_write": m_slot},
        "peak_extra_apply_verify_vs_file": round(m_apply / size, 2),
        "targets": {"time_ratio": "<= 3x (goal 2x)", "peak_extra": "<= model size"},
        "command": f"python bench/apply.py --repeats {args.repeats}",
    }
    import json

    print(json.dumps(result, indent=1))
    write_results("apply", result)


if __name__ == "__main__":
    main()
