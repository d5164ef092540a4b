"""One way to fail: every error the project raises is in device_agent/errors.py, and operating-system
errors become project errors in one function, `os_error`."""
from __future__ import annotations

import ast
import builtins
import errno
import os
from pathlib import Path

import pytest

from device_agent import errors as e

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("device_agent", "packager", "diffing", "cli", "demo")
BUILTIN_ERRORS = {name for name, obj in vars(builtins).items()
                  if isinstance(obj, type) and issubclass(obj, BaseException)}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path)))
            for package in LIBRARY for path in sorted((ROOT / package).rglob("*.py"))]


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def test_no_error_class_outside_the_one_module() -> None:
    strays = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}" for path, tree in _modules()
              for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
              and any(_name(base) in BUILTIN_ERRORS for base in node.bases)
              and path != ROOT / "device_agent" / "errors.py"]
    assert strays == [], "error classes outside device_agent/errors.py"


def test_the_library_raises_only_project_errors() -> None:
    raised = [f"{path.relative_to(ROOT)}:{node.lineno} {_name(node.exc.func)}" for path, tree in _modules()
              for node in ast.walk(tree) if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
              and _name(node.exc.func) in BUILTIN_ERRORS]
    assert raised == [], "builtin exceptions raised on purpose"


def test_errno_is_read_in_one_place() -> None:
    # atomic.py: a folder fsync that a filesystem does not support is skipped, not an error
    readers = {str(path.relative_to(ROOT)) for path, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "errno"}
    assert readers == {"device_agent/errors.py", "device_agent/atomic.py"}


@pytest.mark.parametrize("exc, cls, words", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/a"), e.FileMissingError, "not found"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), e.WrongPathKindError, "wrong kind of path"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), e.WrongPathKindError, "wrong kind of path"),
    (PermissionError(errno.EACCES, "Permission denied", "/x"), e.FilePermissionError, "permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/x"), e.FilePermissionError, "permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/x"), e.DiskFullError, "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/x"), e.DiskFullError, "no space left on device"),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/x"), e.LocalFileError, "cannot use it"),
])
def test_os_error_is_one_mapping(exc: OSError, cls: type, words: str) -> None:
    mapped = e.os_error(exc, "reading /x")
    assert type(mapped) is cls and isinstance(mapped, e.TransportError)
    assert str(mapped).startswith("reading /x: ") and words in str(mapped) and "\n" not in str(mapped)
    assert str(e.os_error(exc)).startswith(exc.filename)  # without context, the file it names


def test_os_error_callers_may_name_what_missing_and_forbidden_mean() -> None:
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "k")
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "k")
    assert isinstance(e.os_error(missing, "get k", missing=e.StoreNotFoundError), e.StoreNotFoundError)
    assert isinstance(e.os_error(denied, "put k", denied=e.StoreAuthError), e.StoreAuthError)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert isinstance(e.os_error(full, "put k", missing=e.StoreNotFoundError), e.DiskFullError)


def test_every_error_class_is_in_the_hierarchy() -> None:
    classes = [obj for obj in vars(e).values() if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert all(issubclass(cls, e.OtaError) for cls in classes)
    assert {e.DataError, e.TransportError} <= set(classes)
    assert issubclass(e.WrongBaseError, e.DiffError) and issubclass(e.NoUpdatePathError, e.DataError)
