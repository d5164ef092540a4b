"""One test per attack in the TUF threat model, against a real repository in S3.

Each test builds a repository in a fresh SeaweedFS bucket, brings a device
client up to date (metadata refreshed, one bundle downloaded), lets the
attacker (anyone who can write to the bucket or serve as a mirror) change
the store, and then asserts that the client refuses with TrustError and that
nothing in the device's directory (metadata, downloads, temp files) changed.
Bundles are downloaded the way the agent downloads them (ranged GETs with the
signed length and hashes, then verify_target: tests.support.agent_download).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from device_agent.errors import ConfigError, TrustError
from packager import trust
from device_agent.store import S3Store
from device_agent.trust_client import TrustedUpdater
from tests.support import agent_download

V1 = b"model bundle v1 " * 4096
V2 = b"model bundle v2 " * 5000


@dataclass
class Repo:
    store: S3Store
    keys: Path
    root: bytes
    device: Path

    @property
    def metadata(self) -> Path:
        return self.device / "metadata"

    def client(self, clock: Callable[[], datetime] | None = None) -> TrustedUpdater:
        return TrustedUpdater(self.store, self.metadata, self.root, clock=clock)

    def publish(self, name: str, data: bytes, **custom: str) -> trust.Published:
        return trust.publish_target(self.store, self.keys, name, data, custom)

    def meta(self, key: str) -> Metadata:
        return Metadata.from_bytes(self.store.get(f"metadata/{key}"))


def device_state(device: Path) -> dict[str, object]:
    """Everything under the device dir: file bytes and symlink targets."""
    state: dict[str, object] = {}
    for path in sorted(device.rglob("*")):
        rel = path.relative_to(device).as_posix()
        if path.is_symlink():
            state[rel] = ("symlink", str(path.readlink()))
        elif path.is_file():
            state[rel] = path.read_bytes()
        else:
            state[rel] = "dir"
    return state


@pytest.fixture
def repo(s3_store: S3Store, tmp_path: Path) -> Repo:
    keys = tmp_path / "keys"
    root = trust.init_repository(s3_store, keys, threshold=2, num_root_keys=3)
    r = Repo(s3_store, keys, root, tmp_path / "device")
    r.publish("bundles/kws/v1.otab", V1, model_id="kws", target_version=1)
    r.publish("bundles/kws/v2.otab", V2, model_id="kws", target_version=2)
    client = r.client()
    client.refresh()
    agent_download(s3_store, client.get_target("bundles/kws/v1.otab"), r.device / "downloads")
    return r


def refused(repo: Repo, match: str | None = None, download: str | None = None,
            clock: Callable[[], datetime] | None = None) -> TrustError:
    """Refresh (and optionally download `download`) with a new client; expect TrustError."""
    before = device_state(repo.device)
    client = repo.client(clock)
    with pytest.raises(TrustError, match=match) as caught:
        client.refresh()
        if download is not None:
            info = client.get_target(download)
            agent_download(repo.store, info, repo.device / "downloads")  # the agent's own download path
    assert device_state(repo.device) == before, "a refused update changed the device's files"
    return caught.value


def _forged_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def test_arbitrary_installation(repo: Repo) -> None:
    """The attacker replaces a bundle's bytes (same length) and plants a file the metadata never listed."""
    info = repo.client().get_target("bundles/kws/v2.otab")
    evil = b"X" * info.length
    repo.store.put(info.store_key, evil)
    repo.store.put("targets/bundles/kws/evil.otab", evil)
    refused(repo, "hashes", download="bundles/kws/v2.otab")
    assert repo.client().get_target("bundles/kws/evil.otab") is None


def test_endless_data(repo: Repo) -> None:
    """A mirror streams more bytes than allowed: metadata past its size cap, a bundle past its signed length."""
    timestamp = repo.store.get("metadata/timestamp.json")
    repo.store.put("metadata/timestamp.json", timestamp + b" " * (2 << 20))
    refused(repo, "endless data")
    repo.store.put("metadata/timestamp.json", timestamp)
    info = repo.client().get_target("bundles/kws/v2.otab")
    repo.store.put(info.store_key, V2 + b"\0" * (3 << 20))
    refused(repo, "signed length", download="bundles/kws/v2.otab")


def test_extraneous_dependencies(repo: Repo) -> None:
    """After a real release, the attacker edits its targets metadata to make the
    bundle depend on software of their choosing (they have no signing key)."""
    published = repo.publish("bundles/kws/v3.otab", b"v3", model_id="kws", target_version=3)
    key = f"metadata/{published.targets_version}.targets.json"
    targets = repo.meta(f"{published.targets_version}.targets.json")
    targets.signed.targets["bundles/kws/v3.otab"].unrecognized_fields["custom"]["depends_on"] = ["bundles/evil.otab"]
    repo.store.put(key, targets.to_bytes())  # old signature kept: it no longer matches
    refused(repo, r"targets\.json")
    # The same edit re-signed with a key root never trusted fares no better.
    targets.sign(_forged_signer())
    repo.store.put(key, targets.to_bytes())
    refused(repo, r"targets\.json")


