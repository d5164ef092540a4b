"""Options whose defaults live in the library.

The command line passes None unless the user gave a value, so the library's
own default applies (one place to change it); `--help` asks the library what
that default is, so the heavy library module is imported only to show one
command's help, never for `ota --help`.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

import click


class LibraryDefault(click.Option):
    """A click option with `default_of`: a callable returning the library's default (for --help)."""

    def __init__(self, *args: Any, default_of: Callable[[], object], **kwargs: Any) -> None:
        kwargs.update(default=None, show_default=False)
        super().__init__(*args, **kwargs)
        self.default_of = default_of

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        opts, text = record
        return opts, f"{text}  [default: {self.default_of()}]"


def field_default(path: str, name: str) -> Callable[[], object]:
    """The default of `name`: a field of the dataclass, or a parameter of the function,
    `module:attribute` (imported when called)."""

    def default() -> object:
        module, _, attribute = path.partition(":")
        target = getattr(importlib.import_module(module), attribute)
        if not dataclasses.is_dataclass(target):
            return inspect.signature(target).parameters[name].default
        (found,) = (f for f in dataclasses.fields(target) if f.name == name)
        return found.default_factory() if found.default is dataclasses.MISSING else found.default  # type: ignore[misc]

    return default


def given(**options: object) -> dict[str, object]:
    """The options the user gave (LibraryDefault options are None otherwise)."""
    return {k: v for k, v in options.items() if v is not None}
