"""Crash safety of the device agent: SIGKILL aimed at every lifecycle state, restart, repeat.

Four scenarios run the lifecycle's four endings on copies of a device that runs
v1, with v2 published: `commit` (the diff passes the gate), `refuse` (the
device's gate is stricter: refused), `rollback` (the self-test fails after the
swap: rolled back; a fault injected in the driver, the one thing a real part
does not produce on demand) and `fail` (the store serves a tampered bundle:
failed). Kills are aimed: each trial picks a scenario and one of the states it
passes through, and the driver kills itself with SIGKILL at a uniform random
moment inside that state (its duration measured by one uninterrupted run);
two more targets kill inside a download (throttled, several ranged chunks)
and inside the candidate slot write (half the bytes written). Then the agent
is restarted (no more kills) until it exits cleanly. After every kill and
every restart the active model must load and hash to v1 or v2 (else: corrupt);
at the end the device must be where the scenario ends (converged).
The state persisted at each kill is counted and printed.

    python bench/crash_agent.py --trials 1000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, write_results  # noqa: E402
from device_agent.agent import Agent, active_model_file, load_config  # noqa: E402
from device_agent.agent.log import null_log  # noqa: E402
from device_agent.agent.state import load_state  # noqa: E402
from device_agent.diff import Diff, SparseDelta, apply_diff  # noqa: E402
from device_agent.errors import OtaError  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
import device_agent.audio, device_agent.runtime, device_agent.wer  # noqa: E402,F401  (warm imports for the forks)
from packager.bundle import encode_diff_bundle, encode_full_bundle  # noqa: E402
from packager.publish import publish_bundle  # noqa: E402
from device_agent.store import FileStore  # noqa: E402
from packager.trust import init_repository  # noqa: E402

def _child(toml: Path, target: str, delay: float, fault: str, out) -> int:
    """The agent process: one check_once, killed with SIGKILL inside `target` after `delay` s.

    Runs in a fork of the benchmark (imports already warm, so a trial costs the
    update, not an interpreter start-up); the kill and the restart are real processes."""
    import threading

    import device_agent.agent.slots as slots

    started = time.monotonic()

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def observer(state, st) -> None:
        out.write(f"state {state.value} {time.monotonic() - started:.4f}\n")
        out.flush()
        if state.value == target:
            threading.Timer(delay, die).start()

    if target == "slot_write":  # killed with half the candidate written to the slot's temp file
        def half_then_die(path, data) -> None:
            with open(str(path) + ".tmp-crash", "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            die()

        slots.write_atomic = half_then_die
    if fault == "self_test":  # the one injected fault: a candidate that breaks after activation
        from device_agent.agent.validate import Validator
        from device_agent.errors import ModelFormatError

        def broken(self, model_file, content_hash):
            raise ModelFormatError("self-test: injected failure")

        Validator.self_test = broken
    agent = Agent(load_config(toml), observer=observer, log=null_log)
    if target == "idle":
        threading.Timer(delay, die).start()
    agent.check_once(raise_errors=False)
    return 0


STATES_WITH_ENTRY = ("checking", "downloading", "verifying", "applying", "validating", "activating",
                     "self_testing", "committed", "refused", "rolling_back", "rolled_back", "failed")


def _model():  # -> DeviceModel: small, with rows of >= 16 entries, blank-only decoding (fast, WER 1.0)
    from device_agent.features import FeatureConfig
    from device_agent.model_config import ModelConfig
    from tests.tiny import tiny_device_model

    cfg = ModelConfig(features=FeatureConfig(n_mels=16, stack=1), enc_hidden=64, enc_layers=1, embed_dim=16,
                      pred_hidden=64, joint_dim=64)
    base = tiny_device_model(0, cfg, 0.5)
    base.floats["joint.out.bias"][0] = 1000.0
    return base


def setup(tmp: Path) -> dict:
    """Repository (and a tampered copy), the template device with v1, one config per scenario."""
    import numpy as np

    base = _model()
    store = FileStore(tmp / "store")
    (tmp / "store").mkdir()
    (tmp / "root.json").write_bytes(init_repository(store, tmp / "keys"))
    utt = ROOT / "samples" / "audio"
    (tmp / "val.jsonl").write_text("".join(json.dumps({"audio_filepath": str(utt / f"sample_0{i}.wav"),
                                                       "text": "turn on the light", "duration": 1.5}) + "\n"
                                           for i in range(2)))
    publish_bundle(store, tmp / "keys", encode_full_bundle(encode_model(base), base))
    common = dict(env={}, model_id=base.model_id, device_id="bench", trust_root=tmp / "root.json",
                  validation_manifest=tmp / "val.jsonl", max_wer=5.0, chunk_size=4096, retry_limit=2,
                  retry_backoff=0.05, poll_interval=0.0, poll_jitter=0.0, bandwidth_limit=40_000)
    template = load_config(None, store_url=f"file://{tmp / 'store'}", data_dir=tmp / "template", **common)
    Agent(template, log=null_log).check_once()
    rng = np.random.default_rng(1)
    deltas = {}
    for name in ("encoder.weight_hh_l0", "encoder.weight_ih_l0", "predictor.weight_hh_l0"):
        numel = base.weights[name].q.size
        positions = np.sort(rng.choice(numel, numel // 3, replace=False))
        deltas[name] = SparseDelta(positions, rng.choice([-2, -1, 1, 2], positions.size).astype(np.int8))
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "", deltas)
    new = apply_diff(base, diff, check_hashes=False)
    diff.target_hash = new.content_hash()
    bundle = encode_diff_bundle(diff, base)
    publish_bundle(store, tmp / "keys", bundle)
    # the tampered mirror: same signed metadata, one byte of the v2 bundle changed
    shutil.copytree(tmp / "store", tmp / "tampered")
    for path in (tmp / "tampered").rglob("*.otab"):
        data = path.read_bytes()
        if data == bundle:
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    configs = {
        "commit": template,
        "refuse": load_config(None, **{**common, "max_wer": 0.5}, store_url=f"file://{tmp / 'store'}",
                              data_dir=tmp / "template"),
        "rollback": template,
        "fail": load_config(None, store_url=f"file://{tmp / 'tampered'}", data_dir=tmp / "template", **common),
    }
    return {"configs": configs, "old": ("1", base.content_hash()), "new": ("2", new.content_hash()),
            "bundle_bytes": len(bundle)}


SCENARIO_END = {"commit": "new", "refuse": "old", "rollback": "old", "fail": "old"}


def device(tmp: Path, cfg, name: str) -> tuple[Path, Path]:
    data = tmp / name
    shutil.copytree(cfg.data_dir, data)
    toml = tmp / f"{name}.toml"
    doc = {**cfg.to_json(), "data_dir": str(data)}
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in doc.items() if v is not None))
    return data, toml


def run(toml: Path, target: str = "", delay: float = 0.0, fault: str = "") -> tuple[int, list[tuple[str, float]]]:
    """-> (exit code: 0, 1 on an exception, -9 if killed; [(state entered, seconds since start)])."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 1
        try:
            with os.fdopen(wfd, "w") as out:
                code = _child(toml, target, delay, fault, out)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    entered = [(w[1], float(w[2])) for w in (line.split() for line in text.splitlines()) if w and w[0] == "state"]
    return code, entered


