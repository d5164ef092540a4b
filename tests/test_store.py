"""Store backends: round trips, ranges, conditional-write races, error mapping."""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest

from device_agent.errors import (
    ConfigError,
    DiskFullError,
    StoreAuthError,
    StoreConflictError,
    StoreNotFoundError,
    StoreUnreachableError,
)
from device_agent import store as store_mod
from demo.seaweed import SeaweedEndpoint
from device_agent.store import FileStore, S3Store, Store, open_store


def test_round_trip(store: Store) -> None:
    assert store.head("a/b.bin") is None
    info = store.put("a/b.bin", b"hello world")
    assert info.size == 11
    assert store.get("a/b.bin") == b"hello world"
    assert store.head("a/b.bin") == info
    store.put("a/c.bin", b"")
    store.put("z.bin", b"z")
    assert store.list() == ["a/b.bin", "a/c.bin", "z.bin"]
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    assert store.get("a/c.bin") == b""
    # a replace changes the ETag
    assert store.put("a/b.bin", b"hello again").etag != info.etag
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # idempotent, as on S3
    assert store.head("a/b.bin") is None
    with pytest.raises(StoreNotFoundError):
        store.get("a/b.bin")


def test_ranged_get(store: Store) -> None:
    data = bytes(range(256)) * 10
    store.put("blob", data)
    assert store.get_range("blob", 0, 10) == data[:10]
    assert store.get_range("blob", 100, 356) == data[100:356]
    assert store.get_range("blob", 2550, 9999) == data[2550:]  # clipped at the end
    assert store.get_range("blob", 2560, 2600) == b""  # starts at the end
    assert store.get_range("blob", 5000, 5001) == b""  # starts past the end
    assert store.get_range("blob", 7, 7) == b""
    with pytest.raises(ConfigError):
        store.get_range("blob", 10, 5)
    with pytest.raises(StoreNotFoundError):
        store.get_range("missing", 0, 10)


