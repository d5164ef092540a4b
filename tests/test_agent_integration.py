"""The device agent end to end: a real TUF repository in SeaweedFS (or a file store
where the store is not the subject), real bundles, real slots (kills: tests/test_agent_crash.py).

Model source: the trained model `models/base-v1.otam` with `samples/validation.jsonl`
when present; until then a tiny random model biased to emit blanks (so it decodes
fast and deterministically: WER 1.0) with FSDD digit recordings.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.agent import Agent, active_model_file, load_config
from device_agent.agent.log import null_log
from device_agent.agent.state import load_state
from device_agent.agent.validate import Validator
from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.channels import channel_target_name
from device_agent.errors import (ConfigError, DiskFullError, ModelFormatError, OtaError,
                                 StoreUnreachableError, TrustError, WrongBaseError)
from device_agent.model_config import ModelConfig
from device_agent.model_format import encode_model, load_model
from packager.bundle import encode_diff_bundle, encode_full_bundle
from packager.fleet_status import fleet_summary
from packager.publish import publish_bundle, read_channel, set_rollout
from device_agent.store import FileStore, S3Store, Store
from packager.trust import init_repository, publish_target
from tests.tiny import tiny_device_model

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "base-v1.otam"
SAMPLES = ROOT / "samples" / "validation.jsonl"
FSDD = ROOT / "tests" / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


# --- models, repositories, devices ---------------------------------------------------------
@dataclass
class Models:
    base: DeviceModel
    manifest: Path
    trained: bool
    gate: dict


def _blank_biased(model: DeviceModel) -> DeviceModel:
    # Blank wins every frame: fast, deterministic decoding (empty text, WER 1.0). A random model
    # would emit up to 5 symbols per frame and take seconds per utterance on this machine.
    model.floats["joint.out.bias"][0] = 1000.0
    return model


def _fsdd_manifest(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"audio_filepath": str(FSDD / f"{d}_jackson_0.wav"), "text": WORDS[d], "duration": 0.5})
             for d in range(n)]
    (folder / "validation.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "validation.jsonl"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    if TRAINED.is_file() and SAMPLES.is_file():
        return Models(load_model(TRAINED), SAMPLES, True, {"max_wer": 0.9, "max_wer_regression": 0.05})
    manifest = _fsdd_manifest(tmp_path_factory.mktemp("val"), 2)
    return Models(_blank_biased(tiny_device_model(0)), manifest, False, {"max_wer": 5.0, "max_wer_regression": 0.05})


@pytest.fixture(scope="module")
def big_model(models: Models) -> DeviceModel:
    """About 1.2-1.4 MB on disk: enough bytes for chunked downloads and a tmpfs to run out."""
    if models.trained:
        return models.base
    return _blank_biased(tiny_device_model(0, ModelConfig(), 0.5))


def make_diff(base: DeviceModel, seed: int, *, count: int = 20, magnitude: int = 2,
              tensor: str = "encoder.weight_hh_l0", version: int | None = None) -> Diff:
    rng = np.random.default_rng(seed)
    w = base.weights[tensor]
    positions = np.sort(rng.choice(w.q.size, min(count, w.q.size), replace=False))
    values = rng.integers(1, magnitude + 1, positions.size) * rng.choice([-1, 1], positions.size)
    diff = Diff("sparse", base.model_id, base.version, version or base.version + 1, base.content_hash(), "",
                {tensor: SparseDelta(positions, values.astype(np.int8))})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def bad_diff(base: DeviceModel, seed: int = 99) -> Diff:
    """Large random deltas on every entry of the output layer: the model emits garbage."""
    w = base.weights["joint.out.weight"]
    return make_diff(base, seed, count=w.q.size, magnitude=120, tensor="joint.out.weight")


@dataclass
class Repo:
    store: Store
    keys: Path
    root: Path

    def full(self, model: DeviceModel, **kw) -> None:
        publish_bundle(self.store, self.keys, encode_full_bundle(encode_model(model), model), **kw)

    def diff(self, diff: Diff, base: DeviceModel, **kw) -> DeviceModel:
        publish_bundle(self.store, self.keys, encode_diff_bundle(diff, base), **kw)
        return apply_diff(base, diff)


def make_repo(store: Store, tmp_path: Path) -> Repo:
    root = init_repository(store, tmp_path / "keys")
    (tmp_path / "root.json").write_bytes(root)
    return Repo(store, tmp_path / "keys", tmp_path / "root.json")


def agent_config(tmp_path: Path, url: str, models: Models, model_id: str | None = None, **kw):
    values = dict(store_url=url, model_id=model_id or models.base.model_id, device_id="dev-1",
                  data_dir=tmp_path / "device", trust_root=tmp_path / "root.json",
                  validation_manifest=models.manifest, retry_backoff=0.05, retry_backoff_max=0.2,
                  poll_interval=0.0, poll_jitter=0.0, chunk_size=64 << 10, **models.gate)
    values.update(kw)
    return load_config(None, env={}, **values)


def s3_url(store: S3Store) -> str:
    return f"s3://{store.bucket}/repo?endpoint={store.endpoint_url}"


def active(data_dir: Path) -> tuple[str, str]:
    """(version, hash) of the active model, after loading it fully: the device-level invariant."""
    found = active_model_file(data_dir)
    assert found is not None, "no active model"
    path, ref = found
    assert load_model(path).content_hash() == ref.hash
    return ref.version, ref.hash


def reports(store: Store) -> list[dict]:
    return [json.loads(store.get(k)) for k in store.list("reports/")]


# --- the main flows -------------------------------------------------------------------------
def test_install_base_update_through_diff_and_transcribe(s3_store: S3Store, tmp_path: Path, models: Models) -> None:
    from device_agent.audio import load_audio
    from device_agent.runtime import Int8Runtime

    repo = make_repo(s3_store, tmp_path)
    base = models.base
    repo.full(base)
    v2 = repo.diff(make_diff(base, 1), base, expected_wer=None)
    agent = Agent(agent_config(tmp_path, s3_url(s3_store), models), store=s3_store, log=null_log)

    out = agent.check_once()  # full bundle, then the diff: two gated, committed hops
    assert out["outcome"] == "committed" and out["to_version"] == v2.version
    assert active(agent.data) == (v2.version, v2.content_hash())
    status = agent.status()
    assert status["previous"]["version"] == base.version and status["state"] == "idle"
    path, _ = active_model_file(agent.data)
    utt = Validator(models.manifest, tmp_path / "c.json").utterances()[0]
    assert isinstance(Int8Runtime.from_file(path).transcribe(load_audio(utt.audio_path)), str)
    done = [r for r in reports(s3_store) if r["outcome"] == "committed"]
    assert sorted(r["to_version"] for r in done) == sorted([base.version, v2.version])
    assert all(r["device_id"] == "dev-1" and r["durations"].get("validating", 0) > 0 for r in done)
    assert agent.check_once()["outcome"] == "no_update"


def test_the_attempt_record_ends_with_its_attempt(tmp_path: Path) -> None:
    """After a commit, a failed check reports none of that update's versions or WERs and adds no seconds to it."""
    # the blank-biased tiny model: its gate decodes in milliseconds, so a loaded machine cannot refuse it
    models = Models(_blank_biased(tiny_device_model(0)), _fsdd_manifest(tmp_path / "val", 2), False,
                    {"max_wer": 5.0, "max_wer_regression": 0.05})
    store = FileStore(_mkdir(tmp_path / "store"))
    repo = make_repo(store, tmp_path)
    repo.full(models.base)
    agent = Agent(agent_config(tmp_path, f"file://{tmp_path / 'store'}", models), log=null_log)
    assert agent.check_once()["outcome"] == "committed"
    assert agent.status()["update"] is None
    sent = len(reports(store))
    (tmp_path / "store").rename(tmp_path / "gone")  # the store disappears: the next check fails
    out = agent.check_once(raise_errors=False)
    assert out["outcome"] == "failed" and out["error_class"]
    assert (out["from_version"], out["to_version"], out["wer_before"], out["wer_after"]) == (None, None, None, None)
    st = load_state(agent.data)
    assert st.update is None and st.state.value == "idle" and st.last_outcome["to_version"] is None
    (tmp_path / "gone").rename(tmp_path / "store")
    assert len(reports(store)) == sent  # a failed check is no attempt: nothing reported


