"""Five consecutive updates on the shipped base model, per method and budget.

For each method (sparse-mask, hashed, hybrid, LoRA at matched bytes, post-hoc
top-k of the full fine-tune, full fine-tune) and budget, updates are chained: update k
is learned against that method's own model after update k-1. Each record has
serialized bytes, bytes relative to the full int8 model file, WER on the
update's test set, on the original test set and on every earlier update's
test set, plus the generic binary deltas (zstd patch-from, bsdiff4) of the
full fine-tune. Results are cached per (method, budget, update), so an
interrupted run resumes.

Replay: every update mixes in replay of earlier data (`replay_ratio`, 1.5 by
default, replay utterances per adaptation utterance, drawn afresh each
epoch). With `--replay cumulative` (default) the pool is base training data
plus the adaptation sets of all earlier updates in the chain, so a method
is asked to keep what earlier updates taught; `--replay base` draws from
base training data only (the protocol of the first chain runs, under which
every method forgets earlier updates).

    python bench/update_chain.py [--budgets 0.01,0.02,0.03,0.05,0.1] [--methods full,sparse,hashed,hybrid,auto] \
        [--epochs 6] [--eval-limit 200] [--updates 5] [--config '{"hashed_share": 0.6}' --cache OTHER.partial.json
        [--full-from bench/results/update_chain.partial.json]]

Methods: any registered diff method (sparse, hashed, hybrid, channel, lora), `METHOD+channels`
for that method with per-channel scale and bias deltas, `METHOD+teacher` for that method taught by
the full fine-tune chain's model after the same update (run `full` first), `METHOD+ownteacher` taught by
a full fine-tune of the chain's own current model on the update (what a server keeping that fleet's
model would train; the first update's is the full chain's, the same model), `auto` for the automatic budget
(`--auto-method` learned at every budget of `--budgets` on a dev split of the adaptation data,
the smallest within `--max-gap` WER points of the best shipped; its ladder is recorded), and
`full` (the dense fine-tune, plus post-hoc top-k of it at every budget).

Before any training the run checks that every test set holds at least `--eval-limit`
utterances (100 gave 3-4 points of noise) and that the real-speech update's test speakers
are not among its adaptation speakers.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, ROOT, SHIPPED_MODEL, write_results  # noqa: E402
from device_agent.device_model import DeviceModel  # noqa: E402
from device_agent.diff import apply_diff  # noqa: E402
from device_agent.manifest import read_manifest, write_manifest  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from device_agent.wer import evaluate  # noqa: E402
from diffing.diffs import DIFF_METHODS, learn_diff  # noqa: E402
from diffing.diffs.auto_budget import learn_auto_budget  # noqa: E402
from diffing.diffs.baselines import FullFinetuneConfig, bsdiff_bytes, topk_of, zstd_patch_from_bytes  # noqa: E402
from packager.bundle import encode_diff_bundle  # noqa: E402

WORK = ROOT / "work"
UPDATES = [  # (name, adaptation manifest, test manifest)
    ("novel_names", WORK / "updates/novel_names/adapt.jsonl", WORK / "updates/novel_names/test.jsonl"),
    ("novel_accent", WORK / "updates/novel_accent/adapt.jsonl", WORK / "updates/novel_accent/test.jsonl"),
    ("fsdd_speakers", WORK / "updates/fsdd/train.jsonl", WORK / "updates/fsdd/test.jsonl"),
    ("novel_intent", WORK / "updates/novel_intent/adapt.jsonl", WORK / "updates/novel_intent/test.jsonl"),
    ("novel_places", WORK / "updates/novel_places/adapt.jsonl", WORK / "updates/novel_places/test.jsonl"),
]
ORIGINAL_TEST = WORK / "corpus/base/test.jsonl"
REPLAY = WORK / "corpus/base_x3/train.jsonl"  # the shipped model's training data (docs/BASE-MODEL.md)
REPLAY_LIMIT = 2000  # utterances of base training data in the replay pool
CACHE = RESULTS / "update_chain.partial.json"
SPEAKER_DISJOINT = ("fsdd_speakers",)  # updates whose test voices must be new to the diff


def wer_on(model: DeviceModel, manifest: Path, limit: int) -> float:
    utts = read_manifest(manifest, model.tokenizer, check_audio=False)
    utts = utts[:: max(1, len(utts) // limit)][:limit]
    return round(evaluate(Int8Runtime(model).transcribe, utts).wer, 4)


def make_config(method: str, budget: int, epochs: int, threads: int, extra: dict | None = None,
                teacher: Path | None = None):
    """`method` is a registered method name, optionally with `+channels` (channel deltas too) and
    `+teacher` or `+ownteacher` (taught by `teacher`, a full fine-tune's model after the same update)."""
    name, *suffixes = method.split("+")
    if name == "full":
        return FullFinetuneConfig(epochs=epochs, threads=threads)
    fields = {"budget": budget, "epochs": epochs, "threads": threads, **(extra or {})}
    if set(suffixes) - {"channels", "teacher", "ownteacher"}:
        raise SystemExit(f"method {method!r}: the suffixes are '+channels', '+teacher' and '+ownteacher'")
    if "channels" in suffixes:
        fields["channels"] = "both"
    if {"teacher", "ownteacher"} & set(suffixes):
        fields["teacher"] = str(teacher)
    return DIFF_METHODS[name][0].from_json(fields)


def full_chain_teacher(base: DeviceModel, diff_dir: Path, updates: list[tuple[str, Path, Path]], k: int) -> Path:
    """The full fine-tune chain's model after update k, rebuilt from its cached diffs and written as a .otam
    named by its content hash (a `+teacher` chain's teacher: the model the server keeps, which every diff
    of that chain approximates within its budget)."""
    model = base
    for name, _, _ in updates[: k + 1]:
        if not _diff_path(diff_dir, f"full/1.0/{name}").exists():
            raise SystemExit("a '+teacher' chain needs the full fine-tune's chain first: run --methods full")
        model = apply_diff(model, _load_diff(diff_dir, f"full/1.0/{name}"))
    path = WORK / "teachers" / f"{model.content_hash()}.otam"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_model(model))
    return path


