"""Crash-safe file writes, the one implementation the project uses: temp file in
the same folder, fsync, rename, then fsync of the folder so the rename itself
survives a power loss."""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make the entries of `path` (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot fsync a folder
            raise
    finally:
        os.close(fd)


def temp_files(path: str | Path) -> list[Path]:
    """Temp files `write_atomic` left beside `path` when its process was killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644, chunk_size: int | None = None,
                 after_chunk: Callable[[int], None] | None = None) -> None:
    """Readers see the old file or the new one, never a partial write; durable on return.
    `mode`: ordinary shared files by default (mkstemp alone would make them 0600).
    `chunk_size`: write in pieces of this many bytes, calling `after_chunk(bytes written so far)`
    after each (progress; the crash tests throttle there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            view, step = memoryview(data), chunk_size or max(len(data), 1)
            for start in range(0, len(view), step):
                f.write(view[start:start + step])
                if after_chunk is not None:
                    after_chunk(min(start + step, len(view)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