def test_bad_update_is_refused_reported_and_never_retried(s3_store: S3Store, tmp_path: Path, models: Models) -> None:
    repo = make_repo(s3_store, tmp_path)
    base = models.base
    repo.full(base)
    v2 = repo.diff(make_diff(base, 1), base)
    agent = Agent(agent_config(tmp_path, s3_url(s3_store), models), store=s3_store, log=null_log)
    assert agent.check_once()["outcome"] == "committed"
    good = active(agent.data)

    v3 = repo.diff(bad_diff(v2), v2, expected_wer=0.05)
    out = agent.check_once()
    assert out["outcome"] == "refused", out
    if models.trained:  # the scrambled output layer really raises WER
        assert out["wer_after"] > out["wer_before"] + 0.05
    # (the tiny stand-in decodes only blanks, WER 1.0 either way: the publisher's 0.05 claim refuses it)
    assert active(agent.data) == good  # the good version stays active
    assert not list((agent.data / "downloads").iterdir())  # candidate bundle discarded
    refused = [r for r in reports(s3_store) if r["outcome"] == "refused"]
    assert len(refused) == 1 and refused[0]["to_version"] == v3.version and refused[0]["gate_reasons"]

    again = agent.check_once()  # next poll: the refused version is not downloaded again
    assert again["outcome"] == "no_update" and "refused" in again["reason"]
    assert len(reports(s3_store)) == 3 and active(agent.data) == good
    rows = {r["version"]: r for r in fleet_summary(s3_store, base.model_id)["releases"]}
    assert rows[v3.version]["refused"] == 1 and rows[v2.version]["committed"] == 1