def test_put_file_with_progress(store: Store, tmp_path: Path) -> None:
    # Above the multipart threshold, so S3 uploads it in parts.
    size = store_mod.MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(size))
    seen: list[tuple[int, int]] = []
    info = store.put_file("big/one.bin", path, progress=lambda done, total: seen.append((done, total)))
    assert info.size == size
    assert hashlib.sha256(store.get("big/one.bin")).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert seen[-1] == (size, size) and all(t == size for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the precondition is enforced for file uploads too (on Complete for multipart)
    with pytest.raises(StoreConflictError):
        store.put_file("big/one.bin", path, if_none_match=True)
    if isinstance(store, S3Store):
        assert len(seen) >= 2


def test_conditional_writes(store: Store) -> None:
    first = store.put("lock", b"1", if_none_match=True)
    with pytest.raises(StoreConflictError, match="expected"):
        store.put("lock", b"2", if_none_match=True)
    second = store.put("lock", b"2", if_match=first.etag)
    with pytest.raises(StoreConflictError):
        store.put("lock", b"3", if_match=first.etag)  # stale ETag
    with pytest.raises(StoreConflictError):
        store.put("absent", b"3", if_match=second.etag)
    with pytest.raises(ConfigError):
        store.put("lock", b"4", if_match=second.etag, if_none_match=True)
    assert store.get("lock") == b"2"


def _race(n: int, write) -> tuple[list[int], list[Exception]]:  # noqa: ANN001
    barrier = threading.Barrier(n)
    wins: list[int] = []
    losses: list[Exception] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            write(i)
            wins.append(i)
        except StoreConflictError as exc:
            losses.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, losses


def _twin(store: Store, request: pytest.FixtureRequest) -> Store:
    """A second Store on the same place: its own connections / file descriptors, like a second host."""
    if isinstance(store, FileStore):
        return FileStore(store.root)
    seaweed: SeaweedEndpoint = request.getfixturevalue("seaweed")
    return open_store(store.url, access_key=seaweed.access_key, secret_key=seaweed.secret_key)


@pytest.mark.parametrize("kind", ["create", "replace"])
def test_two_publishers_race(store: Store, kind: str, request: pytest.FixtureRequest) -> None:
    """Two publishers write the same key with the same precondition: one wins,
    the other gets StoreConflictError, and the winner's bytes are what is stored."""
    publishers = [store, _twin(store, request)]
    for round_ in range(5):
        key = f"race/{kind}-{round_}"
        if kind == "create":
            wins, losses = _race(2, lambda i: publishers[i].put(key, f"p{i}".encode(), if_none_match=True))
        else:
            etag = store.put(key, b"base").etag
            wins, losses = _race(2, lambda i: publishers[i].put(key, f"p{i}".encode(), if_match=etag))
        assert len(wins) == 1 and len(losses) == 1, (wins, losses)
        assert store.get(key) == f"p{wins[0]}".encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_unreachable_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    s3 = S3Store("bucket", endpoint_url=endpoint, access_key="x", secret_key="y", max_attempts=1)
    with pytest.raises(StoreUnreachableError, match=endpoint.replace(".", r"\.")):
        s3.get("key")


def test_s3_wrong_credentials(seaweed: SeaweedEndpoint, bucket: str) -> None:
    s3 = S3Store(bucket, endpoint_url=seaweed.endpoint_url, access_key=seaweed.access_key, secret_key="wrong")
    with pytest.raises(StoreAuthError, match="credentials"):
        s3.put("key", b"x")
    unknown = S3Store(bucket, endpoint_url=seaweed.endpoint_url, access_key="nobody", secret_key="wrong")
    with pytest.raises(StoreAuthError):
        unknown.get("key")


def test_s3_absent_bucket(seaweed: SeaweedEndpoint) -> None:
    # SeaweedFS would create the bucket on PutObject; the store must refuse instead.
    s3 = S3Store("no-such-bucket-here", endpoint_url=seaweed.endpoint_url, access_key=seaweed.access_key, secret_key=seaweed.secret_key)
    for op in (lambda: s3.put("key", b"x"), lambda: s3.get("key"), lambda: s3.list()):
        with pytest.raises(StoreNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
            op()


def test_s3_credentials_from_environment(seaweed: SeaweedEndpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.aws_env().items():
        monkeypatch.setenv(name, value)
    s3 = open_store(f"s3://{bucket}/env-prefix?endpoint={seaweed.endpoint_url}")
    assert isinstance(s3, S3Store)
    s3.put("k", b"v")
    assert s3.get("k") == b"v"
    assert s3.list() == ["k"]


def test_file_store_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        FileStore(tmp_path / "nope").get("k")
    fs = FileStore(tmp_path / "s", create=True)
    for bad in ("", "/abs", "a/../b", "a//b", ".ota-store/lock", "a\\b"):
        with pytest.raises(ConfigError):
            fs.put(bad, b"x")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "fsync", full)
    with pytest.raises(DiskFullError):
        fs.put("k", b"x")
    monkeypatch.undo()
    assert fs.head("k") is None
    assert fs.list() == []  # no temp file left behind or listed
    assert not [n for n in os.listdir(fs.root / FileStore.INTERNAL_DIR) if n.startswith("tmp-")]


def test_open_store_urls(tmp_path: Path) -> None:
    fs = open_store(tmp_path.as_uri())
    assert isinstance(fs, FileStore) and fs.root == tmp_path
    s3 = open_store("s3://my-bucket/some/prefix?endpoint=http://127.0.0.1:8333&region=eu-west-1", access_key="a", secret_key="b")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == ("my-bucket", "some/prefix/", "http://127.0.0.1:8333", "eu-west-1")
    for bad in ("http://x", "s3:///nobucket", "file://host/path", "s3://b?bogus=1"):
        with pytest.raises(ConfigError):
            open_store(bad)
