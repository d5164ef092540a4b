"""Path parameters checked before a command starts, each failure one line with its exit code.

click's own `exists=True` check is a usage error (exit 2, three lines of
usage text); these name the path, say what was expected and raise the
library's file errors, which cli/exit_codes.py maps to their codes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from device_agent.errors import FileMissingError, FilePermissionError, WrongPathKindError, os_error


def _label(param: click.Parameter | None) -> str:
    if isinstance(param, click.Option):
        return f"{param.opts[0]} "
    return f"{param.human_readable_name} " if param is not None else ""


class InputPath(click.ParamType):
    """An existing, readable file (or folder, with `folder=True`)."""

    name = "path"

    def __init__(self, folder: bool = False) -> None:
        self.folder = folder

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        label = _label(param)
        kind = "folder" if self.folder else "file"
        if not path.exists():
            raise FileMissingError(f"{label}{path} not found; expected an existing {kind}")
        if self.folder != path.is_dir():
            found = "a folder" if path.is_dir() else "a file"
            raise WrongPathKindError(f"{label}{path} is {found}; expected a {kind}")
        if not os.access(path, os.R_OK | (os.X_OK if self.folder else 0)):
            raise FilePermissionError(f"{label}{path} is not readable")
        return path


class OutputPath(click.ParamType):
    """A file (or folder) that can be created: missing parents are made, but the
    nearest existing ancestor must be a writable folder."""

    name = "path"

    def __init__(self, folder: bool = False) -> None:
        self.folder = folder

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        label = _label(param)
        if path.exists() and path.is_dir() != self.folder:
            expected = "a folder" if self.folder else "a file, not a folder"
            raise WrongPathKindError(f"{label}{path} exists and is not {expected}")
        ancestor = path.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise WrongPathKindError(f"{label}{path}: {ancestor} is a file; expected a folder")
        try:  # a real probe: permission bits say nothing for root or on read-only file systems
            with tempfile.TemporaryFile(dir=ancestor):
                pass
        except OSError as exc:
            raise os_error(exc, f"{label}{path}: folder {ancestor} is not writable") from None
        return path


INPUT_FILE = InputPath()
INPUT_FOLDER = InputPath(folder=True)
OUTPUT_FILE = OutputPath()
OUTPUT_FOLDER = OutputPath(folder=True)
