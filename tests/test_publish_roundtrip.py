"""Build -> publish to SeaweedFS -> fetch through the TUF client -> verify -> apply."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.errors import ConfigError, StoreConflictError
from device_agent.model_format import encode_model, save_model
from device_agent.bundle import apply_bundle, decode_bundle
from packager.bundle import encode_diff_bundle, encode_full_bundle
from device_agent.channels import fetch_channel, plan_update
from packager.publish import publish_bundle, read_channel, set_rollout
from device_agent.store import Store
from packager.trust import init_repository
from device_agent.trust_client import TrustedUpdater
from tests.tiny import tiny_device_model


def _diff_v2(base):
    rng = np.random.default_rng(3)
    name = "encoder.weight_hh_l0"
    positions = np.sort(rng.choice(base.weights[name].q.size, 20, replace=False))
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                {name: SparseDelta(positions, rng.choice([-2, -1, 1, 2], 20).astype(np.int8))})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def test_round_trip_through_seaweedfs_and_tuf(s3_store: Store, tmp_path: Path) -> None:
    root = init_repository(s3_store, tmp_path / "keys")
    base = tiny_device_model()
    diff = _diff_v2(base)
    publish_bundle(s3_store, tmp_path / "keys", encode_full_bundle(encode_model(base), base), expected_wer=0.12)
    release = publish_bundle(s3_store, tmp_path / "keys", encode_diff_bundle(diff, base), expected_wer=0.08)
    assert release.state.current_version == 2 and len(release.state.edges) == 2

    # device side: only the root it shipped with, the store, and a metadata folder
    updater = TrustedUpdater(s3_store, tmp_path / "device-meta", root)
    updater.refresh()
    state = fetch_channel(updater, base.model_id, "stable")
    model = None
    for edge in plan_update(state, None, state.current_version):
        info = updater.get_target(edge.target)
        assert info is not None and info.custom["target_version"] == edge.to_version
        bundle = decode_bundle(updater.read_target(info))
        model = apply_bundle(bundle, model)
        assert model.content_hash() == info.custom["target_hash"]
    assert model is not None and model.version == 2 and model.content_hash() == diff.target_hash
    # a device already at version 1 takes only the small diff
    plan = plan_update(state, 1, 2)
    assert [e.target for e in plan] == [release.target]
    assert updater.get_target(release.target).custom["expected_wer"] == "0.0800"


def test_two_channels_keep_their_own_diff_for_the_same_versions(file_store: Store, tmp_path: Path) -> None:
    # stable ships one 1 -> 2 diff, beta another: neither may replace the other's bundle
    root = init_repository(file_store, tmp_path / "keys")
    base = tiny_device_model()
    stable_diff = _diff_v2(base)
    beta_diff = _diff_v2(base)
    beta_diff.deltas = {n: SparseDelta(d.positions, -d.values) for n, d in beta_diff.deltas.items()}
    beta_diff.target_hash = apply_diff(base, beta_diff, check_hashes=False).content_hash()
    assert beta_diff.target_hash != stable_diff.target_hash
    full = encode_full_bundle(encode_model(base), base)
    for channel, diff in (("stable", stable_diff), ("beta", beta_diff)):
        publish_bundle(file_store, tmp_path / "keys", full, channel=channel)
        publish_bundle(file_store, tmp_path / "keys", encode_diff_bundle(diff, base), channel=channel)
    updater = TrustedUpdater(file_store, tmp_path / "device-meta", root)
    updater.refresh()
    for channel, diff in (("stable", stable_diff), ("beta", beta_diff)):
        [edge] = plan_update(fetch_channel(updater, base.model_id, channel), 1, 2)
        model = apply_bundle(decode_bundle(updater.read_target(updater.get_target(edge.target))), base)
        assert model.content_hash() == diff.target_hash, channel


def test_diff_without_its_base_on_the_channel_is_refused(s3_store: Store, tmp_path: Path) -> None:
    init_repository(s3_store, tmp_path / "keys")
    base = tiny_device_model()
    with pytest.raises(ConfigError, match="no version 1 for this diff"):
        publish_bundle(s3_store, tmp_path / "keys", encode_diff_bundle(_diff_v2(base), base))


def test_racing_release_loses_loudly_and_nothing_is_dropped(s3_store: Store, tmp_path: Path) -> None:
    import packager.trust as trust

    keys = tmp_path / "keys"
    init_repository(s3_store, keys)
    base = tiny_device_model()
    publish_bundle(s3_store, keys, encode_full_bundle(encode_model(base), base))
    real_repo = trust._Repo
    sneaked = {}

    class RacedRepo(real_repo):  # another publisher commits between our read and our commit
        def commit(self, **kwargs):
            if not sneaked:
                sneaked["done"] = True
                set_rollout(s3_store, keys, base.model_id, "stable", 50.0)
            return super().commit(**kwargs)

    trust._Repo = RacedRepo
    try:
        with pytest.raises(StoreConflictError, match="another publisher"):
            publish_bundle(s3_store, keys, encode_diff_bundle(_diff_v2(base), base))
    finally:
        trust._Repo = real_repo
    state = read_channel(s3_store, keys, base.model_id, "stable")
    assert state.rollout_percent == 50.0 and state.current_version == 1  # the winner's change survives
    publish_bundle(s3_store, keys, encode_diff_bundle(_diff_v2(base), base))  # the loser re-runs
    state = read_channel(s3_store, keys, base.model_id, "stable")
    assert state.current_version == 2 and state.rollout_percent == 50.0


def test_cli_publish_flow_on_the_file_store(tmp_path: Path) -> None:
    runner = CliRunner()
    store = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    keys = str(tmp_path / "keys")
    base = tiny_device_model()
    save_model(base, tmp_path / "v1.otam")
    save_model(apply_diff(base, _diff_v2(base)), tmp_path / "v2.otam")
    steps = [
        ["repo", "init", "--store", store, "--keys", keys, "--root-out", str(tmp_path / "root.json")],
        ["bundle", "build", "--to", str(tmp_path / "v1.otam"), "--out", str(tmp_path / "full.otab")],
        ["bundle", "build", "--from", str(tmp_path / "v1.otam"), "--to", str(tmp_path / "v2.otam"),
         "--out", str(tmp_path / "d.otab")],
        ["bundle", "verify", str(tmp_path / "d.otab"), "--base", str(tmp_path / "v1.otam")],
        ["publish", str(tmp_path / "full.otab"), "--store", store, "--keys", keys],
        ["publish", str(tmp_path / "d.otab"), "--store", store, "--keys", keys, "--expected-wer", "0.1"],
        ["rollout", "set", "--store", store, "--keys", keys, "--model-id", "tiny", "--percent", "10"],
        ["releases", "list", "--store", store, "--keys", keys, "--json"],
    ]
    for args in steps:
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert "bundles/tiny/1-2-" in result.output and "channels/tiny/stable.json" in result.output
    assert (tmp_path / "d.otab").stat().st_size < (tmp_path / "full.otab").stat().st_size / 5
