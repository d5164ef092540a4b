"""Which parts of a full fine-tune carry an update: its matrices swapped into the base, part by part.

For each group of weight matrices (named by prefix), the base model gets the fine-tuned model's int8
matrices of that group and keeps all else; each mix is scored through the int8 runtime on the
update's test or dev manifest, next to the base and the fine-tune themselves in the same run. A part
that alone moves WER most is where a budgeted diff must put its change.

    python bench/teacher_parts.py work/full_intent.otam work/dev/novel_intent/test.jsonl \
        [--base models/base-v1.otam] [--eval-limit 300] [--results teacher_parts]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import wer_on  # noqa: E402
from device_agent.device_model import DeviceModel  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from diffing.diffs.api import check_teacher  # noqa: E402

PARTS = {  # name -> prefixes of the matrices taken from the fine-tune
    "encoder": ("encoder.",),
    "prediction network": ("predictor.",),
    "joint": ("joint.",),
    "prediction network and joint": ("predictor.", "joint."),
}


def mix(base: DeviceModel, tuned: DeviceModel, prefixes: tuple[str, ...]) -> DeviceModel:
    """The base with `tuned`'s matrices whose names start with one of `prefixes` (all else the base's);
    `tuned` has the base's architecture (checked once, in main)."""
    weights = {n: tuned.weights[n] if n.startswith(prefixes) else w for n, w in base.weights.items()}
    return replace(base, weights=weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tuned", type=Path, help="the full fine-tune (.otam) of the base on the update")
    parser.add_argument("manifest", type=Path, help="the update's test or dev manifest")
    parser.add_argument("--base", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--results", default="teacher_parts")
    args = parser.parse_args()
    base, tuned = load_model(args.base), load_model(args.tuned)
    check_teacher(base, args.tuned)  # the same architecture, front end and tokenizer as a diff's teacher
    base_wer, tuned_wer = wer_on(base, args.manifest, args.eval_limit), wer_on(tuned, args.manifest, args.eval_limit)
    rows = [{"model": "base", "wer": base_wer}]
    for name, prefixes in PARTS.items():
        wer = wer_on(mix(base, tuned, prefixes), args.manifest, args.eval_limit)
        # share of the fine-tune's gain this part alone gives
        rows.append({"model": f"base + fine-tuned {name}", "wer": wer,
                     "share_of_gain": round((base_wer - wer) / (base_wer - tuned_wer), 3) if base_wer != tuned_wer else None})
    rows.append({"model": "full fine-tune", "wer": tuned_wer, "share_of_gain": 1.0})
    for row in rows:
        gain = f"  ({row['share_of_gain']:.0%} of the fine-tune's gain)" if row.get("share_of_gain") is not None else ""
        print(f"{row['model']:45s} {row['wer']:.1%}{gain}")
    write_results(args.results, {"base_hash": base.content_hash(), "tuned_hash": tuned.content_hash(),
                                 "manifest": str(args.manifest), "eval_limit": args.eval_limit, "rows": rows})


if __name__ == "__main__":
    main()
