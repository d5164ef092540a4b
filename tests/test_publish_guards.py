"""What publishing and repository set-up refuse before they change anything."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.errors import ConfigError, StoreNotFoundError, WrongBaseError
from device_agent.model_format import encode_model
from packager.bundle import encode_diff_bundle, encode_full_bundle
from packager.publish import publish_bundle, read_channel
from device_agent.store import FileStore, open_store
from packager.trust import init_repository
from tests.tiny import tiny_device_model


def _diff_v2(base):  # type: ignore[no-untyped-def]
    name = "encoder.weight_hh_l0"
    positions = np.arange(0, 40, 2)
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                {name: SparseDelta(positions, np.ones(positions.size, dtype=np.int8))})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def test_diff_trained_on_another_base_with_the_same_version_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", create=True)
    keys = tmp_path / "keys"
    init_repository(store, keys)
    shipped, other = tiny_device_model(seed=0), tiny_device_model(seed=1)  # both version 1
    assert shipped.version == other.version and shipped.content_hash() != other.content_hash()
    publish_bundle(store, keys, encode_full_bundle(encode_model(shipped), shipped))
    with pytest.raises(WrongBaseError) as refused:
        publish_bundle(store, keys, encode_diff_bundle(_diff_v2(other), other))
    message = str(refused.value)
    assert other.content_hash()[:16] in message and shipped.content_hash()[:16] in message
    assert read_channel(store, keys, shipped.model_id, "stable").current_version == 1  # nothing published
    publish_bundle(store, keys, encode_diff_bundle(_diff_v2(shipped), shipped))  # the right base is accepted
    assert read_channel(store, keys, shipped.model_id, "stable").current_version == 2


def test_init_on_a_missing_bucket_leaves_no_keys_and_a_retry_works(seaweed, bucket, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    keys = tmp_path / "keys"
    missing = open_store(f"s3://no-such-bucket-ota/repo?endpoint={seaweed.endpoint_url}")
    for _ in range(2):
        with pytest.raises(StoreNotFoundError):
            init_repository(missing, keys)
        assert not keys.exists() and list(tmp_path.iterdir()) == []
    init_repository(open_store(f"s3://{bucket}/init-retry?endpoint={seaweed.endpoint_url}"), keys)
    assert len(list(keys.glob("*.pem"))) == 4 and (keys / "root.json").is_file()


def test_init_refuses_a_keys_folder_that_already_holds_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_repository(FileStore(tmp_path / "a", create=True), keys)
    before = sorted(p.name for p in keys.iterdir())
    with pytest.raises(ConfigError, match="not empty"):
        init_repository(FileStore(tmp_path / "b", create=True), keys)
    assert sorted(p.name for p in keys.iterdir()) == before
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
