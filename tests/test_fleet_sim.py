"""The fleet simulation at 50 devices: all four scenarios on a real SeaweedFS, real TUF
clients, the real rollout controller and real apply + WER gates on three validation sets."""
from __future__ import annotations

import pytest

from bench.fleet_sim import MODEL, SimConfig, run
from demo.seaweed import weed_binary

SMALL = SimConfig(devices=50, samples=3, utterances=2, cohorts=(20.0, 50.0, 100.0), min_reports=3,
                  min_halt_reports=2, threads=4, max_slots=40,
                  bad_release=("encoder.weight_hh_l2", 0.9, 120))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> dict:
    try:
        weed_binary()
    except Exception as exc:  # the same skip as the shared SeaweedFS fixture
        pytest.skip(str(exc))
    if not MODEL.is_file():
        pytest.skip("needs the shipped model")
    return run(SMALL, tmp_path_factory.mktemp("fleet"), log=lambda *_: None)


def test_good_release_reaches_every_device(sim: dict) -> None:
    good = sim["good_release"]
    assert good["status"] == "completed"
    assert good["hours_to_every_device"] is not None
    assert [d["action"] for d in good["decisions"]] == ["advance", "advance", "complete"]
    assert good["delivered_bytes"] * 100 < good["full_model_delivery_bytes"]  # a diff, not 50 full models
    assert sim["idle_poll"]["steady"]["errors"] == 0


def test_bad_release_halts_in_its_first_cohort_and_devices_return(sim: dict) -> None:
    bad = sim["bad_release"]
    halt = [d for d in bad["decisions"] if d["action"] == "halt"]
    assert bad["status"] == "halted" and len(halt) == 1
    assert halt[0]["cohort_percent"] == SMALL.cohorts[0]
    assert not any(d["action"] == "advance" for d in bad["decisions"])
    assert bad["still_on_bad_version"] == 0  # those that took it went back through the reverse bundle
    assert bad["release_row"]["refused"] >= 1 and bad["first_bad_report_to_halt_minutes"] is not None


def test_store_outage_mid_rollout_delays_but_does_not_stop_a_good_release(sim: dict) -> None:
    outage = sim["store_outage"]
    assert outage["outage_poll_results"].get("failed: store unreachable", 0) > 0
    assert outage["status"] == "completed" and outage["hours_to_every_device"] is not None
    assert not any(d["action"] == "halt" for d in outage["decisions"])


def test_three_timestamp_lifetimes_without_publishes(sim: dict) -> None:
    quiet = sim["quiet_with_refresh"]
    assert set(quiet["poll_results"]) == {"no_update"}  # refresh on schedule: no check failed
    assert quiet["versions_after"] == {5: SMALL.devices}  # and the next release still reaches everyone
    without = sim["quiet_without_refresh"]
    assert without["poll_results"].get("failed: metadata expired", 0) > 0
    assert without["fleet_status_failing"] == {"metadata expired": SMALL.devices}
    assert without["after_refresh_resumed"].get("no_update", 0) > 0
