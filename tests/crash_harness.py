"""Crash harness: the device agent as a real process, killed with SIGKILL where a caller aims.

Shared by the kill tests (tests/test_agent_crash.py) and the crash benchmark
(bench/crash_agent.py). `build` makes a repository with v1 and a diff to v2
and a template device running v1, with one agent config per ending of the
lifecycle:

- `commit`: the diff passes the gate and is committed;
- `refuse`: the device's gate is stricter (max_wer 0.5 < the model's 1.0): refused;
- `rollback`: the self-test fails after the swap (a fault injected in the agent
  process, the one thing a real part does not produce on demand): rolled back;
- `fail`: the store serves a tampered bundle (same signed metadata): failed.

`run_agent` runs one `check_once` in a forked process (imports already warm,
so a run costs the update, not an interpreter start-up) and kills it with
SIGKILL: on entering a state, a given time after entering it, a given time
after start (`start`), or inside the candidate's slot write (`slot_write`:
the write is throttled through `slots.after_slot_piece`, the agent's own
write path, and the kill is timed from its first piece).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch

from device_agent.agent import Agent, active_model_file, load_config
from device_agent.agent.config import AgentConfig
from device_agent.agent.log import null_log
from device_agent.agent.slots import SLOTS, model_path
from device_agent.agent.state import load_state
from device_agent.atomic import temp_files
from device_agent.device_model import DeviceModel
from device_agent.errors import OtaError
from device_agent.model_format import load_model

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("commit", "refuse", "rollback", "fail")
SCENARIO_END = {"commit": "new", "refuse": "old", "rollback": "old", "fail": "old"}
FAULTS = {"rollback": "self_test"}
SLOT_PIECE_SECONDS = 0.02  # the throttle per piece of a slot write aimed at (slots.SLOT_WRITE_PIECES pieces)


@dataclass
class CrashSetup:
    tmp: Path
    configs: dict[str, AgentConfig]
    old: tuple[int, str]  # (version, content hash) of v1
    new: tuple[int, str]  # of v2
    bundle_bytes: int

    @property
    def allowed(self) -> set[tuple[int, str]]:
        return {self.old, self.new}


@dataclass
class Run:
    code: int  # 0; 1 on an exception; -9 when killed
    entered: list[tuple[str, float]] = field(default_factory=list)  # (state entered, seconds since start)
    slot_pieces: list[float] = field(default_factory=list)  # seconds since start of each slot-write piece

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL


def crash_model() -> DeviceModel:
    """Small, with rows of >= 16 entries, blank-only decoding (fast, WER 1.0)."""
    from device_agent.features import FeatureConfig
    from device_agent.model_config import ModelConfig
    from tests.tiny import tiny_device_model

    cfg = ModelConfig(features=FeatureConfig(n_mels=16, stack=1), enc_hidden=64, enc_layers=1, embed_dim=16,
                      pred_hidden=64, joint_dim=64)
    base = tiny_device_model(0, cfg, 0.5)
    base.floats["joint.out.bias"][0] = 1000.0
    return base


def build(tmp: Path) -> CrashSetup:
    """Repository (and a tampered copy), the template device with v1, one config per scenario."""
    import numpy as np

    from device_agent.diff import Diff, SparseDelta, apply_diff
    from device_agent.model_format import encode_model
    from device_agent.store import FileStore
    from packager.bundle import encode_diff_bundle, encode_full_bundle
    from packager.publish import publish_bundle
    from packager.trust import init_repository

    base = crash_model()
    store = FileStore(tmp / "store")
    (tmp / "store").mkdir()
    (tmp / "root.json").write_bytes(init_repository(store, tmp / "keys"))
    utt = ROOT / "samples" / "audio"
    (tmp / "val.jsonl").write_text("".join(json.dumps({"audio_filepath": str(utt / f"sample_0{i}.wav"),
                                                       "text": "turn on the light", "duration": 1.5}) + "\n"
                                           for i in range(2)))
    publish_bundle(store, tmp / "keys", encode_full_bundle(encode_model(base), base))
    common = dict(env={}, model_id=base.model_id, device_id="crash", trust_root=tmp / "root.json",
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
    return CrashSetup(tmp, configs, (1, base.content_hash()), (2, new.content_hash()), len(bundle))


def device(setup: CrashSetup, scenario: str, name: str) -> tuple[Path, Path]:
    """A copy of the template device (v1 active) and its config file -> (data_dir, toml).
    `name` is also its device id, so its reports are its own."""
    cfg = setup.configs[scenario]
    data = setup.tmp / name
    shutil.copytree(cfg.data_dir, data)
    toml = setup.tmp / f"{name}.toml"
    doc = {**cfg.to_json(), "data_dir": str(data), "device_id": name}
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in doc.items() if v is not None))
    return data, toml


def _child(toml: Path, target: str, delay: float | None, fault: str, throttle: bool, out: IO[str]) -> int:
    """The agent process: one check_once, killed with SIGKILL as `target` and `delay` say."""
    import device_agent.agent.slots as slots

    started = time.monotonic()

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def kill_after(seconds: float | None) -> None:
        if seconds is None:
            die()  # now, in this thread
        else:
            threading.Timer(seconds, die).start()

    def observer(state, st) -> None:
        out.write(f"state {state.value} {time.monotonic() - started:.4f}\n")
        out.flush()
        if state.value == target:
            kill_after(delay)

    if throttle or target == "slot_write":
        first: list[float] = []

        def throttled(done: int, total: int) -> None:
            out.write(f"slot_piece {time.monotonic() - started:.4f}\n")
            out.flush()
            if target == "slot_write" and not first:
                first.append(time.monotonic())
                kill_after(delay)  # timed from the write's first piece
            if done < total:
                time.sleep(SLOT_PIECE_SECONDS)

        slots.after_slot_piece = throttled
    if fault == "self_test":  # a candidate that breaks after activation
        from device_agent.agent.validate import Validator
        from device_agent.errors import ModelFormatError

        def broken(self, model_file, content_hash):
            raise ModelFormatError("self-test: injected failure")

        Validator.self_test = broken
    agent = Agent(load_config(toml), observer=observer, log=null_log)
    if target == "start":
        kill_after(delay)
    agent.check_once(raise_errors=False)
    return 0


def run_agent(toml: Path, target: str = "", delay: float | None = None, fault: str = "",
              throttle_slot_write: bool = False) -> Run:
    """One agent process over `toml`'s device. `target`: a state name (killed on entering it, or
    `delay` s later), "start" (`delay` s after start), "slot_write" (`delay` s into the candidate's
    throttled slot write) or "" (not killed). `fault`: "self_test" makes the self-test fail."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 1
        # A forked child must not enter the parent's OpenMP thread pool: its workers are not copied by
        # fork, and torch's first parallel op (the front end's FFT) would wait for them forever.
        torch.set_num_threads(1)
        try:
            with os.fdopen(wfd, "w") as out:
                code = _child(toml, target, delay, fault, throttle_slot_write, out)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    run = Run(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    for words in (line.split() for line in text.splitlines()):
        if words and words[0] == "state":
            run.entered.append((words[1], float(words[2])))
        elif words and words[0] == "slot_piece":
            run.slot_pieces.append(float(words[1]))
    return run


def durations(entered: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds spent in each state entered (the last one: until exit, taken as 0.05 s)."""
    out: dict[str, float] = {}
    for (state, t), nxt in zip(entered, entered[1:] + [(None, entered[-1][1] + 0.05)]):
        out[state] = out.get(state, 0.0) + nxt[1] - t
    return out


def active_version(data: Path, allowed: set[tuple[int, str]]) -> tuple[int, str] | None:
    """(version, hash) if the active model loads, hashes to what the pointer says and is one of
    `allowed`; None = corrupt (or no active model)."""
    try:
        found = active_model_file(data)
        if found is None:
            return None
        path, ref = found
        got = (ref.version, load_model(path).content_hash())
    except OtaError:
        return None
    return got if got in allowed and got[1] == ref.hash else None


def slot_write_interrupted(data: Path) -> bool:
    """A candidate's slot write was cut short: its temp file is still there."""
    return any(temp_files(model_path(data, slot)) for slot in SLOTS)


def converged(setup: CrashSetup, scenario: str, data: Path) -> bool:
    """The device is where the scenario ends: the right model active, idle, the version refused
    (refuse, rollback) or the error recorded (fail), no temp file left in the slots."""
    st = load_state(data)
    want = setup.old if SCENARIO_END[scenario] == "old" else setup.new
    if active_version(data, setup.allowed) != want or st.state.value != "idle" or slot_write_interrupted(data):
        return False
    if scenario in ("refuse", "rollback"):
        return 2 in st.refused
    if scenario == "fail":
        return st.last_error is not None
    return True
