"""The one atomic write: temp file in the same folder, fsync, rename, folder fsync."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from device_agent import atomic
from device_agent.atomic import write_atomic


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(tmp_path / "private", b"k", mode=0o600)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_write_atomic_syncs_the_file_before_and_the_folder_after_the_rename(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_atomic(tmp_path / "model.otam", b"bytes")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "active.json"
    write_atomic(path, b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["active.json"]


def test_a_write_in_pieces_reports_its_progress_and_writes_the_same_bytes(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    seen: list[int] = []

    def after(done: int) -> None:  # mid-write: only the temp file exists, the target does not yet
        seen.append(done)
        assert not (tmp_path / "m.bin").exists() and len(atomic.temp_files(tmp_path / "m.bin")) == 1

    write_atomic(tmp_path / "m.bin", data, chunk_size=4096, after_chunk=after)
    assert seen == [4096, 8192, 10_000]
    assert (tmp_path / "m.bin").read_bytes() == data and not atomic.temp_files(tmp_path / "m.bin")
