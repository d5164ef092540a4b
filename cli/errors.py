"""Every failure of an `ota` command is one line on stderr with a distinct exit code.

Library errors keep their message; operating-system errors name the file
and what went wrong; anything else is a bug, shown as one line unless
OTA_DEBUG=1 asks for the traceback.
"""
from __future__ import annotations

import errno
import os
from typing import Any

import click

from cli import exit_codes
from device_agent.errors import OtaError


class CliFault(click.ClickException):
    """One-line error with its exit code (printed as `Error: ...`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.exit_code = exit_code


def os_error_message(error: OSError) -> str:
    what = {exit_codes.FILE_NOT_FOUND: "not found", exit_codes.IS_A_DIRECTORY: "wrong kind of path",
            exit_codes.PERMISSION_DENIED: "permission denied"}.get(exit_codes.code_for_os_error(error))
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full"
    name = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    return f"{name}: {what or 'cannot use it'} ({reason})" if name else f"{what or 'OS error'}: {reason}"


def fault_for(exc: BaseException) -> CliFault | None:
    """The one-line CLI fault for an exception (None: let click handle it)."""
    if isinstance(exc, OtaError):
        return CliFault(f"{type(exc).__name__}: {exc}", exit_codes.code_for_error(exc))
    if isinstance(exc, OSError):
        return CliFault(os_error_message(exc), exit_codes.code_for_os_error(exc))
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