def test_self_test_failure_rolls_back_and_cli_rollback(tmp_path: Path, models: Models, monkeypatch) -> None:
    from cli.main import cli

    store = FileStore(_mkdir(tmp_path / "store"))
    repo = make_repo(store, tmp_path)
    base = models.base
    repo.full(base)
    config = agent_config(tmp_path, f"file://{tmp_path / 'store'}", models)
    agent = Agent(config, log=null_log)
    agent.check_once()
    v1 = active(agent.data)
    v2 = repo.diff(make_diff(base, 2), base)

    def broken(self, *a, **k):
        raise ModelFormatError("self-test: simulated crash of the new model")

    monkeypatch.setattr(Validator, "self_test", broken)
    out = agent.check_once()
    assert out["outcome"] == "rolled_back" and active(agent.data) == v1
    assert v2.version in agent.status()["refused"]
    monkeypatch.undo()

    v3 = repo.diff(make_diff(base, 3, version=base.version + 2), base)
    toml = tmp_path / "agent.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.to_json().items() if v is not None))
    runner = CliRunner()
    result = runner.invoke(cli, ["agent", "check-once", "--config", str(toml)])
    assert result.exit_code == 0 and json.loads(result.stdout)["outcome"] == "committed", result.output
    assert active(agent.data)[0] == v3.version
    result = runner.invoke(cli, ["agent", "rollback", "--config", str(toml)])
    assert result.exit_code == 0, result.output
    assert active(agent.data) == v1
    status = json.loads(runner.invoke(cli, ["agent", "status", "--config", str(toml)]).stdout)
    assert status["refused"] == [v2.version, v3.version] and status["previous"] is None
    result = runner.invoke(cli, ["agent", "rollback", "--config", str(toml)])  # nothing left to go back to
    assert result.exit_code == 11 and result.output.startswith("Error: LifecycleError")
    result = runner.invoke(cli, ["fleet", "status", "--store", f"file://{tmp_path / 'store'}", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)


def test_every_agent_command_has_an_example() -> None:
    from cli.main import cli

    for args in (["agent"], ["agent", "run"], ["agent", "check-once"], ["agent", "status"], ["agent", "rollback"],
                 ["fleet"], ["fleet", "status"]):
        out = CliRunner().invoke(cli, [*args, "--help"]).output
        assert "Example:" in out and "ota " in out.split("Example:")[1], args


def test_diff_for_another_base_fails_before_download(tmp_path: Path, models: Models) -> None:
    store = FileStore(_mkdir(tmp_path / "store"))
    repo = make_repo(store, tmp_path)
    base = models.base
    repo.full(base)
    agent = Agent(agent_config(tmp_path, f"file://{tmp_path / 'store'}", models), log=null_log)
    agent.check_once()
    before = active(agent.data)
    other = apply_diff(base, make_diff(base, 5))  # same id and version, different weights
    other.version = base.version
    # The channel re-released version 1 as another model, so the publisher's base-hash check accepts a diff
    # from either; the device must still refuse the one that does not start from its own model.
    repo.full(other)
    repo.diff(make_diff(other, 6), other)
    with pytest.raises(WrongBaseError, match="the active model is"):
        agent.check_once()
    assert active(agent.data) == before
    st = load_state(agent.data)
    assert st.state.value == "idle" and st.last_error["class"] == "WrongBaseError"
    assert not (agent.data / "downloads").exists() or not list((agent.data / "downloads").iterdir())


def test_a_signed_channel_with_a_dotted_version_is_refused_and_the_model_kept(tmp_path: Path,
                                                                             models: Models) -> None:
    """Versions are integers on every path: a channel saying "1.3" is the project's one-line error."""
    store = FileStore(_mkdir(tmp_path / "store"))
    repo = make_repo(store, tmp_path)
    repo.full(models.base)
    agent = Agent(agent_config(tmp_path, f"file://{tmp_path / 'store'}", models), log=null_log)
    assert agent.check_once()["outcome"] == "committed"
    before = active(agent.data)
    name = channel_target_name(models.base.model_id, "stable")
    doc = json.loads(read_channel(store, repo.keys, models.base.model_id, "stable").to_json())
    publish_target(store, repo.keys, name, json.dumps({**doc, "current_version": "1.3"}).encode(),
                   {"kind": "channel", "model_id": models.base.model_id, "channel": "stable", "version": "1.3"})
    with pytest.raises(ConfigError, match=r"^channel current_version '1.3' must be an integer in \[0, 2\^53\]"):
        agent.check_once()
    assert active(agent.data) == before
    st = load_state(agent.data)
    assert st.state.value == "idle" and st.last_error["class"] == "ConfigError"


# --- hostile store -------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ["wrong_signature", "replayed_metadata", "oversized_bundle", "swapped_bundle"])
def test_hostile_store_never_changes_the_active_model(attack: str, s3_store: S3Store, tmp_path: Path,
                                                      models: Models) -> None:
    repo = make_repo(s3_store, tmp_path)
    base = models.base
    repo.full(base)
    agent = Agent(agent_config(tmp_path, s3_url(s3_store), models), store=s3_store, log=null_log)
    agent.check_once()
    before = active(agent.data)
    model_bytes = (agent.data / "slots" / "a" / "model.otam").read_bytes()
    old_timestamp = s3_store.get("metadata/timestamp.json")
    repo.diff(make_diff(base, 7), base, rollout_percent=0.0)  # seen by the device, but not for it yet
    assert agent.check_once()["outcome"] == "no_update"
    set_rollout(s3_store, repo.keys, base.model_id, "stable", 100.0)

    bundle_key = next(k for k in s3_store.list("targets/bundles/") if "1-2-" in k.rsplit("/", 1)[-1] and k.endswith(".otab"))
    if attack == "wrong_signature":
        doc = json.loads(s3_store.get("metadata/timestamp.json"))
        doc["signed"]["version"] += 1  # changed without the timestamp key
        s3_store.put("metadata/timestamp.json", json.dumps(doc).encode())
    elif attack == "replayed_metadata":
        s3_store.put("metadata/timestamp.json", old_timestamp)
    elif attack == "oversized_bundle":
        s3_store.put(bundle_key, s3_store.get(bundle_key) + b"\0" * 100_000)
    elif attack == "swapped_bundle":  # same length, other bytes
        data = bytearray(s3_store.get(bundle_key))
        data[-1] ^= 0xFF
        s3_store.put(bundle_key, bytes(data))
    with pytest.raises(TrustError):
        agent.check_once()
    assert active(agent.data) == before
    assert (agent.data / "slots" / "a" / "model.otam").read_bytes() == model_bytes
    assert not (agent.data / "slots" / "b" / "model.otam").exists()
    assert load_state(agent.data).state.value == "idle"


# --- store outage ----------------------------------------------------------------------------------
class OutageStore:
    """Passes calls to a store; after `after` bundle chunks, runs `outage()` once (stops the server)."""

    def __init__(self, store: Store, after: int, outage) -> None:
        self.store, self.after, self.outage = store, after, outage
        self.chunk_bytes = 0  # bundle bytes served, over all runs
        self.calls = 0

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if key.startswith("targets/bundles/"):
            self.calls += 1
            if self.calls == self.after + 1 and self.outage:
                self.outage()
                self.outage = None
            data = self.store.get_range(key, start, end)
            self.chunk_bytes += len(data)
            return data
        return self.store.get_range(key, start, end)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_store_outage_mid_download_resumes_with_at_most_one_chunk_again(tmp_path: Path, models: Models,
                                                                        big_model: DeviceModel) -> None:
    from demo.seaweed import SeaweedServer

    server = SeaweedServer(tmp_path / "weed")
    endpoint = server.start()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                     aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region).create_bucket(Bucket="ota")
        s3 = S3Store("ota", "repo", endpoint_url=endpoint.endpoint_url, access_key=endpoint.access_key,
                     secret_key=endpoint.secret_key)
        repo = make_repo(s3, tmp_path)
        repo.full(big_model)
        chunk = 64 << 10
        store = OutageStore(s3, after=5, outage=server.stop)
        cfg = agent_config(tmp_path, "s3://ota/repo", models, model_id=big_model.model_id, chunk_size=chunk,
                           retry_limit=2)
        agent = Agent(cfg, store=store, log=null_log)
        with pytest.raises(StoreUnreachableError):
            agent.check_once()
        part = next((agent.data / "downloads").glob("*.part"))
        assert part.stat().st_size == 5 * chunk  # every completed chunk kept
        assert active_model_file(agent.data) is None
        server.start()
        out = agent.check_once()
        assert out["outcome"] == "committed"
        assert active(agent.data) == (big_model.version, big_model.content_hash())
        report = next(r for r in reports(s3) if r["outcome"] == "committed")
        length = report["length"]
        assert report["resumed_from"] == 5 * chunk
        assert report["bytes_refetched"] <= chunk  # the chunk in flight when the store went away
        assert store.chunk_bytes <= length + chunk and report["bytes_downloaded"] <= length + chunk
    finally:
        server.stop()


