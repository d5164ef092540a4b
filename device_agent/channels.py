"""Release channels: what each model's devices should run, and how to get there.

A channel file (`channels/<model_id>/<channel>.json`) says, for one model on
one channel (stable, beta, ...): the current version, the rollout percentage,
and the graph of available updates. Each edge is one bundle: a diff from one
version to another, or a full bundle (`from_version=None`) that installs on
anything. The file is published as a TUF target, so devices verify it like
any bundle. Versions are integers (device_agent.version); format 1 files
wrote them as decimal strings and still read.

`plan_update` is pure: the cheapest chain of bundles by bytes (Dijkstra),
e.g. two small diffs rather than one full bundle.
"""
from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import xxhash

from device_agent.errors import ConfigError, NoUpdatePathError, StoreNotFoundError
from device_agent.version import Version, parse_version

if TYPE_CHECKING:
    from device_agent.trust_client import TrustedUpdater

FORMAT_VERSION = 2  # 2: versions are JSON integers (1: decimal strings)
READABLE_FORMATS = (1, 2)
NO_MODEL = -1  # the planner's start node when no model is installed (versions are >= 0)


@dataclass(frozen=True)
class UpdateEdge:
    """One bundle: applies to `from_version` (None: a full bundle) and yields `to_version`."""

    from_version: Version | None
    to_version: Version
    target: str
    size: int

    def __post_init__(self) -> None:
        parse_version(self.to_version, f"update edge {self.target!r}: to_version", ConfigError)
        if self.from_version is not None:
            parse_version(self.from_version, f"update edge {self.target!r}: from_version", ConfigError)
        if self.from_version == self.to_version:
            raise ConfigError(f"update edge {self.target!r}: from and to are both {self.to_version!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ConfigError(f"update edge {self.target!r}: expected size to be bytes >= 0, got {self.size!r}")
        if not self.target:
            raise ConfigError("update edge: expected a bundle target name")


@dataclass(frozen=True)
class ChannelState:
    """The signed state of one model's channel."""

    model_id: str
    channel: str
    current_version: Version
    rollout_percent: float = 100.0
    edges: tuple[UpdateEdge, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("model_id", "channel"):
            value = getattr(self, name)
            if not value or "/" in value or value in (".", ".."):
                raise ConfigError(f"channel {name} {value!r}: expected a non-empty name without '/'")
        parse_version(self.current_version, "channel current_version", ConfigError)
        if not 0.0 <= float(self.rollout_percent) <= 100.0:
            raise ConfigError(f"rollout_percent {self.rollout_percent}: expected 0..100")
        object.__setattr__(self, "edges", tuple(self.edges))

    @property
    def target_name(self) -> str:
        return channel_target_name(self.model_id, self.channel)

    def to_json(self) -> bytes:
        doc = {"format": FORMAT_VERSION, **asdict(self)}
        doc["edges"] = [asdict(e) for e in self.edges]
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChannelState:
        try:
            doc = json.loads(data)
            form = doc.pop("format")
            if form not in READABLE_FORMATS:
                raise ConfigError(f"channel file format {form!r:.20}: expected one of {READABLE_FORMATS}")
            edges = tuple(UpdateEdge(**_versions(e, form)) for e in doc.pop("edges"))
            return cls(edges=edges, **_versions(doc, form))
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"channel file is malformed: {exc}") from None


def _versions(doc: dict, form: int) -> dict:
    """A format 1 document's decimal-string versions as integers (format 2 is checked as is)."""
    if form != 1:
        return doc
    keys = [k for k in ("from_version", "to_version", "current_version") if doc.get(k) is not None]
    return {**doc, **{k: parse_version(doc[k], f"channel file {k}", ConfigError, legacy_text=True) for k in keys}}


def channel_target_name(model_id: str, channel: str) -> str:
    """The TUF target name of a channel file."""
    return f"channels/{model_id}/{channel}.json"


def in_rollout(state: ChannelState, device_id: str) -> bool:
    """Whether `device_id` is inside the rollout percentage (stable per device and version).

    Hashing the version in reshuffles which devices go first on each release,
    so the same devices are not always the canaries.
    """
    salted = f"{state.model_id}/{state.channel}/{state.current_version}/{device_id}".encode()
    bucket = xxhash.xxh64_intdigest(salted) / 2**64 * 100.0  # uniform in [0, 100)
    return bucket < state.rollout_percent


def plan_update(
    graph: ChannelState | Iterable[UpdateEdge], current_version: Version | None, target_version: Version
) -> list[UpdateEdge]:
    """The cheapest list of bundles (by total bytes) from `current_version` to
    `target_version`; [] if already there. Full bundles apply from any version
    (and are the only way in from None). Ties go to fewer bundles, then to
    target names in order, so the plan is deterministic.
    Raises NoUpdatePathError if no chain exists."""
    edges: Sequence[UpdateEdge] = graph.edges if isinstance(graph, ChannelState) else tuple(graph)
    if current_version == target_version:
        return []
    diffs: dict[int, list[UpdateEdge]] = {}
    fulls: list[UpdateEdge] = []
    for edge in edges:
        if edge.from_version is None:
            fulls.append(edge)
        else:
            diffs.setdefault(edge.from_version, []).append(edge)

    # 1) Dijkstra over versions, from NO_MODEL if nothing is installed.
    start = NO_MODEL if current_version is None else current_version
    best: dict[int, tuple[int, int, tuple[str, ...]]] = {start: (0, 0, ())}
    plan: dict[int, list[UpdateEdge]] = {start: []}
    heap: list[tuple[int, int, tuple[str, ...], int]] = [(0, 0, (), start)]
    done: set[int] = set()
    while heap:
        cost, hops, names, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node == target_version:
            return plan[node]
        # 2) relax: full bundles leave every node, diffs only their source version
        for edge in [*fulls, *diffs.get(node, [])]:
            key = (cost + edge.size, hops + 1, (*names, edge.target))
            nxt = edge.to_version
            if nxt not in done and (nxt not in best or key < best[nxt]):
                best[nxt] = key
                plan[nxt] = [*plan[node], edge]
                heapq.heappush(heap, (*key, nxt))
    known = sorted({e.to_version for e in edges} | {e.from_version for e in edges if e.from_version is not None})
    raise NoUpdatePathError(
        f"no published bundle chain leads from {'no installed model' if current_version is None else current_version}"
        f" to {target_version}; versions in the graph: {', '.join(map(str, known)) or 'none'}"
    )


# --- reading (through a refreshed TUF client) ---------------------------------------
def fetch_channel(updater: TrustedUpdater, model_id: str, channel: str) -> ChannelState:
    """Read and verify a channel file through a refreshed `TrustedUpdater`."""
    name = channel_target_name(model_id, channel)
    info = updater.get_target(name)
    if info is None:
        raise StoreNotFoundError(f"channel {name} is not in the signed targets; expected it to be published")
    return ChannelState.from_json(updater.read_target(info))
