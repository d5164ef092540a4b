"""Map library errors to one-line CLI errors with distinct exit codes."""
from __future__ import annotations

from typing import Any

import click

from device_agent.errors import OtaError


class OtaCliError(click.ClickException):
    """A library error shown as one line; exit code from the error class."""

    def __init__(self, error: OtaError) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.exit_code = error.exit_code


class OtaGroup(click.Group):
    """Top-level group: any OtaError raised below becomes an OtaCliError."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OtaError as exc:
            raise OtaCliError(exc) from exc
