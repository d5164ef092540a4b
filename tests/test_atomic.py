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


# Renames outside write_atomic, each for a reason write_atomic cannot serve.
OWN_RENAMES = {
    "device_agent/atomic.py": 1,  # write_atomic itself
    "device_agent/store.py": 1,  # FileStore: the If-Match check and the rename are one step under the store lock
    "device_agent/agent/download.py": 1,  # a streamed download: the fsynced part file becomes the bundle once verified
    "device_agent/trust_client.py": 1,  # symlinks in the metadata folder (no bytes to write)
    "packager/trust.py": 2,  # whole folders: new keys moved into place, revoked keys moved aside
}


def _file_writes(path: Path) -> tuple[int, list[str]]:
    """(renames, other direct writes) in one module: os.replace/os.rename/shutil.move and
    Path.replace/Path.rename (one positional argument), and Path.write_text/write_bytes."""
    import ast

    renames, writes = 0, []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, node.func.value
        if isinstance(owner, ast.Name) and (owner.id, name) in {("os", "replace"), ("os", "rename"), ("shutil", "move")}:
            renames += 1
        elif name in ("replace", "rename") and len(node.args) == 1 and not node.keywords \
                and not isinstance(node.args[0], ast.Constant):
            renames += 1
        elif name in ("write_text", "write_bytes"):
            writes.append(f"{name} at line {node.lineno}")
    return renames, writes


def test_every_persisted_file_is_written_by_write_atomic() -> None:
    root = Path(__file__).resolve().parents[1]
    found = {}
    for package in ("device_agent", "packager", "diffing", "demo", "cli"):
        for path in sorted((root / package).rglob("*.py")):
            renames, writes = _file_writes(path)
            rel = path.relative_to(root).as_posix()
            if rel == "diffing/synth/voices.py":  # text2wave's input: a scratch file removed with its WAV
                writes = []
            if renames or writes:
                found[rel] = (renames, writes)
    assert found == {rel: (n, []) for rel, n in OWN_RENAMES.items()}, \
        "write files with device_agent.atomic.write_atomic (temp file, fsync, rename, folder fsync)"
