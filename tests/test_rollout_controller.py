"""The rollout controller: pure decisions, persisted state that survives a restart, one
winner between two controllers, hostile reports skipped, and the CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from device_agent.agent.heartbeat import Heartbeat, heartbeat_key
from device_agent.agent.telemetry import report_key
from device_agent.diff import Diff, SparseDelta, apply_diff
from cli.exit_codes import code_for_error
from device_agent.errors import ConfigError, DataError, StoreConflictError
from device_agent.model_format import encode_model
from packager.bundle import encode_diff_bundle, encode_full_bundle
from packager.publish import publish_bundle, read_channel
from packager.rollout_controller import CohortNumbers, RolloutController, RolloutPlan, RolloutState, decide
from device_agent.store import FileStore
from packager.trust import init_repository
from tests.tiny import tiny_device_model

MODEL = "tiny"
PLAN = RolloutPlan(MODEL, "stable", 2, 1, (10.0, 50.0, 100.0), min_reports=3, min_halt_reports=3, revert=True)


def numbers(**kw) -> CohortNumbers:
    base = dict(reports=0, committed=0, refused=0, failed=0, transport_failed=0, rolled_back=0,
                median_wer_change=None, fleet=100, ignored=0)
    return CohortNumbers(**{**base, **kw})


def test_decisions() -> None:
    state = RolloutState(PLAN)
    assert decide(state, numbers(reports=2, committed=2))[0] == "wait"  # 10% of 100 devices: 5 reports needed
    assert decide(state, numbers(reports=5, committed=5, median_wer_change=0.0))[0] == "advance"
    action, reason = decide(state, numbers(reports=5, committed=3, refused=2))
    assert action == "halt" and "refused by the WER gate" in reason
    action, reason = decide(state, numbers(reports=5, committed=5, median_wer_change=0.03))
    assert action == "halt" and "median WER change +0.0300" in reason
    # the store was down for some: not the release's fault, and not counted as reports
    assert decide(state, numbers(reports=8, committed=5, transport_failed=3, median_wer_change=0.0))[0] == "advance"
    assert decide(RolloutState(PLAN, cohort=2), numbers(reports=60, committed=60))[0] == "complete"
    with pytest.raises(ConfigError, match="ending at 100"):
        replace(PLAN, cohorts=(10.0, 50.0))
    with pytest.raises(ConfigError, match="previous version"):
        RolloutPlan(MODEL, "stable", 2, None, revert=True)
    with pytest.raises(ConfigError, match=r"rollout version '2' must be an integer"):
        RolloutPlan(MODEL, "stable", "2", 1)  # type: ignore[arg-type]


@pytest.fixture
def repo(file_store: FileStore, tmp_path: Path) -> tuple[FileStore, Path]:
    keys = tmp_path / "keys"
    init_repository(file_store, keys)
    v1 = tiny_device_model(0)
    publish_bundle(file_store, keys, encode_full_bundle(encode_model(v1), v1))
    w = v1.weights["joint.out.weight"]
    diff = Diff("sparse", MODEL, 1, 2, v1.content_hash(), "", {"joint.out.weight": SparseDelta(
        np.array([0, 5, 9]), np.array([1, -1, 2], dtype=np.int8))})
    diff.target_hash = apply_diff(v1, diff, check_hashes=False).content_hash()
    v2 = apply_diff(v1, diff)
    assert w.q.size > 9
    publish_bundle(file_store, keys, encode_diff_bundle(diff, v1), rollout_percent=0.0)
    back = Diff("exact", MODEL, 2, 1, v2.content_hash(), v1.content_hash(), {"joint.out.weight": SparseDelta(
        np.array([0, 5, 9]), np.array([-1, 1, -2], dtype=np.int8))})
    publish_bundle(file_store, keys, encode_diff_bundle(back, v2), make_current=False)
    for i in range(20):  # a fleet of 20 devices
        file_store.put(heartbeat_key(MODEL, "stable", f"d{i}"),
                       Heartbeat(f"d{i}", MODEL, "stable", 1.0, 1, "no_update").to_json())
    return file_store, keys


def report(store: FileStore, device: str, outcome: str, before: float, after: float, t: float) -> None:
    doc = {"format": 1, "device_id": device, "model_id": MODEL, "channel": "stable", "outcome": outcome,
           "from_version": 1, "to_version": 2, "wer_before": before, "wer_after": after, "finished_at": t}
    store.put(report_key(MODEL, "stable", device, t), json.dumps(doc).encode())


def test_restart_resumes_and_a_bad_cohort_halts_and_reverts(repo) -> None:
    store, keys = repo
    controller = RolloutController(store, keys, MODEL, "stable")
    controller.plan(PLAN)
    assert (read_channel(store, keys, MODEL, "stable").rollout_percent) == 10.0
    for i in range(3):
        report(store, f"d{i}", "committed", 0.2, 0.2, 10.0 + i)
    assert controller.step()["action"] == "advance"
    assert read_channel(store, keys, MODEL, "stable").rollout_percent == 50.0

    restarted = RolloutController(store, keys, MODEL, "stable")  # a new process: state from the store
    assert restarted.load()[0].cohort == 1
    store.put("reports/tiny/stable/evil/x.json", b"{" * 50_000)  # hostile: skipped and counted
    for i in range(3, 6):
        report(store, f"d{i}", "refused", 0.2, 0.4, 20.0 + i)
    decision = restarted.step()
    assert decision["action"] == "halt" and decision["numbers"]["ignored"] == 1
    channel = read_channel(store, keys, MODEL, "stable")
    assert (channel.current_version, channel.rollout_percent) == (1, 100.0)  # back to version 1 for everyone
    state = restarted.load()[0]
    assert [d["action"] for d in state.decisions] == ["plan", "advance", "halt"]
    assert state.decisions[-1]["numbers"]["refused"] == 3
    assert restarted.step()["action"] == "none"  # halted stays halted


def test_two_controllers_never_both_act(repo) -> None:
    store, keys = repo
    first = RolloutController(store, keys, MODEL, "stable")
    first.plan(PLAN)
    for i in range(3):
        report(store, f"d{i}", "committed", 0.2, 0.2, 10.0 + i)
    second = RolloutController(store, keys, MODEL, "stable")
    original_load = second.load
    stale = original_load()

    second.load = lambda: stale  # type: ignore[method-assign]  # it read the state before the first acted
    assert first.step()["action"] == "advance"
    with pytest.raises(StoreConflictError, match="another controller"):
        second.step()
    assert first.load()[0].cohort == 1 and len(first.load()[0].decisions) == 2


def test_rollout_cli(repo, tmp_path: Path) -> None:
    store, keys = repo
    runner = CliRunner()
    base = ["--store", store.url, "--model-id", MODEL]
    out = runner.invoke(cli, ["rollout", "plan", *base, "--keys", str(keys), "--version", "2", "--cohorts", "25,100"])
    assert out.exit_code == 0, out.output
    assert "from 25%" in out.output and "back to 1" in out.output
    out = runner.invoke(cli, ["rollout", "watch", *base, "--keys", str(keys), "--once"])
    assert out.exit_code == 0 and out.output.startswith("wait:")
    out = runner.invoke(cli, ["rollout", "show", *base])
    assert out.exit_code == 0 and "running at cohort 25%" in out.output
    bad = runner.invoke(cli, ["rollout", "plan", *base, "--keys", str(keys), "--version", "2", "--cohorts", "5,50"])
    assert bad.exit_code == 4 and "ending at 100" in bad.output


def test_a_halt_without_revert_stops_new_installs_even_when_killed_before_the_channel_write(repo) -> None:
    store, keys = repo
    controller = RolloutController(store, keys, MODEL, "stable")
    controller.plan(replace(PLAN, revert=False))
    for i in range(3):
        report(store, f"d{i}", "failed", 0.2, 0.2, 10.0 + i)

    def killed(state: RolloutState) -> None:  # the process dies after the decision is stored
        raise KeyboardInterrupt

    controller._apply = killed  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        controller.step()
    assert read_channel(store, keys, MODEL, "stable").rollout_percent == 10.0  # the channel was not written

    restarted = RolloutController(store, keys, MODEL, "stable")  # `ota rollout watch` resumes first
    assert restarted.resume().status == "halted"
    channel = read_channel(store, keys, MODEL, "stable")
    assert (channel.current_version, channel.rollout_percent) == (2, 0.0)  # nobody new installs version 2
    assert [d["action"] for d in restarted.load()[0].decisions] == ["plan", "halt"]
    assert restarted.step()["action"] == "none"


def test_reports_and_a_rollout_state_of_the_wrong_types_never_stop_the_controller(repo) -> None:
    store, keys = repo
    controller = RolloutController(store, keys, MODEL, "stable")
    controller.plan(PLAN)
    report(store, "d0", "committed", 0.2, 0.2, 10.0)
    doc = {"format": 1, "device_id": "d0", "model_id": MODEL, "channel": "stable", "outcome": "failed",
           "from_version": 1, "to_version": 2}
    store.put("reports/tiny/stable/d0/late.json", json.dumps({**doc, "finished_at": "late"}).encode())
    store.put("reports/tiny/stable/d1/x.json", json.dumps({**doc, "device_id": "d1", "error_class": ["x"]}).encode())
    decision = controller.step()  # the string time and the list class used to raise TypeError here
    assert decision["action"] == "wait" and decision["numbers"]["ignored"] == 2
    assert decision["numbers"]["reports"] == 1

    state = json.loads(store.get("rollouts/tiny/stable.json"))
    for field, value in (("cohort", 7), ("cohort", "0"), ("status", "paused"), ("decisions", [{"at": 1}])):
        store.put("rollouts/tiny/stable.json", json.dumps({**state, field: value}).encode())
        with pytest.raises(DataError, match="rollout state is malformed"):
            RolloutController(store, keys, MODEL, "stable").step()
        shown = CliRunner().invoke(cli, ["rollout", "show", "--store", store.url, "--model-id", MODEL])
        assert shown.exit_code == code_for_error(DataError("")) and "rollout state is malformed" in shown.output


def test_plan_release_goes_back_to_the_current_version_and_writes_nothing_for_a_bad_plan(repo) -> None:
    store, keys = repo
    controller = RolloutController(store, keys, MODEL, "stable")
    revert = encode_full_bundle(encode_model(tiny_device_model(0)), tiny_device_model(0))  # any way back to 1
    before = sorted(store.list(""))
    with pytest.raises(ConfigError, match="ending at 100"):
        controller.plan_release(2, revert_bundle=revert, cohorts=(5.0, 50.0))
    assert sorted(store.list("")) == before  # the revert bundle was not published for a plan that cannot run
    plan = controller.plan_release(2, cohorts=(25.0, 100.0))
    assert (plan.previous_version, plan.revert) == (1, False)  # version 1 is current on the channel
    assert read_channel(store, keys, MODEL, "stable").rollout_percent == 25.0
