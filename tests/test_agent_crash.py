"""Crash safety: the agent as a real process, killed with SIGKILL in every lifecycle state of all
four endings and inside the candidate's slot write, then restarted (tests/crash_harness.py)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from device_agent.agent import State
from device_agent.agent.state import load_state
from tests.crash_harness import (FAULTS, SCENARIOS, CrashSetup, active_version, build, converged, device,
                                 durations, run_agent, slot_write_interrupted)

# the states each ending passes through, in order (idle: after the report, before the next check)
PATHS = {
    "commit": ["checking", "downloading", "verifying", "applying", "validating", "activating", "self_testing",
               "committed", "idle"],
    "refuse": ["checking", "downloading", "verifying", "applying", "validating", "refused", "idle"],
    "rollback": ["checking", "downloading", "verifying", "applying", "validating", "activating", "self_testing",
                 "rolling_back", "rolled_back", "idle"],
    "fail": ["checking", "downloading", "failed", "idle"],  # the tampered bytes fail the streamed hash
}
# where the pointer is while each state runs (idle: where the scenario ends)
ON_NEW = {"self_testing", "committed", "rolling_back"}


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> CrashSetup:
    return build(tmp_path_factory.mktemp("crash"))


def _reports(crash: CrashSetup, scenario: str, device_id: str) -> list[dict]:
    store = Path(crash.configs[scenario].reports_url.removeprefix("file://"))
    return [json.loads(p.read_text()) for p in (store / "reports").rglob(f"{device_id}/*.json")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_on_entering_every_state_then_resume(crash: CrashSetup, scenario: str) -> None:
    """One device walks its ending with a kill on entering each state in turn: every restart resumes
    the persisted state and runs to the next kill. After each kill the active model loads and is the
    one the pointer may name at that point; at the end the device is where the ending leaves it."""
    fault = FAULTS.get(scenario, "")
    name = f"walk-{scenario}"
    data, toml = device(crash, scenario, name)
    end = crash.new if scenario == "commit" else crash.old
    for state in PATHS[scenario]:
        run = run_agent(toml, state, None, fault)
        assert run.killed, (scenario, state, run)
        assert load_state(data).state.value == state  # killed right after the move was persisted
        want = end if state == "idle" else crash.new if state in ON_NEW else crash.old
        assert active_version(data, crash.allowed) == want, (scenario, state)
    assert run_agent(toml, fault=fault).code == 0
    assert converged(crash, scenario, data), scenario
    assert not list((data / "outbox").glob("*.json"))  # every report uploaded
    outcomes = [r["outcome"] for r in _reports(crash, scenario, name)]
    expected = {"commit": ["committed"], "refuse": ["refused"], "rollback": ["rolled_back"],
                "fail": ["failed", "failed"]}[scenario]  # fail: the walk's attempt and the final run's
    assert sorted(outcomes) == expected  # each attempt reported once, whatever the kills


def test_the_walks_cover_every_state() -> None:
    assert {s for path in PATHS.values() for s in path} == {s.value for s in State}


def test_kill_inside_the_slot_write(crash: CrashSetup) -> None:
    data, toml = device(crash, "commit", "slot-write")
    run = run_agent(toml, "slot_write", 0.05)
    assert run.killed and len(run.slot_pieces) > 1
    assert load_state(data).state.value == "applying" and slot_write_interrupted(data)  # the kill landed inside
    assert active_version(data, crash.allowed) == crash.old
    assert run_agent(toml).code == 0
    assert converged(crash, "commit", data)  # and the temp file of the killed write is gone


def test_random_kills_never_corrupt_and_converge(crash: CrashSetup) -> None:
    rng = random.Random(1234)
    spans = {s: sum(durations(run_agent(device(crash, s, f"calibrate-{s}")[1], fault=FAULTS.get(s, "")).entered)
                    .values()) for s in SCENARIOS}  # one uninterrupted run's length
    for trial in range(6):
        scenario = SCENARIOS[trial % len(SCENARIOS)]
        fault = FAULTS.get(scenario, "")
        data, toml = device(crash, scenario, f"random-{trial}")
        run = run_agent(toml, "start", rng.uniform(0.0, spans[scenario]), fault)
        for _ in range(10):
            assert active_version(data, crash.allowed) is not None, (scenario, trial)
            if run.code == 0:
                break
            run = run_agent(toml, fault=fault)
        assert converged(crash, scenario, data), (scenario, trial)
