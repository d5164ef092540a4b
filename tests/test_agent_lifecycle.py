"""The agent's I/O-free core: the transition table, the WER gate, update choice, config, state files."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from device_agent.agent.config import AgentConfig, load_config
from device_agent.agent.download import RetryPolicy, Throttle
from device_agent.agent.lifecycle import LIFECYCLE, Effect, Event, State, Transition
from device_agent.agent.policy import GateConfig, choose_update, gate_decision, parse_expected_wer
from device_agent.agent.state import AgentState, SlotRef, UpdateRecord, load_state, save_state
from device_agent.errors import ConfigError, DataError, LifecycleError, NoUpdatePathError
from device_agent.channels import ChannelState, UpdateEdge

S, E, X = State, Event, Effect


# --- the table ----------------------------------------------------------------------
def test_the_daemon_moves_by_the_table_the_tests_walk() -> None:
    from device_agent.agent import Agent

    assert Agent.lifecycle is LIFECYCLE
    # one action per state the table can be in, except idle (where the daemon waits for a check)
    assert set(Agent._actions) == {s for r in LIFECYCLE.rows for s in (r.state, r.next)} - {S.IDLE}


@pytest.mark.parametrize("row", LIFECYCLE.rows, ids=lambda r: f"{r.state.value}-{r.event.value}")
def test_every_row_of_the_table(row: Transition) -> None:
    assert LIFECYCLE.can(row.state, row.event)
    assert LIFECYCLE.move(row.state, row.event) is row


def test_every_event_not_in_the_table_is_refused() -> None:
    refused = 0
    for state, event in itertools.product(State, Event):
        if LIFECYCLE.can(state, event):
            continue
        with pytest.raises(LifecycleError, match=f"cannot '{event.value}' while '{state.value}'"):
            LIFECYCLE.move(state, event)
        refused += 1
    assert refused == len(State) * len(Event) - len(LIFECYCLE.rows)


@pytest.mark.parametrize("state, event", [
    (State.VALIDATING, Event.ACTIVATED),  # no activation before the gate said yes
    (State.APPLYING, Event.GATE_PASSED),  # no gate before the candidate exists
    (State.DOWNLOADING, Event.APPLIED),  # no apply of unverified bytes
    (State.ACTIVATING, Event.SELF_TEST_PASSED),  # no commit before the pointer moved and was tested
    (State.IDLE, Event.ACTIVATED),
    (State.CHECKING, Event.ROLLBACK),  # operator rollback only when nothing is in progress
])
def test_out_of_order_steps_name_what_the_state_accepts(state: State, event: Event) -> None:
    with pytest.raises(LifecycleError) as info:
        LIFECYCLE.move(state, event)
    for allowed in LIFECYCLE.allowed(state):
        assert allowed.value in str(info.value)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(LifecycleError, match="unknown"):
        LIFECYCLE.move("sleeping", Event.CHECK)
    with pytest.raises(LifecycleError, match="unknown"):
        LIFECYCLE.move(State.IDLE, "jump")


def _reachable(start: State) -> set[State]:
    seen, todo = set(), [start]
    while todo:
        cur = todo.pop()
        seen.add(cur)
        todo += [r.next for r in LIFECYCLE.rows if r.state == cur and r.next not in seen]
    return seen


def test_table_shape() -> None:
    # every state is reachable from idle and every state leads back to idle
    assert _reachable(State.IDLE) == set(State)
    for s in State:
        assert State.IDLE in _reachable(s), s
    # terminal states only report; every in-progress state can fail
    assert LIFECYCLE.terminal == {S.COMMITTED, S.REFUSED, S.ROLLED_BACK, S.FAILED}
    for s in set(State) - LIFECYCLE.terminal - {State.IDLE}:
        assert Event.ERROR in LIFECYCLE.allowed(s)
    # the only way into ACTIVATING is a passed gate
    assert [(r.state, r.event) for r in LIFECYCLE.rows if r.next == State.ACTIVATING] == \
        [(State.VALIDATING, Event.GATE_PASSED)]


def _with(effect: Effect) -> set[tuple[State, Event]]:
    return {(r.state, r.event) for r in LIFECYCLE.rows if effect in r.effects}


def test_effects_live_on_the_rows() -> None:
    # the pointer is put back only when activation itself failed (after it, the self-test rolls back)
    assert _with(X.RESTORE_POINTER) == {(S.ACTIVATING, E.ERROR)}
    assert _with(X.START_ROLLBACK) == {(S.SELF_TESTING, E.ERROR)}
    # a version is refused for good when the gate said no or the device rolled back from it
    assert _with(X.REFUSE_VERSION) == {(S.VALIDATING, E.GATE_FAILED), (S.ROLLING_BACK, E.ROLLBACK_DONE)}
    assert _with(X.DISCARD_CANDIDATE) == {(S.VALIDATING, E.GATE_FAILED)}
    # every way into a terminal state is reported, except a failed check (no attempt was made)
    into_terminal = {(r.state, r.event) for r in LIFECYCLE.rows if r.next in LIFECYCLE.terminal}
    assert _with(X.REPORT) == into_terminal - {(S.CHECKING, E.ERROR)}
    # only failures keep their record (to resume the download); only other endings drop the bundle
    assert _with(X.KEEP_FOR_RESUME) <= {(r.state, r.event) for r in LIFECYCLE.rows if r.next == S.FAILED}
    assert not _with(X.KEEP_FOR_RESUME) & _with(X.DISCARD_DOWNLOAD)
    # effects happen only on moves into terminal states, or start the rollback
    assert {(r.state, r.event) for r in LIFECYCLE.rows if r.effects} <= into_terminal | {(S.SELF_TESTING, E.ERROR)}


def test_each_terminal_state_knows_the_move_that_led_to_it() -> None:
    assert LIFECYCLE.entered_by(S.REFUSED, None).state == S.VALIDATING
    assert LIFECYCLE.entered_by(S.ROLLED_BACK, None).state == S.ROLLING_BACK
    assert LIFECYCLE.entered_by(S.COMMITTED, None).state == S.SELF_TESTING
    for s in LIFECYCLE.terminal - {S.FAILED}:
        assert LIFECYCLE.entered_by(s, None).next == s
    for row in (r for r in LIFECYCLE.rows if r.next == S.FAILED):
        assert LIFECYCLE.entered_by(S.FAILED, row.state.value) is row


def test_docs_table_matches_code() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "agent.md").read_text()
    for r in LIFECYCLE.rows:
        effects = ", ".join(sorted(e.value for e in r.effects))
        assert f"| {r.state.value} | {r.event.value} | {r.next.value} | {effects} |" in doc, r


# --- WER gate (pure) ------------------------------------------------------------------
GATE = GateConfig(max_wer=0.4, max_regression=0.02, expected_slack=0.05)


@pytest.mark.parametrize("candidate, current, expected, passed, reason", [
    (0.10, 0.12, 0.10, True, "within"),
    (0.13, 0.12, None, True, "within"),  # small regression allowed
    (0.20, 0.12, None, False, "regresses"),  # a bad update: WER went up
    (0.45, None, None, False, "ceiling"),  # first install still has a ceiling
    (0.30, None, 0.10, False, "expected"),  # far worse than the publisher measured
    (0.12, 0.12, None, True, "within"),
])
def test_gate_decision(candidate, current, expected, passed, reason) -> None:
    d = gate_decision(candidate, current, expected, GATE)
    assert d.passed is passed
    assert any(reason in r for r in d.reasons)


def test_gate_names_every_failed_rule() -> None:
    d = gate_decision(0.9, 0.1, 0.1, GATE)
    assert not d.passed and len(d.reasons) == 3
    assert gate_decision(0.9, 0.1, 0.1, GateConfig(1.0, 1.0, None)).passed  # slack None ignores expected WER


def test_expected_wer_from_custom_metadata() -> None:
    assert parse_expected_wer("0.0800") == pytest.approx(0.08)
    assert parse_expected_wer(None) is None
    assert parse_expected_wer("nan?") is None and parse_expected_wer("-1") is None


# --- update choice (pure) ------------------------------------------------------------
def _channel(current: int, percent: float = 100.0) -> ChannelState:
    edges = (UpdateEdge(None, 1, "bundles/m/full-1.otab", 1000), UpdateEdge(1, 2, "bundles/m/1-2.otab", 50),
             UpdateEdge(None, 2, "bundles/m/full-2.otab", 1000), UpdateEdge(2, 3, "bundles/m/2-3.otab", 60))
    return ChannelState("m", "stable", current, percent, edges)


def test_choose_update_takes_one_cheapest_hop() -> None:
    c = choose_update(_channel(3), 1, set(), "dev")
    assert c.edge.target == "bundles/m/1-2.otab" and [e.target for e in c.plan] == ["bundles/m/1-2.otab",
                                                                                    "bundles/m/2-3.otab"]
    assert choose_update(_channel(3), None, set(), "dev").edge.target in ("bundles/m/full-1.otab",
                                                                             "bundles/m/full-2.otab")
    assert choose_update(_channel(3), 3, set(), "dev").edge is None


def test_refused_versions_are_never_chosen() -> None:
    c = choose_update(_channel(2), 1, {2}, "dev")
    assert c.edge is None and "refused" in c.reason
    c = choose_update(_channel(3), 1, {2}, "dev")  # the plan goes through a refused version
    assert c.edge is None


def test_rollout_membership_is_per_device_and_roughly_the_percentage() -> None:
    inside = sum(choose_update(_channel(2, 30.0), 1, set(), f"dev-{i}").edge is not None for i in range(2000))
    assert 450 < inside < 750
    assert choose_update(_channel(2, 0.0), 1, set(), "dev-1").edge is None
    # stable for one device and release
    assert len({choose_update(_channel(2, 50.0), 1, set(), "dev-7").edge is None for _ in range(5)}) == 1


def test_no_path_is_an_error() -> None:
    with pytest.raises(NoUpdatePathError):
        choose_update(ChannelState("m", "stable", 5, 100.0, ()), 1, set(), "dev")


# --- config -------------------------------------------------------------------------
BASE = {"store_url": "file:///srv/store", "model_id": "digits", "device_id": "dev-1", "data_dir": "data",
        "trust_root": "root.json", "validation_manifest": "val.jsonl"}


def _toml(tmp_path: Path, values: dict) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_file_env_and_relative_paths(tmp_path: Path) -> None:
    path = _toml(tmp_path, {**BASE, "poll_interval": 60, "bandwidth_limit": 100000})
    cfg = load_config(path, env={"OTA_AGENT_CHANNEL": "beta", "OTA_AGENT_MAX_WER": "0.3",
                                 "OTA_AGENT_BANDWIDTH_LIMIT": "none"})
    assert cfg.channel == "beta" and cfg.max_wer == 0.3 and cfg.bandwidth_limit is None
    assert cfg.poll_interval == 60 and cfg.data_dir == tmp_path / "data"
    assert cfg.reports_url == cfg.store_url


@pytest.mark.parametrize("key, value, match", [
    ("max_wer", -0.1, "max_wer: expected a number"),
    ("chunk_size", 10, "chunk_size: expected an integer"),
    ("store_url", "http://x", "store_url: expected"),
    ("device_id", "a/b", "device_id: expected"),
    ("retry_limit", True, "retry_limit: expected an integer"),
    ("poll_jitter", "soon", "poll_jitter: expected a number"),
])
def test_config_errors_name_the_key(tmp_path: Path, key: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_toml(tmp_path, {**BASE, key: value}), env={})


def test_config_missing_unknown_and_bad_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing \\['device_id'\\]"):
        load_config(_toml(tmp_path, {k: v for k, v in BASE.items() if k != "device_id"}), env={})
    with pytest.raises(ConfigError, match="unknown keys \\['colour'\\]"):
        load_config(_toml(tmp_path, {**BASE, "colour": "red"}), env={})
    with pytest.raises(ConfigError, match="OTA_AGENT_CHUNK_SIZE"):
        load_config(_toml(tmp_path, BASE), env={"OTA_AGENT_CHUNK_SIZE": "big"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", env={})
    assert isinstance(load_config(None, env={f"OTA_AGENT_{k.upper()}": v for k, v in BASE.items()}), AgentConfig)


# --- persisted state ----------------------------------------------------------------
def test_state_round_trip_is_atomic_json(tmp_path: Path) -> None:
    st = AgentState(State.VALIDATING, UpdateRecord(
        "abc", "bundles/m/1-2.otab", 10, {"sha256": "00"}, "targets/bundles/m/00.1-2.otab", "diff", 1, 2,
        "b" * 32, "t" * 32, 0.1, 1.0, SlotRef("a", 1, "b" * 32), "b", durations={"downloading": 0.5}),
        refused=[7], rollback={"to": SlotRef("a", 1, "h"), "from": None})
    save_state(tmp_path, st)
    assert load_state(tmp_path) == st
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json"]  # no temp files left
    assert load_state(tmp_path / "fresh") == AgentState()
    # earlier releases wrote versions as decimal strings: read as integers; anything else is refused
    doc = json.loads((tmp_path / "state.json").read_text())
    doc["refused"], doc["update"]["to_version"], doc["update"]["previous"]["version"] = ["7"], "2", "1"
    (tmp_path / "state.json").write_text(json.dumps(doc))
    assert load_state(tmp_path) == st
    doc["update"]["to_version"] = "1.3"
    (tmp_path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"state.update.to_version '1.3' must be an integer in \[0, 2\^53\]"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(DataError, match="unreadable"):
        load_state(tmp_path)


# --- transport helpers ----------------------------------------------------------------
def test_backoff_and_throttle() -> None:
    policy = RetryPolicy(5, 0.5, 3.0)
    assert [policy.delay(i) for i in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    now, slept = [0.0], []
    t = Throttle(1000, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    for _ in range(4):
        t.account(500)
    assert sum(slept) == pytest.approx(2.0)  # 2000 bytes at 1000 B/s
