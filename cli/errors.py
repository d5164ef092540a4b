"""Every failure of an `ota` command is one line on stderr with a distinct exit code.

Library errors keep their message; operating-system errors become library
errors first (device_agent.errors.os_error, the one mapping) and name the
file and what went wrong; anything else is a bug, shown as one line unless
OTA_DEBUG=1 asks for the traceback.
"""
from __future__ import annotations

import os
from typing import Any

import click

from cli import exit_codes
from device_agent.errors import OtaError, os_error


class CliFault(click.ClickException):
    """One-line error with its exit code (printed as `Error: ...`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.exit_code = exit_code


def fault_for(exc: BaseException) -> CliFault | None:
    """The one-line CLI fault for an exception (None: let click handle it)."""
    if isinstance(exc, OSError):
        exc = os_error(exc)  # the one mapping, shared with the library
    if isinstance(exc, OtaError):
        return CliFault(f"{type(exc).__name__}: {exc}", exit_codes.code_for_error(exc))
    if isinstance(exc, (click.ClickException, click.exceptions.Exit, click.exceptions.Abort)):
        return None
    if isinstance(exc, KeyboardInterrupt):
        return CliFault("interrupted", exit_codes.INTERRUPTED)
    if isinstance(exc, Exception):
        if os.environ.get("OTA_DEBUG"):
            return None
        text = str(exc).splitlines()[0] if str(exc) else ""
        return CliFault(f"internal error {type(exc).__name__}: {text} (a bug; set OTA_DEBUG=1 for the traceback)",
                        exit_codes.INTERNAL)
    return None


class OtaGroup(click.Group):
    """Top-level group: every error raised below becomes a one-line CliFault."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as exc:  # noqa: BLE001 - mapped or re-raised below
            fault = fault_for(exc)
            if fault is None:
                raise
            raise fault from exc
