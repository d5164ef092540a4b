"""`ota diff train` next to another CPU-bound process: today's thread policy (threads sized to the
free cores, passive OpenMP waiting) against the old one (all cores, spinning threads).

Each policy runs alone and then next to one busy-looping process, in the same run, so each
ratio (loaded / alone) is measured under the same outside load; the load average and the
other processes' CPU share are printed and saved with the results.

    nice -n 5 .venv/bin/python bench/contention.py --adapt 60 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffing.threads import free_cores  # noqa: E402  (no torch import)

POLICIES = {
    # the command line before this benchmark's fix: --threads defaulted to every core, OpenMP spun
    "old (all cores, spinning)": (["--threads", str(os.cpu_count() or 1)], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "now (free cores, passive)": ([], {}),
}


def _ota(*args: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return time.perf_counter() - start


def _data(work: Path, n_adapt: int) -> tuple[Path, Path]:
    if not (work / "update" / "adapt.jsonl").exists():
        _ota("data", "synth", "--out", str(work / "update"), "--split", "novel_names", "--train", str(n_adapt),
             "--test", "0", "--workers", "1")
    if not (work / "replay" / "train.jsonl").exists():
        _ota("data", "synth", "--out", str(work / "replay"), "--train", str(n_adapt), "--test", "0",
             "--workers", "1")
    return work / "update" / "adapt.jsonl", work / "replay" / "train.jsonl"


def _hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapt", type=int, default=60, help="adaptation (and replay) utterances")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench_contention")
    args = parser.parse_args()
    env_threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for k in env_threads:  # the policies decide the threads, not the caller's environment
        os.environ.pop(k, None)
    adapt, replay = _data(args.work, args.adapt)
    train = ["diff", "train", "--method", "sparse", "--budget", "2%", "--base", str(ROOT / "models" / "base-v1.otam"),
             "--data", str(adapt), "--replay", str(replay), "--epochs", str(args.epochs),
             "--out", str(args.work / "v2.otab")]
    results = {}
    for name, (extra, env) in POLICIES.items():
        outside = {"loadavg_1min": round(os.getloadavg()[0], 2), "free_cores": free_cores(1.0)}
        alone = _ota(*train, *extra, env=env)
        hog = _hog()
        try:
            time.sleep(1.0)
            loaded = _ota(*train, *extra, env=env)
        finally:
            hog.kill()
            hog.wait()
        results[name] = {"alone_s": round(alone, 1), "loaded_s": round(loaded, 1),
                         "ratio": round(loaded / alone, 2), "outside_load_before": outside}
        print(f"{name:<28} alone {alone:6.1f} s   next to a busy process {loaded:6.1f} s   "
              f"ratio {loaded / alone:.2f}x   (outside load: loadavg {outside['loadavg_1min']}, "
              f"{outside['free_cores']} of {os.cpu_count()} cores free before)")
    out = ROOT / "bench" / "results" / "contention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "contention", "cpus": os.cpu_count(), "adapt": args.adapt,
                               "epochs": args.epochs, "command": "ota " + " ".join(train[:4]) + " ...",
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
