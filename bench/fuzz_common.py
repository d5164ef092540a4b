"""What the bundle and model-file fuzzers share: the case loop (one mutation class per case
in turn, a random seed file, no-op mutations redrawn, a time limit per case, outcomes
counted per class, peak RSS), the command line and results file, and mutation helpers
for integers and zstd frames.

A fuzzer supplies its seeds (objects with `.name` and `.data`), a `mutate(cls, rng, seed,
seeds) -> bytes` and a `run_case(data, seed) -> str` returning 'ok', '<stage>:<error class>'
or 'UNEXPECTED:...'. Imports no torch, so a fuzzer starts fast.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from device_agent.errors import OtaError

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
REDRAWS = 8  # a mutation that changed nothing is drawn again this many times at most


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout()


def error_outcome(stage: str, exc: Exception) -> str:
    """A case's outcome when `stage` raised: '<stage>:<OtaError subclass>' for the project's own
    errors (a pass), 'UNEXPECTED:...' for anything else. A time-out propagates to the loop."""
    if isinstance(exc, CaseTimeout):
        raise exc
    if isinstance(exc, OtaError):
        return f"{stage}:{type(exc).__name__}"
    return f"UNEXPECTED:{stage}:{type(exc).__name__}: {str(exc)[:200]}"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --- mutation helpers --------------------------------------------------------------------------
INTERESTING = [0, 1, -1, 2, 7, 8, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1,
               2**63, 2**64, 2**64 + 1, -(2**63), 10**30, 1.0, 0.5, "1", None, True, False, [], {}]


def interesting(rng: np.random.Generator, near: int | None = None) -> object:
    """A boundary value (or, 40% of the time when `near` is given, an integer close to it)."""
    if near is not None and rng.random() < 0.4:
        return int(near + rng.integers(-3, 4))
    return INTERESTING[rng.integers(len(INTERESTING))]


def rle_frame(content_size: int | None, total: int, window_log: int = 17) -> bytes:
    """A hand-built zstd frame of RLE blocks: ~4 bytes per 128 KiB of output."""
    if content_size is None:
        head = struct.pack("<IBB", 0xFD2FB528, 0x00, (window_log - 10) << 3)
    else:
        head = struct.pack("<IBB", 0xFD2FB528, 0xC0, (window_log - 10) << 3) + struct.pack("<Q", content_size)
    block, blocks = 128 << 10, []
    n = max(1, -(-total // block))
    for i in range(n):
        size = min(block, total - i * block) if total else 0
        blocks.append(((1 if i == n - 1 else 0) | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\x07")
    return head + b"".join(blocks)


# --- the case loop ---------------------------------------------------------------------------------
def run_cases(*, cases: int, seed: int, rng: np.random.Generator, seeds: Sequence[Any], classes: Sequence[str],
              mutate: Callable[[str, np.random.Generator, Any, Sequence[Any]], bytes],
              run_case: Callable[[bytes, Any], str], time_limit: float, seed_key: str,
              seed_info: dict[str, Any], progress_every: int = 0) -> dict[str, Any]:
    """Run `cases` mutated cases; class `classes[i % len(classes)]` for case i. `seed_key` names
    the seed in failure records ("seed_bundle"), `seed_info` goes into the result as is."""
    for s in seeds:  # the unmutated files must pass
        assert run_case(s.data, s) == "ok", f"seed {s.name} does not round-trip"
    rss_before = peak_rss_bytes()
    per_class: dict[str, Counter] = {n: Counter() for n in classes}
    outcomes: Counter = Counter()
    failures: list[dict] = []
    slowest = 0.0
    old = signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    try:
        for case in range(cases):
            cls = classes[case % len(classes)]
            s = seeds[int(rng.integers(len(seeds)))]
            data = s.data
            for _ in range(REDRAWS):
                data = mutate(cls, rng, s, seeds)
                if data != s.data:
                    break
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                outcome = run_case(data, s)
            except CaseTimeout:
                outcome = "UNEXPECTED:timeout"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - t0)
            unexpected = outcome.startswith("UNEXPECTED")
            per_class[cls]["UNEXPECTED" if unexpected else outcome] += 1
            outcomes["UNEXPECTED" if unexpected else outcome] += 1
            if unexpected and len(failures) < 20:
                failures.append({"case": case, "class": cls, seed_key: s.name, "outcome": outcome,
                                 "bytes_hex_prefix": data[:64].hex()})
            if progress_every and case and case % progress_every == 0:
                print(f"  {case} cases, {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        signal.signal(signal.SIGALRM, old)
    wall = time.perf_counter() - started
    peak = peak_rss_bytes()
    return {
        "cases": cases, "seed": seed, "time_limit_s": time_limit, "wall_s": round(wall, 2),
        "slowest_case_s": round(slowest, 4), **seed_info,
        "outcomes": dict(sorted(outcomes.items())),
        "per_class": {k: dict(sorted(v.items())) for k, v in per_class.items()},
        "unexpected": outcomes.get("UNEXPECTED", 0), "failures": failures,
        "peak_rss_bytes": peak, "peak_rss_before_cases_bytes": rss_before, "peak_rss_growth_bytes": peak - rss_before,
    }


# --- command line --------------------------------------------------------------------------------
def main(name: str, description: str, fuzz: Callable[..., dict[str, Any]], *, default_cases: int, what: str,
         seed_key: str, argv: list[str] | None = None) -> int:
    """`python bench/NAME.py [--cases N] [--seed S] [--time-limit T] [--out FILE]`: run, write
    the results (bench/results/NAME.json), print per-class counts; exit 1 on any unexpected outcome."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cases", type=int, default=default_cases, help=f"number of mutated {what}")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed (runs are reproducible)")
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds allowed per case")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="results file (JSON)")
    args = ap.parse_args(argv)
    result = fuzz(args.cases, args.seed, args.time_limit, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": f"python bench/{name}.py --cases {args.cases} --seed {args.seed}",
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "zstd": zstandard.ZSTD_VERSION, "python": platform.python_version()}, **result}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{result['cases']} cases in {result['wall_s']} s (slowest {result['slowest_case_s']} s), "
          f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB (+{result['peak_rss_growth_bytes'] / 2**20:.1f} MiB "
          "during cases)")
    width = max(len(k) for k in result["per_class"])
    for cls, counts in result["per_class"].items():
        print(f"  {cls:<{width}}  " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print("outcomes: " + ", ".join(f"{k}={v}" for k, v in result["outcomes"].items()))
    for f in result["failures"]:
        print(f"FAIL case {f['case']} [{f['class']} on {f[seed_key]}]: {f['outcome']}")
    return 1 if result["unexpected"] else 0
