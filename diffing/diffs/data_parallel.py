"""Learning one diff on several processes (`torchrun ... ota diff train`).

Every rank trains the same deltas on its share of each global batch; the
all-reduced gradients make every rank take the same steps, so the pruning
schedule, the byte-exact selection and the hashed bucket sizing come out
the same on every rank. This checks that the ranks started alike and ended
alike (one target hash) before rank 0 writes the bundle.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import xxhash

from device_agent.device_model import DeviceModel
from device_agent.diff import Diff
from diffing import distributed
from diffing.diffs.api import DiffConfig, learn_diff


def learn_diff_on_ranks(deployed: DeviceModel, train_manifest: str | Path, config: DiffConfig, *,
                        replay_manifest: str | Path | None = None, log: Callable[[str], None] = lambda _: None,
                        progress: bool = False) -> tuple[Diff, list[str]]:
    """`learn_diff` on every rank of the job (or in this one process): the same Diff on every rank,
    and each rank's target hash (by rank)."""
    world = distributed.current()
    identity = {name: xxhash.xxh64(Path(path).read_bytes()).hexdigest() if path else None
                for name, path in (("data", train_manifest), ("replay", replay_manifest))}
    settings = {k: v for k, v in asdict(config).items() if k != "threads"}  # threads may differ per machine
    distributed.require_same("diff settings, base model or data",
                             {**settings, "method": type(config).method,  # type: ignore[attr-defined]
                              "base": deployed.content_hash(), **identity})
    diff = learn_diff(deployed, train_manifest, config, replay_manifest=replay_manifest,
                      progress=progress and world.is_writer, log=log if world.is_writer else (lambda _: None))
    return diff, distributed.agree("diffs (target hashes)", diff.target_hash)
