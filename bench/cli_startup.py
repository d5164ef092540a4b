"""How long `ota --help`, `ota --version` and a config error take to answer, today's CLI
against the CLI before lazy loading (commit 790a742, which imported torch and scipy at start).

Both run as fresh processes, interleaved, in the same run and under the same load; the
ratio is what the claim rests on. Writes bench/results/cli_startup.json.

    nice -n 5 .venv/bin/python bench/cli_startup.py --repeats 15
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "790a742"  # the last commit whose cli/ imported torch and scipy at start
CASES = {"--help": ["--help"], "--version": ["--version"],
         "config error": ["agent", "status", "--config", "/nonexistent/agent.toml"]}


def _checkout(commit: str, into: Path) -> Path:
    """The project's source at `commit` (git archive: no work tree needed)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def _time(source: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cli.main import cli; cli()", *args], cwd=source, env=env,
                   capture_output=True)
    return time.perf_counter() - start


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = _checkout(BASELINE_COMMIT, Path(tmp) / "old")
        rows, load_before = {}, _load()
        for name, argv in CASES.items():
            now, before = [], []
            _time(ROOT, argv), _time(old, argv)  # warm the page cache for both
            for _ in range(args.repeats):
                now.append(_time(ROOT, argv))
                before.append(_time(old, argv))
            rows[name] = {"now_median_s": round(statistics.median(now), 3), "now_max_s": round(max(now), 3),
                          "before_median_s": round(statistics.median(before), 3),
                          "speedup": round(statistics.median(before) / statistics.median(now), 1)}
            print(f"ota {name:<13} now {rows[name]['now_median_s']:.3f} s (max {rows[name]['now_max_s']:.3f}), "
                  f"before {rows[name]['before_median_s']:.3f} s: {rows[name]['speedup']}x faster")
    load = {"loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(_load(), 2),
            "cpus": os.cpu_count()}
    print(f"load average {load['loadavg_1min_before']} -> {load['loadavg_1min_after']} on {load['cpus']} cores")
    sys.path.insert(0, str(ROOT))
    from bench.common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cli_startup.json"
    out.write_text(json.dumps({"benchmark": "cli_startup", "baseline_commit": BASELINE_COMMIT,
                               "repeats": args.repeats, "load": load, "cases": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
