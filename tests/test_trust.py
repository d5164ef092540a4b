"""Publish through packager.trust, fetch through device_agent.trust_client."""
from __future__ import annotations

import hashlib
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from device_agent.errors import ConfigError, StoreConflictError, StoreUnreachableError, TrustError
from packager import trust
from device_agent.store import S3Store, Store
from device_agent.trust_client import TargetInfo, TrustedUpdater, verify_target
from tests.support import agent_download


def test_publish_then_fetch_verifies_hashes(store: Store, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    root = trust.init_repository(store, keys)
    bundle = os.urandom(300_000)
    custom = {"model_id": "kws-en", "base_version": 10, "target_version": 11,
              "method": "int8-sparse-delta", "expected_wer": "0.0712", "content_sha256": "ab" * 32}
    published = trust.publish_target(store, keys, "bundles/kws-en/10-11.otab", bundle, custom)
    # the blob is stored under its hash (consistent snapshots)
    assert store.head(f"targets/bundles/kws-en/{hashlib.sha256(bundle).hexdigest()}.10-11.otab") is not None

    client = TrustedUpdater(store, tmp_path / "device" / "metadata", root)
    client.refresh()
    info = client.get_target("bundles/kws-en/10-11.otab")
    assert info is not None
    assert info.length == len(bundle) == published.length
    assert info.hashes == {"sha256": hashlib.sha256(bundle).hexdigest()}
    assert info.custom == custom
    dest = agent_download(store, info, tmp_path / "device")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == info.hashes["sha256"]
    assert client.read_target(info) == bundle
    assert [t.name for t in client.list_targets()] == ["bundles/kws-en/10-11.otab"]
    assert client.get_target("bundles/absent") is None


def test_large_target_from_path(s3_store: S3Store, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    root = trust.init_repository(s3_store, keys)
    path = tmp_path / "full.otab"
    path.write_bytes(os.urandom(9 * 1024 * 1024 + 5))  # multipart upload
    progress: list[int] = []
    trust.publish_target(s3_store, keys, "bundles/full.otab", path, {"method": "full"}, progress=lambda d, t: progress.append(d))
    assert progress[-1] == path.stat().st_size
    client = TrustedUpdater(s3_store, tmp_path / "md", root, target_chunk_size=4 << 20)
    info = client.get_target("bundles/full.otab")  # refreshes implicitly
    assert info is not None
    assert agent_download(s3_store, info, tmp_path / "out").read_bytes() == path.read_bytes()


def test_verify_target_standalone() -> None:
    data = b"bundle bytes"
    info = TargetInfo("b", len(data), {"sha256": hashlib.sha256(data).hexdigest()})
    verify_target(info, data)
    with pytest.raises(TrustError, match="expected the signed length"):
        verify_target(info, data + b"!")
    with pytest.raises(TrustError):
        verify_target(info, b"bundle bytez")


def test_racing_publishers_lose_no_release(s3_store: S3Store, tmp_path: Path) -> None:
    """Two publishers commit at once: one wins, the other gets StoreConflictError
    and, run again, lands on top; both releases end up signed."""
    keys = tmp_path / "keys"
    root = trust.init_repository(s3_store, keys)
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def publish(name: str) -> None:
        barrier.wait()
        try:
            outcome[name] = trust.publish_target(s3_store, keys, name, name.encode() * 100, {})
        except StoreConflictError as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=publish, args=(n,)) for n in ("bundles/a", "bundles/b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [n for n, r in outcome.items() if isinstance(r, StoreConflictError)]
    assert len(lost) == 1, outcome
    assert "re-run" in str(outcome[lost[0]])
    trust.publish_target(s3_store, keys, lost[0], lost[0].encode() * 100, {})
    client = TrustedUpdater(s3_store, tmp_path / "md", root)
    assert [t.name for t in client.list_targets()] == ["bundles/a", "bundles/b"]


def test_threshold_root_rotation_and_expiry_refresh(s3_store: S3Store, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    root = trust.init_repository(s3_store, keys, threshold=2, num_root_keys=3)
    root_keys = trust.role_key_ids(keys, "root")
    assert len(root_keys) == 3
    client = TrustedUpdater(s3_store, tmp_path / "md", root)
    client.refresh()
    with pytest.raises(ConfigError, match="expected at least 2"):
        trust.resign_root(s3_store, keys, key_ids=root_keys[:1])
    assert trust.resign_root(s3_store, keys, key_ids=root_keys[:2]) == 2
    published = trust.refresh_expiry(s3_store, keys, include_targets=True, expiry=trust.ExpiryPolicy(timestamp=timedelta(hours=2)))
    TrustedUpdater(s3_store, tmp_path / "md", root).refresh()
    assert (tmp_path / "md" / "root_history" / "2.root.json").exists()
    assert trust.trusted_root_bytes(keys) == s3_store.get("metadata/2.root.json")
    ts = (tmp_path / "md" / "timestamp.json").read_text()
    assert f'"version":{published.timestamp_version}' in ts.replace(" ", "")


def test_publisher_refuses_tampered_store(store: Store, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    trust.init_repository(store, keys)
    trust.publish_target(store, keys, "bundles/a", b"a", {})
    targets = store.get("metadata/2.targets.json").replace(b'"bundles/a"', b'"bundles/evil"')
    store.put("metadata/2.targets.json", targets)
    with pytest.raises(TrustError, match="refusing to build on tampered metadata"):
        trust.publish_target(store, keys, "bundles/b", b"b", {})


def test_repository_guards(store: Store, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    trust.init_repository(store, keys)
    with pytest.raises(StoreConflictError, match="already holds"):
        trust.init_repository(store, tmp_path / "keys2")
    with pytest.raises(ConfigError, match="float"):
        trust.publish_target(store, keys, "bundles/a", b"a", {"expected_wer": 0.07})
    with pytest.raises(ConfigError, match="relative path"):
        trust.publish_target(store, keys, "../escape", b"a", {})
    if hasattr(store, "root"):
        with pytest.raises(ConfigError, match="inside the store"):
            trust.init_repository(store, store.root / "keys")


def test_client_transport_errors_keep_their_class(tmp_path: Path) -> None:
    s3 = S3Store("bucket", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b", max_attempts=1)
    client = TrustedUpdater(s3, tmp_path / "md", _any_root(tmp_path))
    with pytest.raises(StoreUnreachableError):
        client.refresh()


def _any_root(tmp_path: Path) -> bytes:
    from device_agent.store import FileStore

    (tmp_path / "scratch").mkdir()
    return trust.init_repository(FileStore(tmp_path / "scratch"), tmp_path / "scratch-keys")
