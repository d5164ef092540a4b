"""Crash safety of the device agent: SIGKILL at random moments of an update, restart, repeat.

Each trial copies a device that runs v1, starts `Agent.check_once` in a fresh
process (the update to v2 is published), kills it with SIGKILL at a uniform
random time within one update's duration, then restarts it (up to 10 times,
no more kills) until it exits cleanly. After every kill and every restart the
active model must load and hash to v1 or v2 (else: corrupt); at the end it
must be v2 (converged). Kill times are spread over the update by measuring one
uninterrupted run first. Uses a tiny model and a file store: the store is not
under test here, the lifecycle and the file writes are.

    python bench/crash_agent.py --trials 100
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import FSDD, ROOT, write_results  # noqa: E402
from device_agent.agent import Agent, active_model_file, load_config  # noqa: E402
from device_agent.agent.log import null_log  # noqa: E402
from device_agent.agent.state import load_state  # noqa: E402
from device_agent.diff import Diff, SparseDelta, apply_diff  # noqa: E402
from device_agent.errors import OtaError  # noqa: E402
from device_agent.model_format import encode_model, load_model  # noqa: E402
from packager.bundle import encode_diff_bundle, encode_full_bundle  # noqa: E402
from packager.publish import publish_bundle  # noqa: E402
from packager.store import FileStore  # noqa: E402
from packager.trust import init_repository  # noqa: E402

DRIVER = """
import json, sys
from device_agent.agent import Agent, load_config
from device_agent.agent.log import null_log
import device_agent.runtime, device_agent.wer, device_agent.audio  # loaded before 'ready'
agent = Agent(load_config(sys.argv[1]), log=null_log)
print('ready', flush=True)
print(json.dumps(agent.check_once()), flush=True)
"""


def setup(tmp: Path):  # -> (config, old, new)
    import numpy as np
    from tests.tiny import tiny_device_model

    base = tiny_device_model(0)
    base.floats["joint.out.bias"][0] = 1000.0  # blank-only decoding: fast, deterministic WER 1.0
    (tmp / "store").mkdir()
    store = FileStore(tmp / "store")
    (tmp / "root.json").write_bytes(init_repository(store, tmp / "keys"))
    words = "zero one".split()
    (tmp / "val.jsonl").write_text("".join(json.dumps({"audio_filepath": str(FSDD / f"{d}_jackson_0.wav"),
                                                       "text": words[d], "duration": 0.5}) + "\n" for d in range(2)))
    publish_bundle(store, tmp / "keys", encode_full_bundle(encode_model(base), base))
    cfg = load_config(None, env={}, store_url=f"file://{tmp / 'store'}", model_id=base.model_id, device_id="bench",
                      data_dir=tmp / "template", trust_root=tmp / "root.json", validation_manifest=tmp / "val.jsonl",
                      max_wer=5.0, chunk_size=4096, retry_backoff=0.05, poll_interval=0.0, poll_jitter=0.0)
    Agent(cfg, log=null_log).check_once()
    rng = np.random.default_rng(1)
    name = "encoder.weight_hh_l0"
    positions = np.sort(rng.choice(base.weights[name].q.size, 40, replace=False))
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                {name: SparseDelta(positions, rng.choice([-2, -1, 1, 2], 40).astype(np.int8))})
    new = apply_diff(base, diff, check_hashes=False)
    diff.target_hash = new.content_hash()
    publish_bundle(store, tmp / "keys", encode_diff_bundle(diff, base))
    return cfg, ("1", base.content_hash()), ("2", new.content_hash())


def device(tmp: Path, cfg, name: str) -> tuple[Path, Path]:
    data = tmp / name
    shutil.copytree(cfg.data_dir, data)
    toml = tmp / f"{name}.toml"
    doc = {**cfg.to_json(), "data_dir": str(data)}
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in doc.items() if v is not None))
    return data, toml


def run(toml: Path, kill_after: float | None) -> tuple[int, float]:
    """-> (exit code, seconds from 'ready' to exit)."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(toml)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    ready = time.monotonic()
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    return proc.returncode, time.monotonic() - ready


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-agent-") as d:
        tmp = Path(d)
        cfg, old, new = setup(tmp)
        allowed = {old, new}
        data, toml = device(tmp, cfg, "calibrate")
        code, span = run(toml, None)
        assert code == 0 and active_version(data, allowed) == new
        data, toml = device(tmp, cfg, "calibrate-warm")  # the first run warms disk caches: take the faster
        code, warm = run(toml, None)
        assert code == 0 and active_version(data, allowed) == new
        span = min(span, warm)
        counts = Counter()
        killed_in: Counter = Counter()
        started = time.monotonic()
        for trial in range(args.trials):
            data, toml = device(tmp, cfg, f"t{trial}")
            code, _ = run(toml, rng.uniform(0.0, span))
            counts["killed" if code == -signal.SIGKILL else "finished_before_kill"] += 1
            if code == -signal.SIGKILL:
                killed_in[load_state(data).state.value] += 1  # the last state persisted before the kill
            if active_version(data, allowed) is None:
                counts["corrupt"] += 1
            for _ in range(10):
                code, _ = run(toml, None)
                if active_version(data, allowed) is None:
                    counts["corrupt"] += 1
                if code == 0:
                    break
                counts["restart_errors"] += 1
            counts["converged"] += active_version(data, allowed) == new
            shutil.rmtree(data)
            print(f"trial {trial + 1}/{args.trials}: {dict(counts)}", flush=True)
    result = {"trials": args.trials, "corrupt": counts["corrupt"], "converged": counts["converged"],
              "killed": counts["killed"], "finished_before_kill": counts["finished_before_kill"],
              "restart_errors": counts["restart_errors"], "state_at_kill": dict(sorted(killed_in.items())),
              "update_seconds": round(span, 3), "wall_seconds": round(time.monotonic() - started, 1),
              "command": f"python bench/crash_agent.py --trials {args.trials} --seed {args.seed}"}
    print(json.dumps(result, indent=1))
    write_results("crash_agent", result)


if __name__ == "__main__":
    main()