# --- disk full ------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    filler = mount / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def test_a_failed_check_keeps_the_failed_download_to_resume(tmp_path: Path, models: Models,
                                                           big_model: DeviceModel) -> None:
    """A download cut by an outage keeps its record for the retry; a check failing while the store is
    still away made no attempt, so it leaves that record alone; the retry resumes and counts both runs."""
    store = FileStore(_mkdir(tmp_path / "store"))
    make_repo(store, tmp_path).full(big_model)
    chunk = 64 << 10
    cfg = agent_config(tmp_path, f"file://{tmp_path / 'store'}", models, model_id=big_model.model_id,
                       chunk_size=chunk, retry_limit=1)
    agent = Agent(cfg, store=OutageStore(store, after=3, outage=lambda: (tmp_path / "store").rename(tmp_path / "gone")),
                  log=null_log)
    with pytest.raises(OtaError):
        agent.check_once()  # the store went away after 3 chunks of the download
    st = load_state(agent.data)
    assert st.last_error["state"] == "downloading" and st.update is None
    kept = st.resume
    assert kept is not None and kept.bytes_downloaded == 3 * chunk
    with pytest.raises(OtaError):
        agent.check_once()  # the store is still away: the check itself fails
    st = load_state(agent.data)
    assert st.last_error["state"] == "checking" and st.resume == kept
    (tmp_path / "gone").rename(tmp_path / "store")
    assert agent.check_once()["outcome"] == "committed"
    report = next(r for r in reports(store) if r["outcome"] == "committed")
    assert report["resumed_from"] == 3 * chunk and report["length"] <= report["bytes_downloaded"] <= \
        report["length"] + chunk