def own_teacher(model: DeviceModel, adapt: Path, replay: Path, epochs: int, threads: int, name: str) -> Path:
    """A full fine-tune of `model` (a diff chain's current model) on update `name`, with the chain's replay,
    written as a .otam under WORK/teachers (reused when there: the chain resumes)."""
    path = WORK / "teachers" / f"own_{model.content_hash()}_{name}.otam"
    if not path.exists():
        full = learn_diff(model, adapt, make_config("full", 0, epochs, threads), replay_manifest=replay)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_model(apply_diff(model, full)))
    return path


def check_update_sets(updates: list[tuple[str, Path, Path]], eval_limit: int) -> None:
    """SystemExit unless every test set has `eval_limit` utterances and the real-speech update's test
    speakers did not speak its adaptation data."""
    for name, adapt, test in [*updates, ("original", None, ORIGINAL_TEST)]:
        utts = read_manifest(test, check_audio=False)
        if len(utts) < eval_limit:
            raise SystemExit(f"{name}: {test} has {len(utts)} test utterances, fewer than --eval-limit {eval_limit}")
        if adapt is not None and name in SPEAKER_DISJOINT:
            shared = {u.speaker for u in read_manifest(adapt, check_audio=False)} & {u.speaker for u in utts}
            if shared or any(u.speaker is None for u in utts):
                raise SystemExit(f"{name}: test speakers must not be adaptation speakers (shared: "
                                 f"{sorted(map(str, shared))}); split the recordings by speaker (bench/real_speakers.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.01,0.02,0.03,0.05,0.1",
                        help="diff budgets as fractions of the full int8 model file's bytes")
    parser.add_argument("--methods", default="full,sparse,hashed,hybrid")
    parser.add_argument("--auto-method", default="hybrid", help="the method `auto` learns at every budget")
    parser.add_argument("--max-gap", type=float, default=1.0,
                        help="`auto`: dev WER points the shipped rung may trail the best rung")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spinning when cores are shared)")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="base model (default: the shipped one)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="partial results (resume)")
    parser.add_argument("--results", default="update_chain", help="name of the results JSON in bench/results")
    parser.add_argument("--replay-from", type=Path, default=REPLAY, help="the base model's training manifest")
    parser.add_argument("--replay-limit", type=int, default=REPLAY_LIMIT,
                        help="utterances drawn from it for the replay pool")
    parser.add_argument("--config", type=json.loads, default={},
                        help="JSON of extra config fields for the diff methods, e.g. '{\"hashed_share\": 0.6}' "
                             "(needs its own --cache)")
    parser.add_argument("--replay", choices=["cumulative", "base"], default="cumulative",
                        help="replay pool: base training data plus earlier updates' adaptation sets, or base data only")
    parser.add_argument("--full-from", type=Path,
                        help="another cache of the same setup (--config aside) whose full fine-tune chain this cache "
                             "reuses instead of training it again (`+teacher` chains and gaps need one)")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    cache_path = args.cache
    base = load_model(args.model)
    diff_dir = diff_dir_of(cache_path)
    base_file = encode_model(base)
    setup = {"base_hash": base.content_hash(), "epochs": args.epochs, "eval_limit": args.eval_limit,
             "replay": args.replay, "replay_from": str(args.replay_from), "replay_limit": args.replay_limit}
    if args.config:  # only when given, so caches written before this option still match
        setup["config"] = args.config
    cache = update_cache(cache_path, {})
    if cache.setdefault("_setup", setup) != setup:
        raise SystemExit(f"{cache_path} holds results for {cache['_setup']}, not {setup}: use another --cache")
    if args.full_from:  # its base WERs too: measured once per full fine-tune, not again here
        cache = reuse_full_chain(args.full_from, cache_path, setup)
    replay = base_replay_pool(args.replay_from, args.replay_limit)
    updates = UPDATES[: args.updates]
    check_update_sets(updates, args.eval_limit)
    base_wers = cache.get("_base_wer") or {"original": wer_on(base, ORIGINAL_TEST, args.eval_limit),
                                           **{name: wer_on(base, test, args.eval_limit) for name, _, test in updates}}
    cache = update_cache(cache_path, {"_setup": setup, "_base_wer": base_wers})
    print("base model WER:", base_wers)

    chains = [(m, b) for m in args.methods.split(",") if m not in ("full", "auto") for b in budgets]
    if "auto" in args.methods.split(","):
        chains.append(("auto", 0.0))
    if "full" in args.methods.split(","):
        chains = [("full", 1.0)] + [("topk", b) for b in budgets] + chains
    for method, budget in chains:
        model = base
        for k, (name, adapt, test) in enumerate(updates):
            key = f"{method}/{budget}/{name}"
            cache = update_cache(cache_path, {})  # another process may have finished this step
            if key in cache and "target_hash" in cache[key]:
                model = apply_diff(model, _load_diff(diff_dir, key))
                continue
            started = time.time()
            ladder = None
            if method == "auto":
                config = make_config(args.auto_method, int(budgets[0] * len(base_file)), args.epochs, args.threads,
                                     args.config)
                diff, rungs = learn_auto_budget(model, adapt, config, max_gap=args.max_gap,
                                                ladder=tuple(f"{int(b * len(base_file))}B" for b in budgets),
                                                replay_manifest=replay_pool(replay, updates[:k], args.replay))
                ladder = [{"budget": b, "bytes": r.bytes, "dev_wer": round(r.dev_wer, 4),
                           "shipped": r.diff is diff} for b, r in zip(budgets, rungs)]
            elif method == "topk":
                full_key = f"full/1.0/{name}"
                diff = topk_of(model, _load_diff(diff_dir, full_key), int(budget * len(base_file)))
            else:
                budget_bytes = int(budget * len(base_file))  # budgets are shares of the full model's bytes
                pool = replay_pool(replay, updates[:k], args.replay)
                teacher = None
                if "+ownteacher" in method and k > 0:
                    teacher = own_teacher(model, adapt, pool, args.epochs, args.threads, name)
                    started = time.time()  # the teacher's training is the server's, not the diff's time
                elif "+teacher" in method or "+ownteacher" in method:  # on update 1 both fine-tune the base
                    teacher = full_chain_teacher(base, diff_dir, updates, k)
                diff = learn_diff(model, adapt, make_config(method, budget_bytes, args.epochs, args.threads, args.config,
                                                            teacher), replay_manifest=pool)
            seconds = time.time() - started
            new_model = apply_diff(model, diff)
            new_file = encode_model(new_model)
            compact = bool((args.config or {}).get("compact")) and method != "full"  # format 3 bundles
            payload = len(new_file) if method == "full" else int(diff.metadata.get("wire_bytes", 0)) or \
                len(encode_diff_bundle(diff, model, compact=compact))
            record = {"method": method, "budget": budget, "update": name, "index": k + 1, "bytes": payload,
                      "bytes_vs_full_model": round(payload / len(base_file), 5), "entries": diff.nonzero_entries(),
                      "train_seconds": round(seconds, 1), "target_hash": diff.target_hash,
                      "wer_update": wer_on(new_model, test, args.eval_limit),
                      "wer_original": wer_on(new_model, ORIGINAL_TEST, args.eval_limit),
                      "wer_earlier": {n: wer_on(new_model, t, args.eval_limit) for n, _, t in updates[:k]}}
            if ladder is not None:  # budget 0.0 stands for "auto"; the rung it shipped is chosen_budget
                record.update(ladder=ladder, max_gap=args.max_gap,
                              chosen_budget=next(r["budget"] for r in ladder if r["shipped"]))
            if method == "full":
                old_file = encode_model(model)
                record["zstd_patch_from_bytes"] = zstd_patch_from_bytes(old_file, new_file)
                record["bsdiff_bytes"] = bsdiff_bytes(old_file, new_file)
            _save_diff(diff_dir, diff, model, key, compact)
            cache = update_cache(cache_path, {key: record})
            print(json.dumps(record))
            model = new_model
    records = [v for k, v in cache.items() if not k.startswith("_")]
    write_results(args.results, {"base_wer": base_wers, "full_model_bytes": len(base_file),
                                 "model_hash": setup["base_hash"], "epochs": args.epochs, "eval_limit": args.eval_limit,
                                 "replay": args.replay, "config": args.config,
                                 "records": records})


