"""`ota repo refresh`: expiry renewal on a simulated clock, idempotence, racing publishers."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from tuf.api.metadata import Metadata

from cli.exit_codes import code_for_error
from cli.main import cli
from device_agent.errors import ConfigError, MetadataExpiredError, StoreConflictError
from packager import trust
from device_agent.store import FileStore, S3Store, Store
from device_agent.trust_client import TrustedUpdater
from tests.support import SimClock, fast_expiry

FAST = fast_expiry()


def _repo(store: Store, tmp_path: Path) -> tuple[Path, bytes]:
    keys = tmp_path / "keys"
    root = trust.init_repository(store, keys, expiry=FAST)
    trust.publish_target(store, keys, "bundles/a", b"release a", {})
    return keys, root


@pytest.mark.parametrize("refresh_runs", [True, False])
def test_three_timestamp_lifetimes_without_publishes(s3_store: S3Store, tmp_path: Path, refresh_runs: bool) -> None:
    """Nobody publishes for 3x the timestamp expiry. With `refresh` every 15 simulated
    minutes every device check succeeds; without it, checks fail as expired."""
    keys, root = _repo(s3_store, tmp_path)
    clock = SimClock()
    device = TrustedUpdater(s3_store, tmp_path / "device", root, clock=clock)
    device.refresh()
    failures: list[str] = []
    ok: list[bool] = []
    resigned: set[str] = set()
    for _ in range(12):  # 12 x 15 min = 3 hours = 3 timestamp lifetimes
        clock.now += timedelta(minutes=15)
        if refresh_runs:
            resigned.update(trust.refresh_repository(s3_store, keys, now=clock.now).resigned)
        try:
            TrustedUpdater(s3_store, tmp_path / "device", root, clock=clock).refresh()
            ok.append(True)
        except MetadataExpiredError as exc:
            failures.append(str(exc))
            ok.append(False)
    if refresh_runs:
        assert failures == []
        assert resigned == {"timestamp", "snapshot", "targets"}
    else:
        assert ok[:3] == [True] * 3 and ok[4:] == [False] * 8  # valid for the first hour, then expired
        assert "expired" in failures[-1] and "ota repo refresh" in failures[-1]


def test_refresh_is_idempotent_and_timestamp_only_when_due(file_store: FileStore, tmp_path: Path) -> None:
    keys, _ = _repo(file_store, tmp_path)
    before = sorted(file_store.list("metadata/"))
    first = trust.refresh_repository(file_store, keys)
    assert first.resigned == () and first.published is None
    assert sorted(file_store.list("metadata/")) == before  # nothing was due: nothing written
    ts_before = Metadata.from_bytes(file_store.get("metadata/timestamp.json")).signed
    later = datetime.now(timezone.utc) + timedelta(minutes=40)  # timestamp past half its hour, others not
    second = trust.refresh_repository(file_store, keys, now=later)
    assert second.resigned == ("timestamp",)
    ts = Metadata.from_bytes(file_store.get("metadata/timestamp.json")).signed
    assert ts.version == ts_before.version + 1 and ts.snapshot_meta == ts_before.snapshot_meta
    assert sorted(file_store.list("metadata/")) == before  # no new snapshot or targets versions
    assert trust.refresh_repository(file_store, keys, now=later).resigned == ()


def test_refresh_against_a_concurrent_publisher(s3_store: S3Store, tmp_path: Path) -> None:
    """A publish commits between refresh's read and its timestamp write: refresh loses
    cleanly, the release stays, and a re-run finds nothing left to do."""
    keys, root = _repo(s3_store, tmp_path)
    later = datetime.now(timezone.utc) + timedelta(minutes=40)
    original_put = s3_store.put
    raced = []

    def put_after_rival(key: str, data: bytes, **kw):  # the rival commits just before our timestamp write
        if key == "metadata/timestamp.json" and not raced:
            raced.append(True)
            trust.publish_target(s3_store, keys, "bundles/b", b"release b", {})
        return original_put(key, data, **kw)

    s3_store.put = put_after_rival  # type: ignore[method-assign]
    with pytest.raises(StoreConflictError, match="another publisher committed first"):
        trust.refresh_repository(s3_store, keys, now=later)
    s3_store.put = original_put  # type: ignore[method-assign]
    client = TrustedUpdater(s3_store, tmp_path / "device", root)
    assert [t.name for t in client.list_targets()] == ["bundles/a", "bundles/b"]
    # the rival's commit signed a fresh timestamp: at the same moment nothing is due
    assert trust.refresh_repository(s3_store, keys).resigned == ()


def test_expiry_configured_at_init(file_store: FileStore, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = CliRunner().invoke(cli, ["repo", "init", "--store", file_store.url, "--keys", str(keys),
                                      "--timestamp-expiry", "6h", "--snapshot-expiry", "2d"])
    assert result.exit_code == 0, result.output
    assert trust.load_expiry(keys).timestamp == timedelta(hours=6)
    trust.publish_target(file_store, keys, "bundles/a", b"a", {})
    ts = Metadata.from_bytes(file_store.get("metadata/timestamp.json")).signed
    left = ts.expires - datetime.now(timezone.utc)
    assert timedelta(hours=5, minutes=55) < left <= timedelta(hours=6)
    out = CliRunner().invoke(cli, ["repo", "refresh", "--store", file_store.url, "--keys", str(keys)])
    assert out.exit_code == 0 and "nothing due" in out.output and "timestamp" in out.output
    bad = CliRunner().invoke(cli, ["repo", "init", "--store", file_store.url, "--keys", str(tmp_path / "k2"),
                                   "--timestamp-expiry", "9d"])
    assert bad.exit_code == code_for_error(ConfigError("")) and "timestamp <= snapshot" in bad.output
    assert CliRunner().invoke(cli, ["repo", "init", "--store", file_store.url, "--keys", str(tmp_path / "k3"),
                                    "--timestamp-expiry", "soon"]).exit_code == code_for_error(ConfigError(""))
