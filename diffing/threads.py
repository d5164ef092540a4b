"""Size torch's threads to the cores other work leaves free.

OpenMP threads that spin-wait on a core another process is using stall
each other at every barrier: next to one CPU-bound job, two spinning threads
made the demo 13x slower on 2 cores. So training uses only the cores that are
idle now (measured from /proc/stat over a short window), and the `ota`
command sets OMP_WAIT_POLICY=PASSIVE before torch loads so waiting threads sleep.
"""
from __future__ import annotations

import os
import time

AUTO = 0  # a config's `threads = 0`: decide from the cores free now


def _busy_and_total() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def free_cores(window: float = 0.25) -> int:
    """Cores this process may use: those idle over `window` seconds (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    first = _busy_and_total()
    time.sleep(window)
    second = _busy_and_total()
    if first is None or second is None or second[1] == first[1]:
        return cores
    busy_share = (second[0] - first[0]) / (second[1] - first[1])  # over all of the machine's cores
    busy_cores = busy_share * (os.cpu_count() or cores)
    return max(1, min(cores, int(cores - busy_cores + 0.5)))


def set_threads(threads: int = AUTO) -> int:
    """Set torch's intra-op threads (AUTO: the free cores); returns the number used."""
    import torch

    # the processes torchrun starts on this machine share its free cores
    n = max(1, free_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if threads == AUTO else threads
    torch.set_num_threads(n)
    return n