def test_fast_forward(repo: Repo) -> None:
    """With stolen targets and snapshot keys (not timestamp), the attacker serves
    metadata with version 10**9 so the device would refuse every real update after.
    The timestamp pins the snapshot's hash and the snapshot pins targets', so the
    device rejects it and keeps its versions."""
    published = repo.publish("bundles/kws/v3.otab", b"v3")
    signers = trust.load_signers(repo.keys)
    root = Metadata[Root].from_bytes(trust.trusted_root_bytes(repo.keys)).signed

    targets = repo.meta(f"{published.targets_version}.targets.json")
    targets.signed.version = 10**9
    targets.sign(signers[root.roles["targets"].keyids[0]])
    snapshot = repo.meta(f"{published.snapshot_version}.snapshot.json")
    snapshot.signed.version = 10**9
    snapshot.signed.meta["targets.json"] = MetaFile(10**9)
    snapshot.sign(signers[root.roles["snapshot"].keyids[0]])
    repo.store.put(f"metadata/{10**9}.targets.json", targets.to_bytes())
    repo.store.put(f"metadata/{published.snapshot_version}.snapshot.json", snapshot.to_bytes())
    refused(repo, r"snapshot\.json")
    assert b'"version":1000000000' not in (repo.metadata / "snapshot.json").read_bytes().replace(b" ", b"")


def test_indefinite_freeze(repo: Repo) -> None:
    """A mirror keeps serving the last timestamp it saw long after it expired. The device's
    clock (the updater's reference time) is moved instead of waiting for the expiry."""
    expires = repo.meta("timestamp.json").signed.expires
    repo.client(lambda: expires - timedelta(seconds=1)).refresh()  # still fresh: accepted
    refused(repo, "ExpiredMetadataError", clock=lambda: expires + timedelta(seconds=1))


def test_malicious_mirrors(repo: Repo) -> None:
    """A mirror serves self-made metadata (its own keys) listing its own bundle, then plain garbage."""
    signer = _forged_signer()
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)
    evil = b"evil bundle"
    targets = Metadata(Targets(version=99, expires=expires))
    targets.signed.targets["bundles/kws/v2.otab"] = TargetFile.from_data("bundles/kws/v2.otab", evil)
    targets.sign(signer)
    snapshot = Metadata(Snapshot(version=99, expires=expires, meta={"targets.json": MetaFile(99)}))
    snapshot.sign(signer)
    timestamp = Metadata(Timestamp(version=99, expires=expires, snapshot_meta=MetaFile(99)))
    timestamp.sign(signer)
    repo.store.put("metadata/99.targets.json", targets.to_bytes())
    repo.store.put("metadata/99.snapshot.json", snapshot.to_bytes())
    repo.store.put("metadata/timestamp.json", timestamp.to_bytes())
    refused(repo, "UnsignedMetadataError")
    repo.store.put("metadata/timestamp.json", b"<html>503 Service Unavailable</html>")
    refused(repo, "DeserializationError")


def test_mix_and_match(repo: Repo) -> None:
    """After a new release, the attacker pairs the new timestamp and snapshot with
    older (validly signed) targets metadata, and then with an older snapshot."""
    before = repo.publish("bundles/kws/v3.otab", b"v3")
    after = repo.publish("bundles/kws/v4.otab", b"v4")
    old_targets = repo.store.get(f"metadata/{before.targets_version}.targets.json")
    new_targets_key = f"metadata/{after.targets_version}.targets.json"
    new_targets = repo.store.get(new_targets_key)
    repo.store.put(new_targets_key, old_targets)
    refused(repo, rf"{after.targets_version}\.targets\.json")
    repo.store.put(new_targets_key, new_targets)
    old_snapshot = repo.store.get(f"metadata/{before.snapshot_version}.snapshot.json")
    repo.store.put(f"metadata/{after.snapshot_version}.snapshot.json", old_snapshot)
    refused(repo, rf"{after.snapshot_version}\.snapshot\.json")


def test_rollback(repo: Repo) -> None:
    """The attacker replays an older, validly signed timestamp to hide a newer release."""
    old_timestamp = repo.store.get("metadata/timestamp.json")
    repo.publish("bundles/kws/v3.otab", b"v3")
    repo.client().refresh()  # the device has seen the new release
    repo.store.put("metadata/timestamp.json", old_timestamp)
    refused(repo, "BadVersionNumberError")


def test_key_compromise_below_threshold(repo: Repo) -> None:
    """With one of the three root keys (threshold 2), the attacker publishes a root
    that hands the timestamp role to their own key, plus a timestamp signed by it."""
    root_keys = trust.role_key_ids(repo.keys, "root")
    stolen = trust.load_signers(repo.keys, root_keys[:1])[root_keys[0]]
    attacker = _forged_signer()
    root = Metadata[Root].from_bytes(trust.trusted_root_bytes(repo.keys))
    root.signed.version = 2
    for keyid in list(root.signed.roles["timestamp"].keyids):
        root.signed.revoke_key(keyid, "timestamp")
    root.signed.add_key(attacker.public_key, "timestamp")
    root.sign(stolen)
    timestamp = repo.meta("timestamp.json")
    timestamp.signed.version += 1
    timestamp.sign(attacker)
    repo.store.put("metadata/2.root.json", root.to_bytes())
    repo.store.put("metadata/timestamp.json", timestamp.to_bytes())
    refused(repo, "signed by 1/2 keys")
    # The library also refuses to produce such a root unless told it is simulating an attack.
    repo.store.delete("metadata/2.root.json")
    with pytest.raises(ConfigError, match="expected at least 2"):
        trust.resign_root(repo.store, repo.keys, key_ids=root_keys[:1])
    trust.resign_root(repo.store, repo.keys, key_ids=root_keys[:1], allow_below_threshold=True)
    refused(repo, "signed by 1/2 keys")


def test_wrong_software(repo: Repo) -> None:
    """A mirror answers a request for bundle v2 with bundle v1: validly signed, but for another target."""
    client = repo.client()
    v1, v2 = client.get_target("bundles/kws/v1.otab"), client.get_target("bundles/kws/v2.otab")
    repo.store.put(v2.store_key, repo.store.get(v1.store_key))
    refused(repo, "signed length|hashes", download="bundles/kws/v2.otab")
