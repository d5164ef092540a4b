"""Scores of cached update chains on other splits than the ones the chain reports: dev splits to
choose settings on, and larger test splits to report with less noise.

The chain benchmark (`bench/update_chain.py`) reports on test splits of 200 utterances per
update. This rebuilds chains from their cached diff bundles and scores each model again:

- `--split dev` (default): what a chain's settings are chosen on, splits nobody reports on.
  After update k, the dev split of update k (300 utterances, seed 11, other sentences and the
  test voices), and after the last update the original dev set (250 of `work/corpus/dev`, seed 7).
  The real-speech update has no dev split (four speakers; the fourth is its test).
- `--split test_large`: after update k, its test split plus 400 more utterances (seed 13) of the
  same kind, 600 in all, and the real speaker's whole test split (all 210 of the held-out
  speaker's concatenations); after the last update all 500 of the original test set (the chain
  scores 200 of each). Two seeds of the same diff differed by 6.4 points on a 200-utterance test
  split where their dev WERs differed by 0.6 (docs/BENCHMARKS.md): a larger test split tells
  settings apart that 200 utterances cannot.

    ota data synth --out work/dev/NAME --split NAME --train 0 --test 300 --seed 11   # each synthetic update
    ota data synth --out work/corpus/dev --train 0 --test 500 --seed 7
    ota data synth --out work/test_extra/NAME --split NAME --train 0 --test 400 --seed 13   # test_large
    ota data merge work/updates/NAME/test.jsonl work/test_extra/NAME/test.jsonl --out work/test_large/NAME/test.jsonl
    python bench/update_chain.py ...   # the chains, cached
    python bench/update_chain_dev.py [--split test_large] \
        bench/results/update_chain_distill1.partial.json:hybrid+teacher:0.03 ...

Each argument is CACHE:METHOD:BUDGET; `full` chains are named CACHE:full:1.0. A METHOD ending in
`+words` scores the cached chain with the word list a `"words": true` diff would add after each update
(diffing.diffs.word_list, chosen by the model before it): `CACHE:full+words:1.0` is the full fine-tune
that also ships word lists, the reference for diffs that do. Chains
scored earlier stay in bench/results/update_chain_dev.json (`update_chain_test_large.json`;
a chain scored again is replaced), so each can be scored as soon as it is done. The gap is
WER minus that of the full fine-tune chain its cache holds (its own, or the one `--full-from`
copied), once that chain is scored too.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import ORIGINAL_TEST, UPDATES, WORK, _load_diff, diff_dir_of, wer_on  # noqa: E402
from device_agent.device_model import DeviceModel  # noqa: E402
from device_agent.diff import apply_diff  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from diffing.diffs.word_list import missed_words  # noqa: E402


@dataclass(frozen=True)
class Split:
    sets: dict[str, Path]  # update name -> the manifest its model is scored on after it
    limit: int  # utterances scored per update (spread over the manifest)
    original: Path
    original_limit: int
    results: str  # bench/results/RESULTS.json


SPLITS = {
    "dev": Split({name: WORK / "dev" / name / "test.jsonl" for name, _, _ in UPDATES if name.startswith("novel_")},
                 300, WORK / "corpus/dev/test.jsonl", 250, "update_chain_dev"),
    "test_large": Split({name: WORK / "test_large" / name / "test.jsonl" if name.startswith("novel_") else test
                         for name, _, test in UPDATES}, 600, ORIGINAL_TEST, 500, "update_chain_test_large"),
}


def score_chain(base: DeviceModel, cache: Path, method: str, budget: float, split: str) -> dict:
    """WER after each update (on the split's manifest for it) and on the original set after the last,
    under the keys SPLIT and original_SPLIT."""
    diff_dir = diff_dir_of(cache)
    records = json.loads(cache.read_text())
    method, listing = method.removesuffix("+words"), method.endswith("+words")
    model, words = base, ()
    if records["_setup"]["base_hash"] != model.content_hash():
        raise SystemExit(f"{cache}: chains of another base model than {SHIPPED_MODEL}")
    scoring, wers = SPLITS[split], {}
    for name, adapt, _ in UPDATES:
        key = f"{method}/{budget}/{name}"
        if key not in records:
            raise SystemExit(f"{cache}: no {key} yet; run the chain first")
        if listing:  # chosen by the model the device runs before this update, its list included
            words += missed_words(replace(model, tokenizer=model.tokenizer.with_words(words)), adapt)
        model = apply_diff(model, _load_diff(diff_dir, key))
        if model.content_hash() != records[key]["target_hash"]:
            raise SystemExit(f"{cache}: {key} does not rebuild the recorded model")
        listed = replace(model, tokenizer=model.tokenizer.with_words(words))
        if name in scoring.sets:
            wers[name] = wer_on(listed, scoring.sets[name], scoring.limit)
    last_full = records.get(f"full/1.0/{UPDATES[-1][0]}", {})
    return {"cache": str(cache), "config": records["_setup"].get("config", {}),
            "method": method + "+words" * listing, "budget": budget,
            "full_hash": last_full.get("target_hash"), split: wers,
            f"original_{split}": wer_on(listed, scoring.original, scoring.original_limit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chains", nargs="+", help="CACHE:METHOD:BUDGET")
    parser.add_argument("--split", choices=sorted(SPLITS), default="dev")
    args = parser.parse_args()
    split, key = SPLITS[args.split], args.split
    torch.set_num_threads(1)  # next to chain processes, one core
    for path in [*split.sets.values(), split.original]:
        if not path.exists():
            raise SystemExit(f"{path} missing: synthesize the {key} splits first (see this module's docstring)")
    base = load_model(SHIPPED_MODEL)
    model_hash = base.content_hash()
    path = RESULTS / f"{split.results}.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    results = earlier.get("chains", []) if earlier.get("model_hash") == model_hash else []
    for spec in args.chains:
        cache, method, budget = spec.rsplit(":", 2)
        scored = score_chain(base, Path(cache), method, float(budget), key)
        results = [r for r in results if (r["cache"], r["method"], r["budget"]) != (cache, method, float(budget))]
        results.append(scored)
        print(json.dumps(scored))
    for r in results:
        # the gap is to the full fine-tune chain learned on the same update sets (a cache's own or the one
        # its --full-from copied): chains of another synthesis of the data have another full fine-tune.
        # Records scored before full_hash existed keep the gaps they were written with.
        # Chains that ship word lists are also compared with the full fine-tune that ships them (_vs_words).
        for reference, suffix in (("full", ""), ("full+words", "_vs_words")):
            full = next((f for f in results if f["method"] == reference and f.get("full_hash") == r.get("full_hash")),
                        None)
            if full is not None and r.get("full_hash"):
                gaps = {n: round(100 * (w - full[key][n]), 1) for n, w in r[key].items()}
                r[f"gap_{key}{suffix}"], r[f"mean_gap_{key}{suffix}"] = gaps, round(sum(gaps.values()) / len(gaps), 1)
    write_results(split.results, {"model_hash": model_hash, "split": key,
                                  f"{key}_limit": split.limit, f"original_{key}_limit": split.original_limit,
                                  "chains": results})
    for r in results:
        config = "".join(f" {k}={v}" for k, v in sorted(r["config"].items()))
        label = f"{r['method']} {r['budget']:g}{config if not r['method'].startswith('full') else ''}"
        gaps = ", ".join(f"{g:+.1f}" for g in r.get(f"gap_{key}", {}).values())
        wers = ", ".join(f"{100 * w:.1f}%" for w in r[key].values())
        print(f"{r['cache']} {label}: {key} {wers}; gaps {gaps}; mean {r.get(f'mean_gap_{key}', float('nan')):+.1f} "
              f"(to the full fine-tune with word lists {r.get(f'mean_gap_{key}_vs_words', float('nan')):+.1f}); "
              f"original {100 * r[f'original_{key}']:.1f}%")


if __name__ == "__main__":
    main()
