"""One diff on one update: the quick loop for tuning a method before the chain benchmark.

    python bench/diff_one_update.py sparse '{"lr": 1.0}' --budget-share 0.02 [--update novel_names] [--split dev]

Learns the diff against the base model, applies it with the device code, and
prints bundle bytes (and their share of the full model file), changed
entries, training seconds and WER through the int8 runtime on the update's
test set and the original test set (`--split dev`: on the update's dev split and the original dev
set, the splits settings are chosen on; see bench/update_chain_dev.py). Each run is appended to
bench/results/diff_one_update.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, SHIPPED_MODEL  # noqa: E402
from bench.update_chain import ORIGINAL_TEST, REPLAY, REPLAY_LIMIT, UPDATES, base_replay_pool, wer_on  # noqa: E402
from bench.update_chain_dev import SPLITS  # noqa: E402
from device_agent.diff import apply_diff  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from diffing.diffs import DIFF_METHODS, learn_diff  # noqa: E402
from packager.bundle import encode_diff_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=sorted(DIFF_METHODS))
    parser.add_argument("config", nargs="?", default="{}", help="JSON of config fields, e.g. '{\"lr\": 1.0}'")
    parser.add_argument("--budget-share", type=float, default=0.02, help="budget as a share of the model file's bytes")
    parser.add_argument("--update", default="novel_names", choices=[u[0] for u in UPDATES])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--replay", type=Path,
                        help="replay manifest (default: the chain's pool from the base training data)")
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--split", choices=["test", "dev"], default="test",
                        help="score on the test splits, or on the chain's dev splits (bench/update_chain_dev.py)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, help="also write the diff bundle here")
    args = parser.parse_args()
    base = load_model(args.model)
    args.replay = args.replay or base_replay_pool(REPLAY, REPLAY_LIMIT)
    model_bytes = len(encode_model(base))
    config_cls = DIFF_METHODS[args.method][0]
    fields = {"budget": int(args.budget_share * model_bytes), "threads": args.threads, **json.loads(args.config)}
    _, adapt, test = next(u for u in UPDATES if u[0] == args.update)
    original = ORIGINAL_TEST
    if args.split == "dev":  # the chain's dev splits; checked before any training
        if args.update not in SPLITS["dev"].sets:
            raise SystemExit(f"{args.update} has no dev split; dev splits: {sorted(SPLITS['dev'].sets)}")
        test, original = SPLITS["dev"].sets[args.update], SPLITS["dev"].original
    started = time.time()
    diff = learn_diff(base, adapt, config_cls(**fields), replay_manifest=args.replay, log=print)
    seconds = time.time() - started
    new = apply_diff(base, diff)
    bundle = encode_diff_bundle(diff, base)
    size = len(encode_model(new)) if args.method == "full" else len(bundle)
    if args.save:
        args.save.write_bytes(bundle)
    record = {"method": args.method, "config": fields, "update": args.update, "model_hash": base.content_hash(),
              "replay": str(args.replay), "split": args.split,
              "bytes": size, "share_of_model": round(size / model_bytes, 4), "entries": diff.nonzero_entries(),
              "train_seconds": round(seconds, 1), "wer_update": wer_on(new, test, args.eval_limit),
              "wer_original": wer_on(new, original, args.eval_limit)}
    print(json.dumps(record))
    out = RESULTS / "diff_one_update.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(runs + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()
