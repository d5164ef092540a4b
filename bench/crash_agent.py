"""Crash safety of the device agent: SIGKILL aimed at every lifecycle state, restart, repeat.

Four scenarios run the lifecycle's four endings on copies of a device that runs
v1, with v2 published (tests/crash_harness.py: `commit`, `refuse`, `rollback`
with a self-test fault injected in the agent process, `fail` with a tampered
bundle). Kills are aimed: each trial picks a scenario and one of the states it
passes through, and the agent process is killed with SIGKILL at a uniform
random moment inside that state (its duration measured by one uninterrupted
run). Two more targets: `start` (a random moment after the process starts,
before or during the first steps) and `slot_write` (a random moment inside the
candidate's write into its slot, which the harness throttles through the
slots module's test hook; a kill counts as landed there only if the slot's
temp file is still on disk after it). Then the agent is restarted (no more
kills) until it exits cleanly. After every kill and every restart the active
model must load and hash to v1 or v2 (else: corrupt); at the end the device
must be where the scenario ends, with no temp file left in the slots
(converged). The state persisted at each kill is counted and printed.

    python bench/crash_agent.py --trials 1000
    python bench/crash_agent.py --trials 40 --seed 1 --out /tmp/crash.json   # a short check
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import write_results  # noqa: E402
import device_agent.audio, device_agent.runtime, device_agent.wer  # noqa: E402,F401  (warm imports for the forks)
from device_agent.agent.state import load_state  # noqa: E402
from tests.crash_harness import (FAULTS, SCENARIOS, active_version, build, converged, device, durations,  # noqa: E402
                                 run_agent, slot_write_interrupted)

STATES_WITH_ENTRY = ("checking", "downloading", "verifying", "applying", "validating", "activating",
                     "self_testing", "committed", "refused", "rolling_back", "rolled_back", "failed")


def calibrate(s) -> tuple[list[tuple[str, str, float]], dict[str, dict[str, float]], float]:
    """-> (targets: (scenario, target, longest delay), seconds per state per scenario, slot write seconds)."""
    plan: list[tuple[str, str, float]] = []
    spans: dict[str, dict[str, float]] = {}
    for scenario in SCENARIOS:
        data, toml = device(s, scenario, f"calibrate-{scenario}")
        run = run_agent(toml, fault=FAULTS.get(scenario, ""))
        assert run.code == 0 and converged(s, scenario, data), (scenario, run)
        spans[scenario] = {k: round(v, 3) for k, v in durations(run.entered).items()}
        plan += [(scenario, state, spans[scenario][state]) for state in STATES_WITH_ENTRY if state in spans[scenario]]
        plan.append((scenario, "start", 0.3))  # before the first transition (start-up, lock, state read)
    data, toml = device(s, "commit", "calibrate-slot-write")
    run = run_agent(toml, throttle_slot_write=True)
    assert run.code == 0 and converged(s, "commit", data) and len(run.slot_pieces) > 1, run
    write_s = run.slot_pieces[-1] - run.slot_pieces[0]  # from the first piece to the last
    plan.append(("commit", "slot_write", write_s * 0.9))
    return plan, spans, round(write_s, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default bench/results/crash_agent.json; use a scratch path for short checks)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-agent-") as d:
        s = build(Path(d))
        plan, spans, write_s = calibrate(s)
        print(json.dumps({"targets": len(plan), "state_seconds": spans, "slot_write_seconds": write_s}, indent=1),
              flush=True)
        counts: Counter = Counter()
        killed_in: Counter = Counter()
        aimed: Counter = Counter()
        started = time.monotonic()
        for trial in range(args.trials):
            scenario, target, span = plan[trial % len(plan)] if trial < len(plan) else rng.choice(plan)
            aimed[target] += 1
            fault = FAULTS.get(scenario, "")
            data, toml = device(s, scenario, f"t{trial}")
            run = run_agent(toml, target, rng.uniform(0.0, span), fault)
            counts["killed" if run.killed else "finished_before_kill"] += 1
            if run.killed:
                persisted = load_state(data).state.value  # the last state persisted before the kill
                if target == "slot_write":
                    landed = persisted == "applying" and slot_write_interrupted(data)
                    counts["slot_write_landed" if landed else "slot_write_missed"] += 1
                    persisted += " (mid slot write)" if landed else ""
                killed_in[persisted] += 1
            elif target == "slot_write":
                counts["slot_write_missed"] += 1
            if active_version(data, s.allowed) is None:
                counts["corrupt"] += 1
            for _ in range(10):
                code = run_agent(toml, fault=fault).code
                if active_version(data, s.allowed) is None:
                    counts["corrupt"] += 1
                if code == 0:
                    break
                counts["restart_errors"] += 1
            counts["converged"] += converged(s, scenario, data)
            shutil.rmtree(data)
            print(f"trial {trial + 1}/{args.trials} [{scenario} -> {target}]: {dict(counts)}", flush=True)
            # results after every trial: an interrupted run still leaves its distribution
            write_results("crash_agent", summary(args, trial + 1, counts, killed_in, aimed, spans, write_s, s,
                                                 started), args.out)
    result = summary(args, args.trials, counts, killed_in, aimed, spans, write_s, s, started)
    print("state at kill: " + ", ".join(f"{k} {v}" for k, v in killed_in.most_common()))
    print(json.dumps(result, indent=1))


def summary(args, done: int, counts: Counter, killed_in: Counter, aimed: Counter, spans: dict, write_s: float, s,
            started: float) -> dict:
    return {"trials": done, "trials_requested": args.trials, "corrupt": counts["corrupt"],
            "converged": counts["converged"], "killed": counts["killed"],
            "finished_before_kill": counts["finished_before_kill"], "restart_errors": counts["restart_errors"],
            "slot_write_kills_landed": counts["slot_write_landed"],
            "slot_write_kills_missed": counts["slot_write_missed"],
            "state_at_kill": dict(killed_in.most_common()), "aimed_at": dict(aimed.most_common()),
            "state_seconds": spans, "slot_write_seconds": write_s, "bundle_bytes": s.bundle_bytes,
            "wall_seconds": round(time.monotonic() - started, 1),
            "command": f"python bench/crash_agent.py --trials {args.trials} --seed {args.seed}"}


if __name__ == "__main__":
    main()
