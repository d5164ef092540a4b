"""A/B model slots and the active pointer.

    <data_dir>/slots/a/model.otam
    <data_dir>/slots/b/model.otam
    <data_dir>/slots/active.json   {"active": {slot, version, hash}, "previous": {...} | null}

Updates are written only into the slot the pointer does not name, so the
active model file is never opened for writing. Switching models is one
atomic replace of `active.json` (temp + fsync + os.replace + fsync of the
folder): after a crash the pointer names either the old or the new model,
and each was fully written and synced before the pointer could name it.
A write killed half way leaves only a temp file beside the slot's model
(`.model.otam.*.tmp`), which the next write into that slot removes.

Test hook: `after_slot_piece` is None on devices. The crash benchmark
(`bench/crash_agent.py`) and the kill tests set it to slow the candidate's
write down, so that a SIGKILL lands in the middle of the agent's own write.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from device_agent.atomic import temp_files, write_atomic
from device_agent.errors import DataError, ModelFormatError, os_error
from device_agent.agent.state import SlotRef, typed_record

SLOTS = ("a", "b")
MODEL_FILE = "model.otam"
SLOT_WRITE_PIECES = 64  # a candidate is written in this many pieces (of at least 4 KiB)
# called with (bytes written, total) after each piece of a candidate reaches its temp file; see above
after_slot_piece: Callable[[int, int], None] | None = None


@dataclass
class Pointer:
    active: SlotRef | None = None
    previous: SlotRef | None = None  # where `ota agent rollback` goes (if that slot still holds it)


def slots_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "slots"


def model_path(data_dir: Path, slot: str) -> Path:
    if slot not in SLOTS:
        raise DataError(f"slot {slot!r}: expected one of {SLOTS}")
    return slots_dir(data_dir) / slot / MODEL_FILE


def other_slot(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


def pointer_path(data_dir: Path) -> Path:
    return slots_dir(data_dir) / "active.json"


def read_pointer(data_dir: Path) -> Pointer:
    path = pointer_path(data_dir)
    try:
        return typed_record(Pointer, json.loads(path.read_bytes()), "pointer")
    except FileNotFoundError:
        return Pointer()
    except OSError as exc:  # e.g. data_dir below a regular file
        raise os_error(exc, f"reading the active pointer {path}") from None
    except (ValueError, TypeError, KeyError, RecursionError, DataError) as exc:
        raise DataError(f"active pointer {path} is unreadable ({str(exc)[:200]}); expected the JSON the agent "
                        "writes") from None


def write_pointer(data_dir: Path, pointer: Pointer) -> None:
    """The activation itself: one atomic, durable replace."""
    path = pointer_path(data_dir)
    doc = {"active": asdict(pointer.active) if pointer.active else None,
           "previous": asdict(pointer.previous) if pointer.previous else None}
    try:
        write_atomic(path, json.dumps(doc, sort_keys=True).encode())  # durable: the folder is synced too
    except OSError as exc:
        raise os_error(exc, f"switching the active model pointer {path}") from None


def write_model(data_dir: Path, slot: str, data: bytes) -> Path:
    """Candidate model file into `slot` (temp + fsync + rename + fsync dir)."""
    path = model_path(data_dir, slot)
    hook = after_slot_piece
    try:
        for stale in temp_files(path):  # from a write that was killed: its space is wasted otherwise
            stale.unlink(missing_ok=True)
        write_atomic(path, data, chunk_size=max(4096, -(-len(data) // SLOT_WRITE_PIECES)),
                     after_chunk=None if hook is None else lambda done: hook(done, len(data)))
    except OSError as exc:
        raise os_error(exc, f"writing the candidate model {path}") from None
    return path


def discard_model(data_dir: Path, slot: str) -> None:
    model_path(data_dir, slot).unlink(missing_ok=True)


def load_slot(data_dir: Path, ref: SlotRef):  # -> DeviceModel
    """Load the model a pointer entry names and check it is what the entry says."""
    from device_agent.model_format import load_model

    model = load_model(model_path(data_dir, ref.slot))
    if model.content_hash() != ref.hash:
        raise ModelFormatError(f"slot {ref.slot} holds model {model.content_hash()}, the pointer expects {ref.hash}")
    return model
