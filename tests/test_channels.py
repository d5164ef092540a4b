"""Channel files and the update planner."""
from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.errors import ConfigError
from packager import trust
from device_agent.channels import ChannelState, NoUpdatePathError, UpdateEdge, fetch_channel, in_rollout, plan_update
from device_agent.store import Store
from device_agent.trust_client import TrustedUpdater

MB = 1_000_000

GRAPH = [
    UpdateEdge(None, "1.0", "full-1.0", 40 * MB),
    UpdateEdge(None, "1.3", "full-1.3", 41 * MB),
    UpdateEdge("1.0", "1.1", "d-1.0-1.1", 3 * MB),
    UpdateEdge("1.1", "1.2", "d-1.1-1.2", 2 * MB),
    UpdateEdge("1.2", "1.3", "d-1.2-1.3", 4 * MB),
    UpdateEdge("1.0", "1.2", "d-1.0-1.2", 6 * MB),
    UpdateEdge("0.9", "1.0", "d-0.9-1.0", 39 * MB),
]


def targets(plan: list[UpdateEdge]) -> list[str]:
    return [e.target for e in plan]


def test_chain_of_diffs_beats_full_bundle() -> None:
    assert targets(plan_update(GRAPH, "1.0", "1.3")) == ["d-1.0-1.1", "d-1.1-1.2", "d-1.2-1.3"]  # 9 MB < 41 MB
    assert targets(plan_update(GRAPH, "1.1", "1.3")) == ["d-1.1-1.2", "d-1.2-1.3"]


def test_full_bundle_beats_expensive_chain() -> None:
    # 0.9 -> 1.0 -> ... -> 1.3 costs 48 MB; the full bundle costs 41 MB.
    assert targets(plan_update(GRAPH, "0.9", "1.3")) == ["full-1.3"]


def test_full_bundle_then_diffs() -> None:
    # From an unknown version only full bundles apply; then diffs continue from there.
    assert targets(plan_update(GRAPH, "0.5", "1.2")) == ["full-1.0", "d-1.0-1.1", "d-1.1-1.2"]  # 45 MB < 46 MB
    assert targets(plan_update(GRAPH, None, "1.1")) == ["full-1.0", "d-1.0-1.1"]


def test_ties_prefer_fewer_bundles() -> None:
    graph = [UpdateEdge("a", "b", "ab", 5), UpdateEdge("b", "c", "bc", 5), UpdateEdge("a", "c", "ac", 10)]
    assert targets(plan_update(graph, "a", "c")) == ["ac"]


def test_already_current_and_no_path() -> None:
    assert plan_update(GRAPH, "1.2", "1.2") == []
    with pytest.raises(NoUpdatePathError, match="no published bundle chain leads from 1.3 to 2.0"):
        plan_update(GRAPH, "1.3", "2.0")
    diffs_only = [e for e in GRAPH if e.from_version]
    with pytest.raises(NoUpdatePathError, match="from no installed model"):
        plan_update(diffs_only, None, "1.1")
    with pytest.raises(NoUpdatePathError):
        plan_update(diffs_only, "1.3", "1.0")  # no downgrade edges


def test_edges_and_states_validate() -> None:
    with pytest.raises(ConfigError):
        UpdateEdge("1.0", "1.0", "loop", 1)
    with pytest.raises(ConfigError):
        UpdateEdge("1.0", "1.1", "neg", -1)
    with pytest.raises(ConfigError):
        UpdateEdge("", "1.1", "empty", 1)
    with pytest.raises(ConfigError):
        ChannelState("m/x", "stable", "1.0")
    with pytest.raises(ConfigError):
        ChannelState("m", "stable", "1.0", rollout_percent=120)
    with pytest.raises(ConfigError, match="malformed"):
        ChannelState.from_json(b'{"format": 1, "edges": "nope"}')


def test_json_round_trip_and_rollout() -> None:
    state = ChannelState("kws-en", "beta", "1.3", 25.0, tuple(GRAPH))
    again = ChannelState.from_json(state.to_json())
    assert again == state
    assert plan_update(again, "1.0", "1.3") == plan_update(state, "1.0", "1.3")
    inside = sum(in_rollout(state, f"device-{i}") for i in range(4000))
    assert 800 < inside < 1200  # ~25 %
    assert in_rollout(state, "device-7") == in_rollout(state, "device-7")  # stable
    assert all(in_rollout(ChannelState("m", "c", "1", 100.0), f"d{i}") for i in range(100))
    assert not any(in_rollout(ChannelState("m", "c", "1", 0.0), f"d{i}") for i in range(100))


def test_channel_file_is_a_signed_target(file_store: Store, tmp_path: Path) -> None:
    from packager.publish import publish_channel

    keys = tmp_path / "keys"
    root = trust.init_repository(file_store, keys)
    state = ChannelState("kws-en", "stable", "1.3", 10.0, tuple(GRAPH))
    publish_channel(file_store, keys, state)
    client = TrustedUpdater(file_store, tmp_path / "md", root)
    assert fetch_channel(client, "kws-en", "stable") == state
    info = client.get_target("channels/kws-en/stable.json")
    assert info.custom["kind"] == "channel"