def reuse_full_chain(other: Path, cache_path: Path, setup: dict) -> dict:
    """Copy the full fine-tune chain (records and bundles) and base WERs of `other`, a cache of the
    same setup but another --config, into this cache (the full fine-tune ignores --config); returns
    the merged cache."""
    theirs = json.loads(other.read_text())
    if _without_config(theirs.get("_setup", {})) != _without_config(setup):
        raise SystemExit(f"--full-from {other}: another setup ({theirs.get('_setup')}) than {setup}")
    full = {k: v for k, v in theirs.items() if k.startswith("full/")}
    if not full:
        raise SystemExit(f"--full-from {other}: no full fine-tune chain there; run --methods full with that cache")
    their_dir, our_dir = diff_dir_of(other), diff_dir_of(cache_path)
    our_dir.mkdir(parents=True, exist_ok=True)
    for key in full:
        shutil.copyfile(_diff_path(their_dir, key), _diff_path(our_dir, key))
    return update_cache(cache_path, {"_base_wer": theirs["_base_wer"], **full})


def _without_config(setup: dict) -> dict:
    return {k: v for k, v in setup.items() if k != "config"}


def base_replay_pool(train_manifest: Path, limit: int) -> Path:
    """A fixed random sample of the base model's training data (merged corpora are not shuffled)."""
    pool = WORK / f"replay_{train_manifest.parent.name}_{limit}.jsonl"
    if not pool.exists():
        utts = read_manifest(train_manifest, check_audio=False)
        write_manifest(pool, random.Random(0).sample(utts, min(limit, len(utts))))
    return pool


