"""One process vs two under torchrun (gloo, CPU), one thread each, same global batch and epochs.

Runs the real commands end to end, once as one process and once as `torchrun --nproc-per-node 2`:
`ota train` of a small model from scratch on spoken digits (FSDD: four speakers, takes 5-49 to train,
0-4 to test), and `ota diff train --method sparse` adapting the shipped model to the same four speakers
(same takes). Prints wall time, the ratio and WER side by side.
The load on the machine is recorded before and after: the ratio is only near 0.5 when two cores are free.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python -m bench.distributed [--epochs 40]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import FSDD, ROOT, SHIPPED_MODEL, write_results
from device_agent.manifest import Utterance, read_manifest, write_manifest
from device_agent.model_config import ModelConfig
from device_agent.model_format import load_model
from device_agent.runtime import Int8Runtime
from device_agent.tokenizer import CharTokenizer
from device_agent.wer import evaluate
from diffing.data import load_examples
from diffing.threads import free_cores

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# A small model so that the benchmark runs in minutes, but wide enough (256 units) and with batches large enough
# (1600 frames) that each rank's share of a step is mostly arithmetic: with tiny steps the per-step
# Python work and the all-reduce, which a second process does not shorten, dominate.
MODEL = ModelConfig(enc_hidden=256, enc_layers=2, embed_dim=64, pred_hidden=128, joint_dim=128)
SETTINGS = {"model": MODEL.to_json(), "max_frames": 1600, "warmup_steps": 50, "lr": 3e-3, "target_sparsity": 0.5,
            "prune_start": 0.3, "prune_end": 0.6, "qat_start": 0.7, "threads": 1}
DIFF = ["--method", "sparse", "--budget", "2%", "--epochs", "3", "--threads", "1"]


def write(folder: Path, name: str, takes: range) -> Path:
    files = sorted(p for p in FSDD.glob("*.wav") if int(p.stem.split("_")[2]) in takes)
    return write_manifest(folder / f"{name}.jsonl", [Utterance(p, WORDS[int(p.name[0])], 0.5, p.stem.split("_")[1])
                                                     for p in files])


def load() -> dict[str, float]:
    with open("/proc/loadavg") as f:
        one, five, _ = (float(x) for x in f.read().split()[:3])
    return {"loadavg_1min": one, "loadavg_5min": five, "free_cores": free_cores(1.0), "cores": os.cpu_count() or 1,
            "nice": os.nice(0)}  # a niced benchmark next to jobs at normal priority gets a sliver of a core


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "cli.main"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "cli.main"]


def wer(model: Path, manifest: Path) -> float:
    runtime = Int8Runtime.from_file(model)
    return evaluate(runtime.transcribe, read_manifest(manifest, runtime.tokenizer)).wer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="base-training epochs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    train_m, test_m = write(work, "train", range(5, 50)), write(work, "test", range(0, 5))
    adapt_m, adapt_test_m = train_m, test_m  # the update adapts the shipped model to the same four speakers
    (work / "settings.json").write_text(json.dumps({**SETTINGS, "epochs": args.epochs}))
    # features once, before any timing: both runs read the same cache (no dev set: WER is measured after)
    cache = work / "cache"
    for manifest in (train_m, test_m):
        load_examples(manifest, CharTokenizer(), MODEL.features, cache, progress=False)
    for nproc in (1, 2):
        (work / f"run{nproc}").mkdir()
        (work / f"run{nproc}" / "cache").symlink_to(cache)
    base_wer = wer(SHIPPED_MODEL, adapt_test_m)
    before = load()
    print(f"load before: {before}", flush=True)
    rows = []
    for nproc in (1, 2):
        out = f"run{nproc}"
        train_s, _ = run(launcher(nproc) + ["train", "--config", "settings.json", "--train", "train.jsonl",
                                            "--out", out], work)
        model = work / out / "model.otam"
        diff_s, diff_out = run(launcher(nproc) + ["diff", "train", *DIFF, "--base", str(SHIPPED_MODEL), "--data",
                                                  adapt_m.name, "--out", f"diff{nproc}.otab"], work)
        report = json.loads(diff_out.strip().splitlines()[-1])
        run(launcher(1) + ["diff", "apply", f"diff{nproc}.otab", "--base", str(SHIPPED_MODEL), "--out",
                           f"updated{nproc}.otam"], work)
        row = {"processes": nproc, "train_seconds": round(train_s, 1), "train_test_wer": round(wer(model, test_m), 4),
               "trained_model_hash": load_model(model).content_hash(), "diff_seconds": round(diff_s, 1),
               "diff_test_wer": round(wer(work / f"updated{nproc}.otam", adapt_test_m), 4),
               "diff_bytes": report["bytes"], "rank_target_hashes": report["rank_target_hashes"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    after = load()
    print(f"load after: {after}")
    one, two = rows
    ratios = {"train_wall_ratio": round(two["train_seconds"] / one["train_seconds"], 3),
              "diff_wall_ratio": round(two["diff_seconds"] / one["diff_seconds"], 3)}
    print(f"{'':<30}{'1 process':>12}{'2 processes':>14}{'ratio':>8}")
    print(f"{'ota train (s)':<30}{one['train_seconds']:>12}{two['train_seconds']:>14}{ratios['train_wall_ratio']:>8}")
    print(f"{'  test WER (200 utts)':<30}{one['train_test_wer']:>12.1%}{two['train_test_wer']:>14.1%}")
    print(f"{'ota diff train (s)':<30}{one['diff_seconds']:>12}{two['diff_seconds']:>14}{ratios['diff_wall_ratio']:>8}")
    print(f"{'  test WER (base ' + format(base_wer, '.1%') + ')':<30}{one['diff_test_wer']:>12.1%}"
          f"{two['diff_test_wer']:>14.1%}")
    counts = {name: len(read_manifest(m, CharTokenizer())) for name, m in
              (("train", train_m), ("test", test_m), ("adapt", adapt_m), ("adapt_test", adapt_test_m))}
    path = write_results("distributed", {
        "date": time.strftime("%Y-%m-%d"), "command": "python -m bench.distributed --epochs " + str(args.epochs),
        "settings": {**SETTINGS, "epochs": args.epochs}, "diff": " ".join(DIFF), "utterances": counts,
        "shipped_model_hash": load_model(SHIPPED_MODEL).content_hash(), "shipped_model_test_wer": round(base_wer, 4),
        "load_before": before, "load_after": after, "runs": rows, **ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