def durations(entered: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds spent in each state entered (the last one: until exit, taken as 0.05 s)."""
    out: dict[str, float] = {}
    for (state, t), nxt in zip(entered, entered[1:] + [(None, entered[-1][1] + 0.05)]):
        out[state] = out.get(state, 0.0) + nxt[1] - t
    return out


def active_version(data: Path, allowed: set[tuple[str, str]]) -> tuple[str, str] | None:
    """(version, hash) if the active model loads and is one of `allowed`; None = corrupt."""
    try:
        found = active_model_file(data)
        if found is None:
            return None
        path, ref = found
        got = (ref.version, load_model(path).content_hash())
    except OtaError:
        return None
    return got if got in allowed and got[1] == ref.hash else None


def converged(scenario: str, data: Path, setup_: dict) -> bool:
    st = load_state(data)
    want = setup_[SCENARIO_END[scenario]]
    if active_version(data, {setup_["old"], setup_["new"]}) != want or st.state.value != "idle":
        return False
    if scenario in ("refuse", "rollback"):
        return "2" in st.refused
    if scenario == "fail":
        return st.last_error is not None
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-agent-") as d:
        tmp = Path(d)
        s = setup(tmp)
        allowed = {s["old"], s["new"]}
        fault = {"rollback": "self_test"}
        # calibrate: which states each scenario enters and for how long
        plan: list[tuple[str, str, float]] = []  # (scenario, target, max delay)
        spans: dict[str, dict[str, float]] = {}
        for scenario, cfg in s["configs"].items():
            data, toml = device(tmp, cfg, f"calibrate-{scenario}")
            code, entered = run(toml, fault=fault.get(scenario, ""))
            assert code == 0 and converged(scenario, data, s), (scenario, code, entered)
            spans[scenario] = {k: round(v, 3) for k, v in durations(entered).items()}
            plan += [(scenario, state, spans[scenario][state]) for state in STATES_WITH_ENTRY
                     if state in spans[scenario]]
            plan.append((scenario, "idle", 0.3))  # before the first transition (start-up, lock, state read)
        plan.append(("commit", "slot_write", 0.0))
        print(json.dumps({"targets": len(plan), "state_seconds": spans}, indent=1), flush=True)
        counts: Counter = Counter()
        killed_in: Counter = Counter()
        aimed: Counter = Counter()
        started = time.monotonic()
        for trial in range(args.trials):
            scenario, target, span = plan[trial % len(plan)] if trial < len(plan) else rng.choice(plan)
            aimed[target] += 1
            data, toml = device(tmp, s["configs"][scenario], f"t{trial}")
            code, _ = run(toml, target, rng.uniform(0.0, span), fault.get(scenario, ""))
            counts["killed" if code == -signal.SIGKILL else "finished_before_kill"] += 1
            if code == -signal.SIGKILL:
                persisted = load_state(data).state.value  # the last state persisted before the kill
                killed_in[persisted + (" (mid slot write)" if target == "slot_write" else "")] += 1
            if active_version(data, allowed) is None:
                counts["corrupt"] += 1
            for _ in range(10):
                code, _ = run(toml, fault=fault.get(scenario, ""))
                if active_version(data, allowed) is None:
                    counts["corrupt"] += 1
                if code == 0:
                    break
                counts["restart_errors"] += 1
            counts["converged"] += converged(scenario, data, s)
            shutil.rmtree(data)
            print(f"trial {trial + 1}/{args.trials} [{scenario} -> {target}]: {dict(counts)}", flush=True)
            # results after every trial: an interrupted run still leaves its distribution
            write_results("crash_agent", summary(args, trial + 1, counts, killed_in, aimed, spans, s, started))
    result = summary(args, args.trials, counts, killed_in, aimed, spans, s, started)
    print("state at kill: " + ", ".join(f"{k} {v}" for k, v in killed_in.most_common()))
    print(json.dumps(result, indent=1))


def summary(args, done: int, counts: Counter, killed_in: Counter, aimed: Counter, spans: dict, s: dict,
            started: float) -> dict:
    return {"trials": done, "trials_requested": args.trials, "corrupt": counts["corrupt"],
            "converged": counts["converged"], "killed": counts["killed"],
            "finished_before_kill": counts["finished_before_kill"], "restart_errors": counts["restart_errors"],
            "state_at_kill": dict(killed_in.most_common()), "aimed_at": dict(aimed.most_common()),
            "state_seconds": spans, "bundle_bytes": s["bundle_bytes"],
            "wall_seconds": round(time.monotonic() - started, 1),
            "command": f"python bench/crash_agent.py --trials {args.trials} --seed {args.seed}"}


if __name__ == "__main__":
    main()
