"""What the agent persists between steps: `<data_dir>/state.json`.

Written with temp file + fsync + os.replace after every transition, so a
restarted daemon finds the last completed step and re-runs the next one.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent.atomic import write_atomic
from device_agent.errors import DataError, os_error
from device_agent.agent.lifecycle import State
from device_agent.version import Version, VersionField, parse_version

STATE_FORMAT = 1


@dataclass
class SlotRef:
    """A model in a slot: which slot, and what must be in it."""

    slot: str
    version: Version
    hash: str


@dataclass
class UpdateRecord:
    """The update in progress (one bundle = one hop of a plan)."""

    attempt_id: str
    target: str  # TUF target name of the bundle
    length: int  # signed length
    hashes: dict[str, str]  # signed hashes
    store_key: str
    kind: str  # "full" | "diff"
    from_version: Version | None
    to_version: Version
    base_hash: str | None
    target_hash: str  # signed custom metadata: what the applied model must hash to
    expected_wer: float | None
    started_at: float
    previous: SlotRef | None  # the active model when the update started
    candidate_slot: str
    bytes_downloaded: int = 0  # bytes received and kept (all runs)
    bytes_refetched: int = 0  # bytes of ranges requested again after a failed request
    resumed_from: int = 0  # offset of the first resumed download (0: fresh)
    durations: dict[str, float] = field(default_factory=dict)  # seconds per state
    wer_before: float | None = None
    wer_after: float | None = None
    gate_reasons: list[str] = field(default_factory=list)
    failed_offsets: list[int] = field(default_factory=list)  # chunk requests that failed (resume accounting)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UpdateRecord:
        return typed_record(cls, obj, "update")


@dataclass
class AgentState:
    state: State = State.IDLE
    update: UpdateRecord | None = None
    refused: list[Version] = field(default_factory=list)  # versions never retried automatically
    last_error: dict[str, str] | None = None  # {"class", "message"} of the last failed attempt
    last_outcome: dict[str, Any] | None = None  # summary of the last finished attempt
    last_check: dict[str, Any] | None = None  # when the store was last asked, and what it said
    failed_in: str | None = None  # the state whose action raised last_error
    rollback: dict[str, SlotRef | None] | None = None  # {"to", "from"} while rolling back
    # The record of a failed attempt, kept only for its download accounting: a retry of the same
    # bundle resumes the .part file and reports the bytes of both runs. `update` ends with its attempt.
    resume: UpdateRecord | None = None
    steps: int = 0  # transitions so far (monotonic; handy in logs and crash tests)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = self.state.value
        doc["format"] = STATE_FORMAT
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> AgentState:
        if not isinstance(doc, dict):
            raise DataError(f"agent state: expected a JSON object, got {type(doc).__name__}")
        doc = dict(doc)
        if doc.pop("format", None) != STATE_FORMAT:
            raise DataError(f"agent state format: expected {STATE_FORMAT}")
        try:
            doc["state"] = State(doc.get("state"))
        except ValueError:
            raise DataError(f"agent state: unknown state {doc.get('state')!r:.40}") from None
        return typed_record(cls, doc, "state")


def typed_record(cls: type, obj: Any, where: str) -> Any:
    """A dataclass from parsed JSON, every field checked against its annotation
    (nested dataclasses, optionals, lists and dicts of plain types); DataError
    names the first field of the wrong type. Unknown or missing fields are errors too."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if set(obj) - names or required - set(obj):
        raise DataError(f"{where}: fields {sorted(obj)[:20]} differ from the expected {sorted(names)}")
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in obj.items()})


def _typed(value: Any, tp: Any, where: str) -> Any:
    """`value` checked (and, for floats and versions, converted) against the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _typed_annotated(value, args, where)
    if origin in (typing.Union, types.UnionType):
        return _typed_optional(value, tp, args, where)
    if dataclasses.is_dataclass(tp):
        return typed_record(tp, value, where)
    if origin in (list, dict):
        return _typed_container(value, tp, origin, args, where)
    return _typed_plain(value, tp, where)


def _typed_annotated(value: Any, args: tuple[Any, ...], where: str) -> Any:
    if VersionField in args[1:]:
        # files of earlier releases hold versions as decimal strings
        return parse_version(value, where, DataError, legacy_text=True)
    return _typed(value, args[0], where)


def _typed_optional(value: Any, tp: Any, args: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    return _typed(value, inner[0], where) if len(inner) == 1 else _fail(value, tp, where)


def _typed_container(value: Any, tp: Any, origin: type, args: tuple[Any, ...], where: str) -> Any:
    if origin is list and isinstance(value, list):
        return [_typed(v, args[0], f"{where}[]") for v in value]
    if origin is dict and isinstance(value, dict):
        return {_typed(k, args[0], where): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return _fail(value, tp, where)


def _typed_plain(value: Any, tp: Any, where: str) -> Any:
    if tp is Any or (isinstance(tp, type) and issubclass(tp, State) and isinstance(value, State)):
        return value
    if tp is float and type(value) in (int, float):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    return _fail(value, tp, where)


def _fail(value: Any, tp: Any, where: str) -> Any:
    raise DataError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r:.40}")


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / "state.json"


def load_state(data_dir: Path) -> AgentState:
    """The persisted state, or a fresh idle one. A corrupt file is an error, not a reset:
    silently forgetting the refused versions would retry a bad model."""
    path = state_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AgentState()
    except OSError as exc:  # e.g. data_dir below a regular file, a directory named state.json
        raise os_error(exc, f"reading the agent state {path}") from None
    try:
        return AgentState.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError, RecursionError, DataError) as exc:
        raise DataError(f"agent state {path} is unreadable ({str(exc)[:200]}); expected the JSON the agent writes. "
                        "Move it aside to start over (refused versions will be forgotten)") from None


def save_state(data_dir: Path, st: AgentState) -> None:
    write_json_atomic(state_path(data_dir), st.to_json())


def write_json_atomic(path: Path, doc: Any) -> None:
    """JSON via write_atomic; ENOSPC -> DiskFullError naming the file."""
    try:
        write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    except OSError as exc:
        raise os_error(exc, f"writing {path}") from None
