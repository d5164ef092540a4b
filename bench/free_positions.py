"""What free positions for earlier-touched entries would save, measured on a cached update chain.

A device that kept the positions its earlier diffs touched (or its original base, to recompute them)
could be sent values only for those positions: a value, possibly zero, for every one of them, coded
by zstd, and positions only for the entries outside them. For each update k >= 2 of a chain, this
measures on the diff that was shipped: how many of its sparse entries sit at positions diffs 1..k-1
touched, the bundle as shipped, the bundle with those positions coded as known (the other entries as
a bundle, plus one zstd frame of int8 values, zeros included, over all earlier-touched positions),
and a bound no coding reaches (the other entries as a bundle, plus the touched entries' values
alone). Hashed sections have no positions and are counted as they are.

    python bench/free_positions.py bench/results/update_chain_r5_prune25.partial_diffs [--method hybrid+teacher] \
        [--budget 0.03] [--results free_positions]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import UPDATES  # noqa: E402
from device_agent.bundle import decode_bundle  # noqa: E402
from device_agent.device_model import DeviceModel  # noqa: E402
from device_agent.diff import Diff, SparseDelta, apply_diff  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from diffing.diffs.sizing import serialized_bytes  # noqa: E402
from packager.bundle import compress_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("diffs", type=Path, help="a chain's cached diffs (bench/results/NAME.partial_diffs)")
    parser.add_argument("--method", default="hybrid+teacher")
    parser.add_argument("--budget", default="0.03")
    parser.add_argument("--results", default="free_positions")
    args = parser.parse_args()
    diffs = []
    for name, _, _ in UPDATES:
        path = args.diffs / f"{args.method}__{args.budget}__{name}.otab"
        if not path.exists():  # a chain still running: the updates it has so far
            break
        diffs.append(decode_bundle(path.read_bytes()).diff)
    model = load_model(SHIPPED_MODEL)
    rows = [{"update": name, **row} for (name, _, _), row in zip(UPDATES, measure(model, diffs))]
    for row in rows:
        print(f"{row['update']}: {row['at_touched_positions']:,} of {row['sparse_entries']:,} sparse entries at positions "
              f"earlier diffs touched ({row['touched_positions_before']:,}); {row['bytes_shipped']:,} B as shipped, "
              f"{row['bytes_values_over_touched']:,} B with a value for every touched position "
              f"({row['bytes_values_over_touched'] / row['bytes_shipped']:.3f}x), "
              f"{row['bytes_bound_values_only']:,} B if those entries' positions cost nothing "
              f"({row['bytes_bound_values_only'] / row['bytes_shipped']:.3f}x)")
    write_results(args.results, {"diffs": str(args.diffs), "method": args.method, "budget": args.budget,
                                 "model_hash": model.content_hash(), "updates": rows})


def measure(model: DeviceModel, diffs: list[Diff]) -> list[dict[str, int]]:
    """One row per diff of a chain that starts at `model`: its sparse entries, how many sit at positions the
    earlier diffs touched, and the bundle's bytes as shipped, with those positions coded as known, and
    the bound."""
    touched: dict[str, np.ndarray] = {}  # tensor -> sorted flat positions earlier diffs changed
    rows = []
    for diff in diffs:
        sparse = {n: d for n, d in diff.deltas.items() if isinstance(d, SparseDelta)}
        free = {n: np.isin(d.positions, touched.get(n, [])) for n, d in sparse.items()}
        shipped = serialized_bytes(diff, model)
        # the other entries as a bundle (hashed sections as they are)
        rest = {n: SparseDelta(d.positions[~free[n]], d.values[~free[n]]) for n, d in sparse.items()
                if (~free[n]).any()}
        hashed = {n: d for n, d in diff.deltas.items() if n not in sparse}
        bundle_part = serialized_bytes(replace(diff, deltas={**hashed, **rest}), model)
        # ... plus a value, zeros included, for every touched position
        over_touched = [_values_at(touched[n], d) for n, d in sparse.items() if n in touched]
        # ... or, a bound no coding reaches, the touched entries' values alone (as if the device knew
        # which touched positions change)
        free_values = [d.values[free[n]] for n, d in sparse.items()]
        rows.append({"sparse_entries": sum(d.positions.size for d in sparse.values()),
                     "at_touched_positions": int(sum(f.sum() for f in free.values())),
                     "touched_positions_before": int(sum(t.size for t in touched.values())),
                     "bytes_shipped": shipped,
                     "bytes_values_over_touched": bundle_part + _zstd_bytes(over_touched),
                     "bytes_bound_values_only": bundle_part + _zstd_bytes(free_values)})
        for n, d in sparse.items():
            touched[n] = np.union1d(touched.get(n, np.zeros(0, np.int64)), d.positions)
        model = apply_diff(model, diff)
    return rows


def _zstd_bytes(values: list[np.ndarray]) -> int:
    """Bytes of these int8 values compressed as the bundle compresses a section; 0 for none."""
    raw = np.concatenate([np.zeros(0, np.int8), *values]).astype(np.int8)
    return len(compress_section(raw.tobytes())) if raw.size else 0


def _values_at(positions: np.ndarray, delta: SparseDelta) -> np.ndarray:
    """int8 values of `delta` at every one of `positions` (0 where it has no entry)."""
    out = np.zeros(positions.size, np.int8)
    _, at, of = np.intersect1d(positions, delta.positions, assume_unique=True, return_indices=True)
    out[at] = delta.values[of]
    return out


if __name__ == "__main__":
    main()
