"""Diff training wall time vs full fine-tune, same data, same epochs, same process, one thread.

    python bench/diff_walltime.py [--epochs 2] [--update novel_names]

The update chain records training seconds too, but its processes share the
cores; this runs the methods back to back on an otherwise idle machine and
prints each method's time as a ratio of the full fine-tune's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import REPLAY, REPLAY_LIMIT, UPDATES, base_replay_pool  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from diffing.diffs import HashedDiffConfig, HybridDiffConfig, SparseMaskDiffConfig, learn_diff  # noqa: E402
from diffing.diffs.baselines import FullFinetuneConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--update", default="novel_names", choices=[u[0] for u in UPDATES])
    parser.add_argument("--budget-share", type=float, default=0.02)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    args = parser.parse_args()
    base = load_model(args.model)
    budget = int(args.budget_share * len(encode_model(base)))
    _, adapt, _ = next(u for u in UPDATES if u[0] == args.update)
    configs = {"full": FullFinetuneConfig(epochs=args.epochs, threads=1),
               "sparse": SparseMaskDiffConfig(budget=budget, epochs=args.epochs, threads=1),
               "hashed": HashedDiffConfig(budget=budget, epochs=args.epochs, threads=1),
               "hybrid": HybridDiffConfig(budget=budget, epochs=args.epochs, threads=1)}
    replay = base_replay_pool(REPLAY, REPLAY_LIMIT)  # the chain's replay pool
    seconds = {}
    for name, cfg in configs.items():
        started = time.perf_counter()
        learn_diff(base, adapt, cfg, replay_manifest=replay)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {seconds[name]} s")
    ratios = {name: round(s / seconds["full"], 2) for name, s in seconds.items() if name != "full"}
    print("wall time vs full fine-tune:", ", ".join(f"{k} {v}x" for k, v in ratios.items()), "(target <= 1.5x)")
    write_results("diff_walltime", {"model_hash": base.content_hash(), "update": args.update, "epochs": args.epochs,
                                    "budget_bytes": budget, "seconds": seconds, "ratio_vs_full": ratios,
                                    "command": f"python bench/diff_walltime.py --epochs {args.epochs} --update {args.update}"})


if __name__ == "__main__":
    main()
