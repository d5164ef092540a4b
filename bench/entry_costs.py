"""What a sparse entry costs in a bundle, and what cheaper codings of a trained diff would save and lose.

    python bench/entry_costs.py work/sparse2.otab [--model models/base-v1.otam] [--update novel_names] [--bytes-only]

Takes a trained sparse (or hybrid) diff bundle, splits its bytes into positions and values
(each stream zstd-compressed on its own, as the bundle does for the whole section), and
measures alternatives on the same diff, against it as the baseline in the same run:
- values with fewer bits: rounded to a per-tensor step of 2 or 4 (shipped as value / step),
  or ternary (sign times the tensor's mean |value|): bytes as they would be coded, and WER
  of the diff so changed, through the int8 runtime;
- positions coded by row: per row, the count of entries (varint) then the in-row column gaps.
Writes bench/results/entry_costs.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import ORIGINAL_TEST, UPDATES, wer_on  # noqa: E402
from device_agent.device_model import QMAX, DeviceModel  # noqa: E402
from device_agent.diff import Diff, SparseDelta, apply_diff  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from device_agent.sparse_coding import index_encode, varint_encode  # noqa: E402
from device_agent.bundle import decode_bundle  # noqa: E402
from packager.bundle import encode_diff_bundle  # noqa: E402


def zstd_len(raw: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(raw)) if raw else 0


def row_coded(positions: np.ndarray, cols: int, rows: int) -> bytes:
    """Per row: entry count, then column gaps within the row (varints)."""
    r, c = positions // cols, positions % cols
    counts = np.bincount(r, minlength=rows)
    gaps = []
    for row in np.flatnonzero(counts):
        cs = np.sort(c[r == row])
        gaps.append(np.concatenate([[cs[0]], np.diff(cs) - 1]))
    return varint_encode(counts) + (varint_encode(np.concatenate(gaps)) if gaps else b"")


def coarsened(diff: Diff, base: DeviceModel, how: str) -> tuple[Diff, int]:
    """The diff with its sparse values coded more cheaply -> (diff as applied, value-stream bytes)."""
    deltas, value_bytes = {}, 0
    for name, d in diff.deltas.items():
        if not isinstance(d, SparseDelta):
            deltas[name] = d
            continue
        v = d.values.astype(np.int16)
        if how == "ternary":
            step = max(1, int(round(np.abs(v).mean())))
            codes = np.sign(v)
        else:
            step = int(how.split("_")[1])
            codes = np.round(v / step).astype(np.int16)
            codes[codes == 0] = np.sign(v[codes == 0])  # an entry shipped stays an entry
        new = np.clip(codes * step, -QMAX, QMAX).astype(np.int8)
        value_bytes += zstd_len(codes.astype(np.int8).tobytes()) + 1  # + the per-tensor step
        deltas[name] = SparseDelta(d.positions, new)
    changed = Diff(diff.method, diff.model_id, diff.base_version, diff.target_version, diff.base_hash, "", deltas,
                   diff.seed, dict(diff.metadata), diff.channels)
    changed.target_hash = apply_diff(base, changed, check_hashes=False).content_hash()
    return changed, value_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--update", default="novel_names", choices=[u[0] for u in UPDATES])
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--bytes-only", action="store_true", help="sizes only, no WER (no test data needed)")
    parser.add_argument("--results", default="entry_costs", help="name of the results JSON in bench/results")
    args = parser.parse_args()
    base = load_model(args.model)
    diff = decode_bundle(args.bundle.read_bytes()).diff
    assert diff is not None
    model_bytes = len(encode_model(base))
    test = next(u for u in UPDATES if u[0] == args.update)[2]

    def wers(model: DeviceModel) -> dict[str, float]:
        if args.bytes_only:
            return {}
        return {"wer_update": wer_on(model, test, args.eval_limit),
                "wer_original": wer_on(model, ORIGINAL_TEST, args.eval_limit)}
    sparse = {n: d for n, d in diff.deltas.items() if isinstance(d, SparseDelta)}
    entries = sum(d.values.size for d in sparse.values())
    pos_index = sum(zstd_len(index_encode(d.positions)) for d in sparse.values())
    pos_rows = sum(zstd_len(row_coded(d.positions, base.weights[n].q.shape[1], base.weights[n].q.shape[0]))
                   for n, d in sparse.items())
    values = sum(zstd_len(d.values.tobytes()) for d in sparse.values())
    bundle_bytes = len(encode_diff_bundle(diff, base))
    rows = [{"coding": "as shipped (baseline)", "bundle_bytes": bundle_bytes,
             "bits_per_entry": round(8 * bundle_bytes / entries, 2),
             "position_bits": round(8 * pos_index / entries, 2), "value_bits": round(8 * values / entries, 2),
             **wers(apply_diff(base, diff))}]
    rows.append({"coding": "positions by row", "position_bits": round(8 * pos_rows / entries, 2),
                 "saved_bytes": pos_index - pos_rows})
    for how in ("step_2", "step_4", "ternary"):
        changed, value_bytes = coarsened(diff, base, how)
        rows.append({"coding": f"values {how}", "value_bits": round(8 * value_bytes / entries, 2),
                     "saved_bytes": values - value_bytes, **wers(apply_diff(base, changed))})
    for row in rows:
        print(json.dumps(row))
    write_results(args.results, {"model_hash": base.content_hash(), "model_bytes": model_bytes,
                                  "bundle": str(args.bundle), "update": args.update, "entries": entries,
                                  "eval_limit": args.eval_limit, "rows": rows})


if __name__ == "__main__":
    main()