def replay_pool(base_replay: Path, earlier: list[tuple[str, Path, Path]], protocol: str) -> Path:
    """The replay manifest for the next update: base data, plus earlier updates' adaptation sets."""
    if protocol == "base" or not earlier:
        return base_replay
    pool = WORK / ("replay_after_" + "_".join(name for name, _, _ in earlier) + ".jsonl")
    utts = read_manifest(base_replay, check_audio=False)
    for _, adapt, _ in earlier:
        utts += read_manifest(adapt, check_audio=False)
    write_manifest(pool, utts)
    return pool


def update_cache(path: Path, new: dict) -> dict:
    """Merge `new` into the cache file under an exclusive lock and return the merged cache,
    so several chain processes (e.g. one per core, different methods) can share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = json.loads(path.read_text()) if path.exists() else {}
        cache.update(new)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    return cache


def diff_dir_of(cache_path: Path) -> Path:
    """Where a cache keeps its chains' diff bundles."""
    return cache_path.with_name(cache_path.stem + "_diffs")


def _diff_path(diff_dir: Path, key: str) -> Path:
    return diff_dir / (key.replace("/", "__") + ".otab")


def _save_diff(diff_dir: Path, diff, base: DeviceModel, key: str, compact: bool = False) -> None:
    path = _diff_path(diff_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_diff_bundle(diff, base, compact=compact))


def _load_diff(diff_dir: Path, key: str):
    """A cached diff (bundle on disk), so a resumed chain continues from the same model."""
    from device_agent.bundle import decode_bundle

    return decode_bundle(_diff_path(diff_dir, key).read_bytes()).diff


if __name__ == "__main__":
    main()
