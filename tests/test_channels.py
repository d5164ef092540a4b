"""Channel files and the update planner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_agent.errors import ConfigError, NoUpdatePathError
from packager import trust
from device_agent.channels import ChannelState, UpdateEdge, fetch_channel, in_rollout, plan_update
from device_agent.store import Store
from device_agent.trust_client import TrustedUpdater

MB = 1_000_000

GRAPH = [
    UpdateEdge(None, 10, "full-1.0", 40 * MB),
    UpdateEdge(None, 13, "full-1.3", 41 * MB),
    UpdateEdge(10, 11, "d-1.0-1.1", 3 * MB),
    UpdateEdge(11, 12, "d-1.1-1.2", 2 * MB),
    UpdateEdge(12, 13, "d-1.2-1.3", 4 * MB),
    UpdateEdge(10, 12, "d-1.0-1.2", 6 * MB),
    UpdateEdge(9, 10, "d-0.9-1.0", 39 * MB),
]


def targets(plan: list[UpdateEdge]) -> list[str]:
    return [e.target for e in plan]


def test_chain_of_diffs_beats_full_bundle() -> None:
    assert targets(plan_update(GRAPH, 10, 13)) == ["d-1.0-1.1", "d-1.1-1.2", "d-1.2-1.3"]  # 9 MB < 41 MB
    assert targets(plan_update(GRAPH, 11, 13)) == ["d-1.1-1.2", "d-1.2-1.3"]


def test_full_bundle_beats_expensive_chain() -> None:
    # 0.9 -> 1.0 -> ... -> 1.3 costs 48 MB; the full bundle costs 41 MB.
    assert targets(plan_update(GRAPH, 9, 13)) == ["full-1.3"]


def test_full_bundle_then_diffs() -> None:
    # From an unknown version only full bundles apply; then diffs continue from there.
    assert targets(plan_update(GRAPH, 5, 12)) == ["full-1.0", "d-1.0-1.1", "d-1.1-1.2"]  # 45 MB < 46 MB
    assert targets(plan_update(GRAPH, None, 11)) == ["full-1.0", "d-1.0-1.1"]


def test_ties_prefer_fewer_bundles() -> None:
    graph = [UpdateEdge(1, 2, "ab", 5), UpdateEdge(2, 3, "bc", 5), UpdateEdge(1, 3, "ac", 10)]
    assert targets(plan_update(graph, 1, 3)) == ["ac"]


def test_already_current_and_no_path() -> None:
    assert plan_update(GRAPH, 12, 12) == []
    with pytest.raises(NoUpdatePathError, match="no published bundle chain leads from 13 to 20"):
        plan_update(GRAPH, 13, 20)
    diffs_only = [e for e in GRAPH if e.from_version is not None]
    with pytest.raises(NoUpdatePathError, match="from no installed model"):
        plan_update(diffs_only, None, 11)
    with pytest.raises(NoUpdatePathError):
        plan_update(diffs_only, 13, 10)  # no downgrade edges


def test_edges_and_states_validate() -> None:
    with pytest.raises(ConfigError):
        UpdateEdge(10, 10, "loop", 1)
    with pytest.raises(ConfigError):
        UpdateEdge(10, 11, "neg", -1)
    with pytest.raises(ConfigError):
        UpdateEdge("", 11, "empty", 1)
    with pytest.raises(ConfigError):
        ChannelState("m/x", "stable", 10)
    with pytest.raises(ConfigError):
        ChannelState("m", "stable", 10, rollout_percent=120)
    with pytest.raises(ConfigError, match="malformed"):
        ChannelState.from_json(b'{"format": 1, "edges": "nope"}')


@pytest.mark.parametrize("bad", ["1.3", "3", 1.0, True, -1, 2**53 + 1, None])
def test_versions_are_integers(bad: object) -> None:
    with pytest.raises(ConfigError, match="must be an integer in"):
        UpdateEdge(None, bad, "full", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be an integer in"):
        ChannelState("m", "stable", bad)  # type: ignore[arg-type]


def _channel_doc(form: int, current: object, to: object) -> bytes:
    return json.dumps({"format": form, "model_id": "m", "channel": "stable", "current_version": current,
                       "rollout_percent": 100.0,
                       "edges": [{"from_version": None, "to_version": to, "target": "full", "size": 5}]}).encode()


def test_channel_file_versions_are_checked_where_they_are_read() -> None:
    assert ChannelState.from_json(_channel_doc(2, 3, 3)).current_version == 3
    # format 1 files held decimal strings: they still read, as integers
    old = ChannelState.from_json(_channel_doc(1, "3", "3"))
    assert (old.current_version, old.edges[0].to_version) == (3, 3)
    for form, current, to in ((2, "1.3", 3), (2, 3, "3"), (1, "1.3", "1.3"), (1, "03", "3"), (2, 3, 1.5)):
        with pytest.raises(ConfigError, match=r"version .* must be an integer in \[0, 2\^53\]"):
            ChannelState.from_json(_channel_doc(form, current, to))
    with pytest.raises(ConfigError, match="channel file format 3"):
        ChannelState.from_json(_channel_doc(3, 3, 3))


def test_json_round_trip_and_rollout() -> None:
    state = ChannelState("kws-en", "beta", 13, 25.0, tuple(GRAPH))
    again = ChannelState.from_json(state.to_json())
    assert again == state
    assert plan_update(again, 10, 13) == plan_update(state, 10, 13)
    inside = sum(in_rollout(state, f"device-{i}") for i in range(4000))
    assert 800 < inside < 1200  # ~25 %
    assert in_rollout(state, "device-7") == in_rollout(state, "device-7")  # stable
    assert all(in_rollout(ChannelState("m", "c", 1, 100.0), f"d{i}") for i in range(100))
    assert not any(in_rollout(ChannelState("m", "c", 1, 0.0), f"d{i}") for i in range(100))


def test_channel_file_is_a_signed_target(file_store: Store, tmp_path: Path) -> None:
    from packager.publish import publish_channel

    keys = tmp_path / "keys"
    root = trust.init_repository(file_store, keys)
    state = ChannelState("kws-en", "stable", 13, 10.0, tuple(GRAPH))
    publish_channel(file_store, keys, state)
    client = TrustedUpdater(file_store, tmp_path / "md", root)
    assert fetch_channel(client, "kws-en", "stable") == state
    info = client.get_target("channels/kws-en/stable.json")
    assert info.custom["kind"] == "channel"
