"""Shared helpers for benchmarks: result files, timing, memory."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
SHIPPED_MODEL = ROOT / "models" / "base-v1.otam"


def write_results(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """bench/results/NAME.json, or `path` (a scratch run that must not replace the recorded one)."""
    payload = {"benchmark": name, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                              "torch": torch.__version__}, **payload}
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall time of `repeats` runs (least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rss_bytes() -> int:
    """Resident set size after returning freed heap pages to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
