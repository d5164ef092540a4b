"""A click group whose subcommands are imported on first use."""
from __future__ import annotations

import importlib
from typing import Any

import click

from cli.version import version_message


def lazy_group(base: type[click.Group], commands: dict[str, tuple[str, str]]) -> click.Group:
    """The top-level `ota` group over `commands` (name -> (module, attribute))."""

    class LazyGroup(base):  # type: ignore[misc, valid-type]
        def list_commands(self, ctx: click.Context) -> list[str]:
            return list(commands)

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            if name not in commands:
                return None
            module_name, attribute = commands[name]
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                return _unavailable(name, exc)
            return getattr(module, attribute)

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(message=version_message(), version="")
    def cli() -> None:
        """OTA neural-diff updates for on-device speech recognition models.

        \b
        Example:
          ota transcribe clip.wav --model models/base-v1.otam
        \b
        Exit codes: docs/cli.md (0 ok, 1 bug, 2 usage, 3-11 bad input, 20-27 store, disk, jobs,
        30-34 files and missing packages).
        """

    return cli


_PROJECT = {"cli", "device_agent", "packager", "diffing", "demo"}


def _unavailable(name: str, error: ImportError) -> click.Command:
    """A stand-in that says why `name` cannot run: a dependency this install lacks (a device
    install has no server extras), or a broken project module (a bug, exit code 1)."""
    from cli import exit_codes

    missing = error.name is not None and error.name.split(".")[0] not in _PROJECT
    reason = f"needs {error.name}, which is not installed" if missing else f"import failed: {error}"
    hint = "; install the extras: pip install 'ota-speech[demo]'" if missing else " (a bug)"
    code = exit_codes.MISSING_DEPENDENCY if missing else exit_codes.INTERNAL

    @click.command(name=name, help=f"(unavailable: {reason})",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command(**_: Any) -> None:
        from cli.errors import CliFault

        raise CliFault(f"ota {name} is unavailable: {reason}{hint}", code)

    return command
