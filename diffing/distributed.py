"""Data parallelism on torch.distributed for `ota train` and `ota diff train`.

Launched by `torchrun`, every process (rank) holds the whole model and the
whole manifest; each global batch is the batch one process would take, dealt
out to the ranks by utterance. Gradients are all-reduced so every rank takes
the same optimiser step and so makes the same pruning and selection
decisions. Rank 0 is the only writer (checkpoints, logs, bundles).

Without torchrun's environment (WORLD_SIZE unset or 1) every function here
is a no-op and training runs as before in one process.
"""
from __future__ import annotations

import datetime
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from device_agent.errors import ConfigError, DistributedTrainingError
from device_agent.features import FeatureConfig
from diffing.data import Batch, Example, batch_groups, collate

T = TypeVar("T")
# A collective waits this long for a slow peer (rank 0 extracts features on a first run, decodes
# the dev set and writes checkpoints while the others wait); a dead peer is noticed at once
# from its closed connection, so the timeout only bounds a hung one.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank `rank` of `size`, computing on `device`."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (a GPU if one is visible)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to this process (torch "
                          f"{torch.__version__}); use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {name!r}")
    return torch.device(name)


def init(device: str = "cpu") -> World:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); one process without it."""
    dev = resolve_device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=dev)
    if dev.type == "cuda":  # one GPU per process on each node
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), dev)


def current() -> World:
    """The world this process joined (for code that is not handed one, like the diff learners)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), dev)


# How backends report a peer that went away (gloo: "Connection closed by peer" or "reset", NCCL: its
# watchdog); other RuntimeErrors are bugs and keep their own traceback.
PEER_LOST = re.compile(r"closed by peer|connection reset|broken pipe|timed out|timeout|nccl|gloo", re.IGNORECASE)


def collective(what: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a step that talks to the other ranks; a peer that died becomes one clear error."""
    world = current()
    if world.size == 1:
        return fn(*args)
    try:
        return fn(*args)
    except RuntimeError as exc:
        if not isinstance(exc, dist.DistError) and not PEER_LOST.search(str(exc)):
            raise
        reason = re.sub(r"^\[[^\]]*\] ", "", str(exc).splitlines()[0]).split(". ")[0][:120]  # no source path
        raise DistributedTrainingError(f"rank {world.rank} of {world.size}: another rank stopped during {what} "
                                       f"({reason}); the job cannot continue") from exc


def require_same(what: str, value: dict[str, Any]) -> None:
    """ConfigError on every rank unless all ranks hold the same `value` (settings, data identity)."""
    world = current()
    if world.size == 1:
        return
    values: list[Any] = [None] * world.size
    collective(f"the {what} check", lambda: dist.all_gather_object(values, value))
    for rank, other in enumerate(values):
        if other != value and rank != world.rank:
            keys = sorted(k for k in set(value) | set(other) if value.get(k) != other.get(k))
            first, second = sorted((world.rank, rank))
            raise ConfigError(f"ranks {first} and {second} were started with different {what} "
                              f"(differing: {', '.join(keys)}); every rank must run the same command on the same data")


def from_writer(fn: Callable[[], T]) -> T:
    """Rank 0 computes a picklable value (e.g. reads a checkpoint) and every rank receives it."""
    world = current()
    if world.size == 1:
        return fn()
    box = [fn() if world.is_writer else None]
    collective("a broadcast from rank 0", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]  # type: ignore[return-value]


def barrier(what: str) -> None:
    if current().size > 1:
        collective(what, dist.barrier)


def augmentation_rng(rng: random.Random) -> random.Random:
    """The rng for per-utterance augmentation. One process: `rng` itself (unchanged behaviour).
    Several: a per-rank rng drawn from `rng`, so `rng` stays in step on every rank for the batch order."""
    world = current()
    if world.size == 1:
        return rng
    return random.Random(f"{rng.getrandbits(64)}/{world.rank}")


def global_groups(examples: list[Example], max_frames: int, k: int) -> list[list[int]]:
    """The global batches (indices): those with fewer utterances than ranks are left out on every
    rank, so every rank takes the same number of steps."""
    size = current().size
    return [g for g in batch_groups(examples, max_frames, k) if len(g) >= size]


def local_batches(examples: list[Example], max_frames: int, cfg: FeatureConfig, rng: random.Random | None,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[tuple[Batch, float]]:
    """This rank's share of each global batch (utterances dealt round-robin) and the weight that
    makes the ranks' averaged gradient that of the global batch's mean loss (1.0 in one process).
    Shuffled by `rng`, which must be in the same state on every rank."""
    world = current()
    groups = global_groups(examples, max_frames, cfg.stack)
    if rng is not None:
        rng.shuffle(groups)
    for g in groups:
        mine = g[world.rank::world.size]
        yield collate([examples[i] for i in mine], cfg, transform), len(mine) * world.size / len(g)


def average_gradients(params: list[torch.Tensor]) -> None:
    """All-reduce the gradients of tensors trained outside a module (diff deltas, hashed buckets):
    DistributedDataParallel wraps modules, these live in dictionaries."""
    world = current()
    if world.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    collective("a gradient all-reduce", lambda: dist.all_reduce(flat))
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def mean_over_ranks(value: float) -> float:
    """The mean of a number over ranks (e.g. a logged loss); the number itself in one process."""
    world = current()
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device)  # NCCL reduces GPU tensors only
    collective("a loss all-reduce", lambda: dist.all_reduce(t))
    return float(t) / world.size


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `module` under torchrun (its state comes from rank 0)."""
    world = current()
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return collective("the model broadcast", lambda: DistributedDataParallel(module, device_ids=ids))


def agree(what: str, value: str) -> list[str]:
    """Every rank's `value` (e.g. a diff's target hash), by rank; DistributedTrainingError unless all are equal."""
    world = current()
    if world.size == 1:
        return [value]
    values: list[Any] = [None] * world.size
    collective(f"comparing {what}", lambda: dist.all_gather_object(values, value))
    if len(set(values)) != 1:
        raise DistributedTrainingError(f"ranks computed different {what}: {json.dumps(values)}")
    return values


def finish() -> None:
    """Every rank meets once more before the group is torn down. Without it, a rank could tear down
    gloo while its peer's last collective was still in flight, and the peer aborted ("terminate called
    without an active exception", SIGABRT). Call it on the success path only: after a rank-local
    failure the others would wait here for the collective timeout."""
    barrier("the end of the run")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
