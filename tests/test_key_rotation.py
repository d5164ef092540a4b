"""Key rotation (`ota repo rotate-keys`), tested against the TUF attacks it answers.

After a key is suspected compromised the repository rotates it out. Devices
installed with the old root must follow the root chain to the new keys and
from then on refuse anything signed only by the revoked key.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from cli.main import cli
from device_agent.errors import TrustError
from packager import trust
from device_agent.store import S3Store
from device_agent.trust_client import TrustedUpdater


def _revoked_signer(keys: Path, keyid: str) -> CryptoSigner:
    """The attacker's copy of a key the repository revoked."""
    return trust.load_signers(keys / "revoked", [keyid])[keyid]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fleet_repo(s3_store: S3Store, tmp_path: Path) -> tuple[S3Store, Path, bytes]:
    keys = tmp_path / "keys"
    root_v1 = trust.init_repository(s3_store, keys, threshold=2, num_root_keys=3)
    trust.publish_target(s3_store, keys, "bundles/v1.otab", b"v1" * 100, {})
    return s3_store, keys, root_v1


def test_key_compromise_revoked_timestamp_key_cannot_freeze_devices(fleet_repo, tmp_path: Path) -> None:
    """Freeze attack with a stolen timestamp key, after the key was rotated out: a device
    installed with root v1 follows the chain to v2, accepts the re-signed metadata,
    and refuses a newer timestamp signed only by the revoked key."""
    store, keys, root_v1 = fleet_repo
    device = TrustedUpdater(store, tmp_path / "device", root_v1)
    device.refresh()
    old_ts_key = trust.role_key_ids(keys, "timestamp")[0]
    rotation = trust.rotate_keys(store, keys, "timestamp")
    assert rotation.root_version == 2 and rotation.revoked == (old_ts_key,)
    assert not (keys / f"{old_ts_key}.pem").exists() and (keys / "revoked" / f"{old_ts_key}.pem").exists()

    trust.publish_target(store, keys, "bundles/v2.otab", b"v2" * 100, {})
    follower = TrustedUpdater(store, tmp_path / "device", root_v1)
    assert [t.name for t in follower.list_targets()] == ["bundles/v1.otab", "bundles/v2.otab"]
    assert Metadata[Root].from_bytes((tmp_path / "device" / "root.json").read_bytes()).signed.version == 2

    forged = Metadata.from_bytes(store.get("metadata/timestamp.json"))
    forged.signed.version += 1
    forged.sign(_revoked_signer(keys, old_ts_key))
    store.put("metadata/timestamp.json", forged.to_bytes())
    before = _files(tmp_path / "device")
    with pytest.raises(TrustError, match="timestamp"):
        TrustedUpdater(store, tmp_path / "device", root_v1).refresh()
    assert _files(tmp_path / "device") == before
    # a device that never saw v2 of the root (factory image with root v1) refuses it too
    with pytest.raises(TrustError):
        TrustedUpdater(store, tmp_path / "fresh", root_v1).refresh()


def test_key_compromise_revoked_root_keys_cannot_sign_a_new_root(fleet_repo, tmp_path: Path) -> None:
    """Malicious root: the attacker holds both revoked root keys (old threshold 2) and
    publishes root v3 giving themselves the timestamp role. Devices that followed the
    rotation refuse it: v3 must be signed by a threshold of v2's root keys."""
    store, keys, root_v1 = fleet_repo
    old_root_keys = trust.role_key_ids(keys, "root")
    rotation = trust.rotate_keys(store, keys, "root", num_keys=3, threshold=2)
    assert set(rotation.revoked) == set(old_root_keys)
    trust.refresh_expiry(store, keys)  # the online roles keep working under the new root
    device_root = tmp_path / "device"
    TrustedUpdater(store, device_root, root_v1).refresh()  # follows v1 -> v2

    attacker = CryptoSigner.generate_ed25519()
    evil = Metadata[Root].from_bytes(store.get("metadata/2.root.json"))
    evil.signed.version = 3
    for keyid in list(evil.signed.roles["timestamp"].keyids):
        evil.signed.revoke_key(keyid, "timestamp")
    evil.signed.add_key(attacker.public_key, "timestamp")
    evil.signatures.clear()
    for keyid in old_root_keys[:2]:
        evil.sign(_revoked_signer(keys, keyid), append=True)
    store.put("metadata/3.root.json", evil.to_bytes())
    before = _files(device_root)
    with pytest.raises(TrustError, match="root"):
        TrustedUpdater(store, device_root, root_v1).refresh()
    assert _files(device_root) == before


def test_threshold_signing_after_rotation_devices_follow_chain(fleet_repo, seaweed, tmp_path: Path) -> None:
    """Two rotations (targets to 2-of-2, then root) via the CLI; a device with root v1
    walks v1 -> v2 -> v3 and accepts targets that need both new targets keys."""
    store, keys, root_v1 = fleet_repo
    runner = CliRunner(env=seaweed.aws_env())
    base = ["repo", "rotate-keys", "--store", store.url, "--keys", str(keys)]
    out = runner.invoke(cli, [*base, "--role", "targets", "--count", "2", "--threshold", "2"])
    assert out.exit_code == 0, out.output
    assert "root v2" in out.output
    assert runner.invoke(cli, [*base, "--role", "root", "--count", "1"]).exit_code == 0
    trust.publish_target(store, keys, "bundles/v3.otab", b"v3" * 10, {})
    targets = Metadata.from_bytes(store.get(f"metadata/{_latest(store, 'targets')}.targets.json"))
    assert len(targets.signatures) == 2
    device = TrustedUpdater(store, tmp_path / "device", root_v1)
    assert "bundles/v3.otab" in [t.name for t in device.list_targets()]
    assert sorted(p.name for p in (tmp_path / "device" / "root_history").iterdir()) == \
        ["1.root.json", "2.root.json", "3.root.json"]
    # one of the two targets keys alone is below the new threshold
    root_v3 = Metadata[Root].from_bytes(store.get("metadata/3.root.json")).signed
    root_v3.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    targets.signatures.popitem()
    with pytest.raises(UnsignedMetadataError, match="1/2"):
        root_v3.verify_delegate("targets", targets.signed_bytes, targets.signatures)


def _latest(store: S3Store, role: str) -> int:
    return max(int(k.split("/")[-1].split(".")[0]) for k in store.list("metadata/") if k.endswith(f".{role}.json"))
