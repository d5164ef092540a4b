"""A signed model that never emits blank: refused by the WER gate within its bounds,
never retried; the daemon stops on SIGTERM within seconds, even mid-gate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.agent import Agent, active_model_file, load_config
from device_agent.agent.log import null_log
from device_agent.agent.state import load_state
from device_agent.agent.validate import Validator
from device_agent.errors import DecodeBoundError
from device_agent.model_format import encode_model, load_model
from packager.bundle import encode_full_bundle
from packager.publish import publish_bundle
from device_agent.store import FileStore
from packager.trust import init_repository
from tests.test_hostile_inputs import never_blank_model
from tests.tiny import tiny_device_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "audio"


def blank_model(version: int):
    """The never-blank model's config, but blank always wins: fast, deterministic decoding."""
    model = never_blank_model(version)
    model.floats["joint.out.bias"][:] = 0.0
    model.floats["joint.out.bias"][0] = 1000.0
    return model


def _manifest(path: Path, lines: int) -> Path:
    path.write_text("".join(json.dumps({"audio_filepath": str(SAMPLES / f"sample_0{i % 4}.wav"),
                                        "text": "turn on the light", "duration": 1.5}) + "\n"
                            for i in range(lines)))
    return path


def _device(tmp_path: Path, update):
    store = FileStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "root.json").write_bytes(init_repository(store, tmp_path / "keys"))
    v1 = blank_model(1)
    publish_bundle(store, tmp_path / "keys", encode_full_bundle(encode_model(v1), v1))
    cfg = load_config(None, env={}, store_url=f"file://{tmp_path / 'store'}", model_id=v1.model_id,
                      device_id="d1", data_dir=tmp_path / "device", trust_root=tmp_path / "root.json",
                      validation_manifest=_manifest(tmp_path / "val.jsonl", 2), max_wer=5.0,
                      max_wer_regression=5.0, poll_interval=0.0, poll_jitter=0.0)
    assert Agent(cfg, log=null_log).check_once()["outcome"] == "committed"
    publish_bundle(store, tmp_path / "keys", encode_full_bundle(encode_model(update), update))
    return cfg, (v1.version, v1.content_hash())


def _active(data_dir: Path) -> tuple[int, str]:
    path, ref = active_model_file(data_dir)
    assert load_model(path).content_hash() == ref.hash
    return ref.version, ref.hash


def test_never_blank_update_is_refused_like_a_failed_gate_and_never_retried(tmp_path: Path) -> None:
    cfg, v1 = _device(tmp_path, never_blank_model(2))
    agent = Agent(cfg, log=null_log)
    out = agent.check_once()
    assert out["outcome"] == "refused", out
    st = load_state(cfg.data_dir)
    assert 2 in st.refused and st.state.value == "idle"
    assert _active(cfg.data_dir) == v1
    assert agent.check_once()["outcome"] == "no_update"  # never retried
    reports = [json.loads(p.read_text()) for p in (tmp_path / "store" / "reports").rglob("*.json")]
    report = next(r for r in reports if r.get("to_version") == 2)
    assert report["outcome"] == "refused" and "symbols" in report["gate_reasons"][0]


def test_gate_time_budget_refuses_a_slow_model(tmp_path: Path) -> None:
    model = tiny_device_model(0)
    path = tmp_path / "m.otam"
    path.write_bytes(encode_model(model))
    validator = Validator(_manifest(tmp_path / "val.jsonl", 2), tmp_path / "cache.json", budget=(0.0, 0.0))
    with pytest.raises(DecodeBoundError, match="budget of 0.0 s for 3.0 s of audio"):
        validator.wer(path, model.content_hash())
    assert not (tmp_path / "cache.json").exists()  # a refusal is not a WER to remember


def test_daemon_stops_on_sigterm_within_seconds_while_the_gate_decodes(tmp_path: Path) -> None:
    # a legal update whose gate takes long: 400 utterances of blank-only decoding
    cfg, v1 = _device(tmp_path, blank_model(2))
    _manifest(cfg.validation_manifest, 400)
    toml = tmp_path / "agent.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.to_json().items() if v is not None))
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "agent", "run", "--config", str(toml)], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for line in proc.stderr:  # JSON log lines
            if json.loads(line).get("to") == "validating":
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 143)
    assert _active(cfg.data_dir) == v1
    assert load_state(cfg.data_dir).state.value == "validating"  # resumes there on the next start