@pytest.mark.parametrize("stage", ["download", "apply"])
def test_disk_full_is_a_clear_error_and_the_active_model_survives(stage: str, tmp_path: Path, tmpfs: Path,
                                                                  models: Models, big_model: DeviceModel) -> None:
    store = FileStore(_mkdir(tmp_path / "store"))
    repo = make_repo(store, tmp_path)
    repo.full(big_model)
    cfg = agent_config(tmp_path, f"file://{tmp_path / 'store'}", models, model_id=big_model.model_id,
                       data_dir=tmpfs / "device")
    agent = Agent(cfg, log=null_log)
    assert agent.check_once()["outcome"] == "committed"
    before = active(agent.data)
    if stage == "download":  # a new full model: the download itself does not fit
        v2 = apply_diff(big_model, make_diff(big_model, 11))
        repo.full(v2)
    else:  # a small diff downloads fine; writing the candidate model does not fit
        v2 = repo.diff(make_diff(big_model, 11), big_model)
    filler = _fill(tmpfs, leave=300 << 10)
    with pytest.raises(DiskFullError, match="no space left"):
        agent.check_once()
    assert active(agent.data) == before
    st = load_state(agent.data)
    assert st.state.value == "idle" and st.last_error["class"] == "DiskFullError"
    assert st.last_error["state"] == ("downloading" if stage == "download" else "applying")
    filler.unlink()
    assert agent.check_once()["outcome"] == "committed"  # with space back, the update goes through
    assert active(agent.data) == (v2.version, v2.content_hash())


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_daemon_loop_holds_the_lock_and_stops_on_request(tmp_path: Path, models: Models) -> None:
    from device_agent.errors import AgentBusyError

    store = FileStore(_mkdir(tmp_path / "store"))
    make_repo(store, tmp_path).full(models.base)
    cfg = agent_config(tmp_path, f"file://{tmp_path / 'store'}", models)
    lines: list[dict] = []
    agent = Agent(cfg, log=lambda event, level="info", **f: lines.append({"event": event, **f}))
    other = Agent(cfg, log=null_log)

    def busy_then_stop(state, st) -> None:  # a CLI command while the daemon works is refused
        if state.value == "idle":
            with pytest.raises(AgentBusyError):
                other.check_once()
            agent.stop()

    agent.observer = busy_then_stop
    agent.run(install_signals=False, max_cycles=5)
    assert active(agent.data)[0] == models.base.version
    assert [line["event"] for line in lines][0] == "agent_started" and lines[-1]["event"] == "agent_stopped"
    assert other.check_once()["outcome"] == "no_update"  # lock released on exit
