"""Real-speech updates that carry to people nobody trained on: leave one speaker out.

For each of the four FSDD speakers, an update is learned on the other three speakers' digit strings
(replaying synthetic speech, as the update chain does) and tested on the one left out. Reported per
held-out speaker and as the mean, for the base model, a full fine-tune and the diff methods at shares
of the model file's bytes. Results are cached per (held-out speaker, method, budget), so an
interrupted run resumes.

    python bench/real_speakers.py [--methods full,hashed,hybrid] [--budgets 0.02,0.05,0.1] \
        [--runs full,hybrid@0.05] [--epochs 6] [--speakers george,jackson,lucas,nicolas]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, ROOT, SHIPPED_MODEL, write_results  # noqa: E402
from bench.update_chain import make_config, update_cache  # noqa: E402  (one config and one locked cache for both)
from device_agent.diff import apply_diff  # noqa: E402
from device_agent.manifest import read_manifest, write_manifest  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from device_agent.wer import evaluate  # noqa: E402
from diffing.diffs import learn_diff  # noqa: E402
from diffing.digits import build_digit_manifests  # noqa: E402
from packager.bundle import encode_diff_bundle  # noqa: E402

FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
WORK = ROOT / "work" / "real_speakers"
SPEAKERS = ("george", "jackson", "lucas", "nicolas")
REPLAY = ROOT / "work" / "corpus" / "base_6" / "train.jsonl"  # the shipped model's training data (docs/BASE-MODEL.md)
REPLAY_LIMIT = 2000
CACHE = RESULTS / "real_speakers.partial.json"


def held_out_split(speaker: str, seed: int = 0) -> tuple[Path, Path]:
    """Digit strings (1-4 digits, every recording once) of the other three speakers, and of `speaker`."""
    out = WORK / f"without_{speaker}"
    if not (out / "test.jsonl").exists():
        build_digit_manifests(FSDD, out, concat=(1, 4), seed=seed, test_speakers=(speaker,))
    return out / "train.jsonl", out / "test.jsonl"


def replay_pool(limit: int) -> Path:
    path = WORK / "replay.jsonl"
    if not path.exists():
        utts = read_manifest(REPLAY, check_audio=False)
        write_manifest(path, utts[:: max(1, len(utts) // limit)][:limit])
    return path


def wer_on(model, manifest: Path) -> float:  # type: ignore[no-untyped-def]
    return round(evaluate(Int8Runtime(model).transcribe, read_manifest(manifest, model.tokenizer)).wer, 4)


def summarize(cache: dict, speakers: list[str]) -> dict:
    rows: dict[str, dict] = {}
    for key, rec in cache.items():
        if key.startswith("_"):
            continue
        name = rec["method"] if rec["method"] in ("base", "full") else f"{rec['method']} {rec['budget']:.0%}"
        row = rows.setdefault(name, {"method": rec["method"], "budget": rec["budget"], "per_speaker": {},
                                     "bytes": []})
        row["per_speaker"][rec["held_out"]] = rec["wer_held_out"]
        row["bytes"].append(rec["bytes"])
    for row in rows.values():
        done = [row["per_speaker"][s] for s in speakers if s in row["per_speaker"]]
        row["mean_wer"] = round(statistics.mean(done), 4) if len(done) == len(speakers) else None
        row["mean_bytes"] = round(statistics.mean(row.pop("bytes")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="full,hashed,hybrid")
    parser.add_argument("--budgets", default="0.02,0.05,0.1", help="shares of the model file's bytes")
    parser.add_argument("--runs", default=None,
                        help="instead of methods x budgets: METHOD@SHARE,... (e.g. full,hashed@0.02,hybrid@0.05)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--speakers", default=",".join(SPEAKERS))
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--results", default="real_speakers", help="name of the results JSON in bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model(args.model)
    file_bytes = len(encode_model(base))
    speakers = args.speakers.split(",")
    setup = {"base_hash": base.content_hash(), "epochs": args.epochs, "replay": str(REPLAY.relative_to(ROOT)),
             "replay_limit": REPLAY_LIMIT}
    cache = update_cache(args.cache, {})
    if cache.setdefault("_setup", setup) != setup:
        raise SystemExit(f"{args.cache} holds results for {cache['_setup']}, not {setup}: use another --cache")
    update_cache(args.cache, {"_setup": setup})
    replay = replay_pool(REPLAY_LIMIT)
    if args.runs:
        picked = [(r.partition("@")[0], float(r.partition("@")[2] or 1.0)) for r in args.runs.split(",")]
    else:
        picked = [(m, 1.0) if m == "full" else (m, float(b))
                  for m in args.methods.split(",") for b in (args.budgets.split(",") if m != "full" else [1])]
    runs = [("base", 0.0)] + picked
    for speaker in speakers:
        adapt, test = held_out_split(speaker)
        for method, budget in runs:
            key = f"{speaker}/{method}/{budget}"
            if key in update_cache(args.cache, {}):
                continue
            started = time.time()
            if method == "base":
                model, payload = base, 0
            else:
                diff = learn_diff(base, adapt, make_config(method, int(budget * file_bytes), args.epochs, args.threads),
                                  replay_manifest=replay)
                model = apply_diff(base, diff)
                payload = len(encode_model(model)) if method == "full" else \
                    int(diff.metadata.get("wire_bytes", 0)) or len(encode_diff_bundle(diff, base))
            record = {"held_out": speaker, "method": method, "budget": budget, "bytes": payload,
                      "bytes_vs_model_file": round(payload / file_bytes, 4),
                      "wer_held_out": wer_on(model, test), "wer_seen_speakers": wer_on(model, adapt),
                      "seconds": round(time.time() - started, 1)}
            update_cache(args.cache, {key: record})
            print(json.dumps(record), flush=True)
    cache = update_cache(args.cache, {})
    speakers = [s for s in SPEAKERS if any(k.startswith(s + "/") for k in cache)]
    table = summarize(cache, speakers)
    for name, row in table.items():
        print(f"{name:>12}  mean {row['mean_wer']}  " + "  ".join(f"{s} {w:.1%}" for s, w in row["per_speaker"].items()))
    write_results(args.results, {"setup": setup, "model": str(args.model), "file_bytes": file_bytes,
                                    "speakers": speakers, "table": table,
                                    "records": {k: v for k, v in cache.items() if not k.startswith("_")}})


if __name__ == "__main__":
    main()
