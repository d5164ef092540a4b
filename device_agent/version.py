"""Model versions: one type for model files, bundles, channels, slots, agent state and reports.

A version is an integer 0..MAX_VERSION, written as a JSON integer. Every
reader checks it with `parse_version`, which raises the caller's project
error with a one-line message, so a channel that says "1.3" is refused like
any other bad input instead of failing somewhere later.

Files that earlier releases wrote on a device (the active pointer, the agent
state, heartbeats) and channel files of format 1 held versions as decimal
strings; `legacy_text=True` reads those ("3", never "03", "1.3" or " 3").
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from device_agent.errors import DataError

MAX_VERSION = 2**53  # exact in every JSON reader
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,15}")


class VersionField:
    """Marks a dataclass field as a version, for readers that check fields by annotation."""


Version = Annotated[int, VersionField]


def is_version(value: Any) -> bool:
    """An integer (not a bool, not a whole float) in 0..MAX_VERSION."""
    return type(value) is int and 0 <= value <= MAX_VERSION


def parse_version(value: Any, what: str, error: type[DataError], *, legacy_text: bool = False) -> int:
    """`value` as a version, or `error` naming `what`, the rule and what arrived."""
    if legacy_text and isinstance(value, str) and _DECIMAL.fullmatch(value):
        value = int(value)
    if not is_version(value):
        raise error(f"{what} {value!r:.40} must be an integer in [0, 2^53] (a model version)")
    return value
