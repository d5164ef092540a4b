"""Device heartbeats and `ota fleet status`: every check leaves a bounded record; an
expired repository shows up as "metadata expired"; hostile records are skipped and counted."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from device_agent.agent import Agent, load_config
from device_agent.agent.heartbeat import MAX_HEARTBEAT_BYTES, Heartbeat, HeartbeatSender, heartbeat_key
from device_agent.agent.log import null_log
from device_agent.model_format import encode_model
from packager import trust
from packager.bundle import encode_full_bundle
from packager.fleet_status import MAX_REPORT_BYTES, fleet_summary
from packager.publish import publish_bundle
from device_agent.store import FileStore, S3Store
from tests.support import HOUR, SimClock, fast_expiry
from tests.tiny import tiny_device_model

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = fast_expiry()


def _device(tmp_path: Path, store: S3Store, clock: SimClock) -> Agent:
    model = tiny_device_model(0)
    model.floats["joint.out.bias"][0] = 1000.0  # decodes only blanks: fast and deterministic
    root = trust.init_repository(store, tmp_path / "keys", expiry=FAST)
    (tmp_path / "root.json").write_bytes(root)
    publish_bundle(store, tmp_path / "keys", encode_full_bundle(encode_model(model), model))
    manifest = tmp_path / "validation.jsonl"
    first = json.loads((SAMPLES / "validation.jsonl").read_text().splitlines()[0])
    first["audio_filepath"] = str(SAMPLES / first["audio_filepath"])
    manifest.write_text(json.dumps(first) + "\n")
    cfg = load_config(None, env={}, store_url=f"s3://{store.bucket}/repo?endpoint={store.endpoint_url}",
                      model_id=model.model_id, device_id="kitchen-1", data_dir=tmp_path / "device",
                      trust_root=tmp_path / "root.json", validation_manifest=manifest, max_wer=5.0,
                      poll_interval=0.0, poll_jitter=0.0, retry_backoff=0.01)
    return Agent(cfg, store=store, log=null_log, clock=clock)


def _beat(store, agent: Agent) -> dict:
    return json.loads(store.get(heartbeat_key(agent.cfg.model_id, agent.cfg.channel, agent.cfg.device_id)))


def test_heartbeats_report_expired_metadata_until_refresh_runs(s3_store: S3Store, seaweed, tmp_path: Path) -> None:
    clock = SimClock()
    agent = _device(tmp_path, s3_store, clock)
    first = agent.check_once()
    assert first["outcome"] == "committed", first
    beat = _beat(s3_store, agent)
    assert (beat["version"], beat["state"], beat["consecutive_failures"]) == (1, "committed", 0)
    assert beat["metadata_expires"] is not None

    clock.now += 3 * HOUR  # nobody publishes or refreshes for three timestamp lifetimes
    for expected in (1, 2):
        assert agent.check_once(raise_errors=False)["outcome"] == "failed"
        beat = _beat(s3_store, agent)
        assert (beat["reason"], beat["consecutive_failures"]) == ("metadata expired", expected)
        assert beat["error_class"] == "MetadataExpiredError" and beat["version"] == 1
    summary = fleet_summary(s3_store, now=clock.now)
    assert summary["failing"]["by_reason"] == {"metadata expired": 1}
    assert summary["versions"] == {"tiny/stable": {"1": 1}}
    out = CliRunner(env={**seaweed.aws_env(), "COLUMNS": "200"}).invoke(
        cli, ["fleet", "status", "--store", agent.cfg.store_url])
    assert out.exit_code == 0, out.output
    assert "metadata expired" in out.output and "1 devices failing" in out.output

    trust.refresh_repository(s3_store, tmp_path / "keys", now=clock.now)  # the cron job comes back
    assert agent.check_once()["outcome"] == "no_update"
    assert _beat(s3_store, agent)["consecutive_failures"] == 0
    assert fleet_summary(s3_store, now=clock.now)["failing"]["devices"] == 0


def test_heartbeats_are_rate_limited_and_bounded(file_store: FileStore, tmp_path: Path) -> None:
    sender = HeartbeatSender(tmp_path / "hb.json", min_interval=600)
    beat = Heartbeat("d1", "m", "stable", 1000.0, 3, "no_update", metadata_expires="2030-01-01T00:00:00Z")
    assert sender.send(file_store, "heartbeats/m/stable/d1.json", beat)
    beat.at = 1300.0  # same content, 5 minutes later: not sent
    assert not sender.send(file_store, "heartbeats/m/stable/d1.json", beat)
    beat.state = "committed"  # a change goes out at once
    assert sender.send(file_store, "heartbeats/m/stable/d1.json", beat)
    beat.at = 2000.0  # unchanged, but the interval passed
    assert sender.send(file_store, "heartbeats/m/stable/d1.json", beat)
    huge = Heartbeat("d1", "m", "stable", 1.0, 3, "failed", "TrustError", "metadata refused", "x" * 100_000,
                     refused=list(range(1000)))
    data = huge.to_json()
    assert len(data) <= MAX_HEARTBEAT_BYTES and len(json.loads(data)["refused"]) == 8


def test_hostile_heartbeats_and_reports_are_counted_not_fatal(file_store: FileStore, tmp_path: Path) -> None:
    good = Heartbeat("ok-1", "m", "stable", 1.0, 2, "no_update").to_json()
    file_store.put("heartbeats/m/stable/ok-1.json", good)
    file_store.put("heartbeats/m/stable/junk.json", b"\x00not json")
    file_store.put("heartbeats/m/stable/huge.json", b"{" + b" " * (MAX_HEARTBEAT_BYTES + 10) + b"}")
    file_store.put("heartbeats/m/stable/types.json", json.dumps(
        {"format": 1, "device_id": 5, "model_id": "m", "channel": "stable", "at": 1, "state": "x",
         "consecutive_failures": "many"}).encode())
    file_store.put("heartbeats/m/stable/point-3.json", json.dumps(
        {**json.loads(good), "device_id": "point-3", "version": "1.3"}).encode())
    file_store.put("heartbeats/m/stable/formats.json", json.dumps(  # a publisher trusts this list: exact ints only
        {**json.loads(good), "device_id": "formats", "bundle_formats": [3, "3", True]}).encode())
    report = {"format": 1, "device_id": "ok-1", "model_id": "m", "channel": "stable", "outcome": "committed",
              "from_version": 1, "to_version": 2, "wer_before": 0.2, "wer_after": 0.18}
    file_store.put("reports/m/stable/ok-1/a.json", json.dumps(report).encode())
    # earlier releases sent decimal strings: still counted, as the same release
    file_store.put("reports/m/stable/ok-1/a0.json", json.dumps({**report, "to_version": "2"}).encode())
    file_store.put("reports/m/stable/x/f.json", json.dumps({**report, "to_version": "1.3"}).encode())
    file_store.put("reports/m/stable/ok-1/b.json", json.dumps({**report, "wer_after": "NaN"}).encode())
    file_store.put("reports/m/stable/x/c.json", b"[1, 2")
    file_store.put("reports/m/stable/x/d.json", json.dumps({**report, "outcome": "pwned"}).encode())
    file_store.put("reports/m/stable/x/e.json", b"[" + b"0," * MAX_REPORT_BYTES + b"0]")

    summary = fleet_summary(file_store)
    assert summary["devices"] == 1
    assert summary["ignored"] == {"malformed report": 3, "oversized report": 1,
                                  "malformed heartbeat": 4, "oversized heartbeat": 1}
    (row,) = summary["releases"]
    assert row["version"] == 2 and row["committed"] == 3 and row["wer_after"]["n"] == 2  # the "NaN" WER is dropped, the outcome kept
    out = CliRunner().invoke(cli, ["fleet", "status", "--store", file_store.url, "--json"])
    assert out.exit_code == 0
    assert "warning: ignored" in out.output and "1 oversized heartbeat" in out.output


def test_newer_bundle_formats_ship_only_once_every_device_on_the_channel_reads_them(
        s3_store: S3Store, seaweed, tmp_path: Path) -> None:
    import numpy as np

    from device_agent.diff import Diff, SparseDelta, apply_diff
    from packager.bundle import encode_diff_bundle
    from packager.publish import read_channel

    clock = SimClock()
    agent = _device(tmp_path, s3_store, clock)
    assert agent.check_once()["outcome"] == "committed"
    assert _beat(s3_store, agent)["bundle_formats"] == [1, 2, 3, 4]
    # a device whose agent predates the list: its heartbeat has no bundle_formats (it reads 1 and 2)
    old = json.loads(Heartbeat("hall-2", "tiny", "stable", clock.now.timestamp(), 1, "no_update").to_json())
    del old["bundle_formats"]
    s3_store.put(heartbeat_key("tiny", "stable", "hall-2"), json.dumps(old).encode())

    base = tiny_device_model(0)
    base.floats["joint.out.bias"][0] = 1000.0  # the model _device installed
    positions = np.arange(0, 40, 2)
    diff = Diff("sparse", base.model_id, 1, 2, base.content_hash(), "",
                {"encoder.weight_hh_l0": SparseDelta(positions, np.ones(positions.size, dtype=np.int8))})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    compact = tmp_path / "1-2.otab"
    compact.write_bytes(encode_diff_bundle(diff, base, compact=True))
    assert fleet_summary(s3_store, now=clock.now)["newest_bundle_format"] == {"tiny/stable": {"2": 1, "4": 1}}

    runner = CliRunner(env={**seaweed.aws_env(), "COLUMNS": "200"})
    publish = ["publish", str(compact), "--store", agent.cfg.store_url, "--keys", str(tmp_path / "keys")]
    refused = runner.invoke(cli, publish)
    assert refused.exit_code == 14, refused.output  # UnreadableFormatError
    assert "1 of 2 devices on channel stable do not read it (e.g. hall-2)" in refused.output
    assert read_channel(s3_store, tmp_path / "keys", "tiny", "stable").current_version == 1  # nothing published

    # the old device's agent is updated; a store elsewhere (--report-store) still holds an old agent's heartbeat
    s3_store.put(heartbeat_key("tiny", "stable", "hall-2"),
                 Heartbeat("hall-2", "tiny", "stable", clock.now.timestamp(), 1, "no_update").to_json())
    FileStore(tmp_path / "fleet", create=True).put(heartbeat_key("tiny", "stable", "porch-4"), json.dumps(
        {**old, "device_id": "porch-4"}).encode())
    elsewhere = runner.invoke(cli, [*publish, "--report-store", f"file://{tmp_path / 'fleet'}"])
    assert elsewhere.exit_code == 14 and "porch-4" in elsewhere.output, elsewhere.output
    published = runner.invoke(cli, publish)  # every device of the repository's store reads format 3
    assert published.exit_code == 0, published.output
    assert agent.check_once()["outcome"] == "committed"
    assert _beat(s3_store, agent)["version"] == 2

    # format 4: a diff that only adds words; the installed model lists them and the agent's gate decodes with them
    from device_agent.agent.daemon import active_model_file
    from device_agent.model_format import load_model

    v2 = apply_diff(base, diff)
    worded = Diff("words", base.model_id, 2, 3, v2.content_hash(), "", {}, words=("grocery", "olive"))
    worded.target_hash = apply_diff(v2, worded, check_hashes=False).content_hash()
    (tmp_path / "2-3.otab").write_bytes(encode_diff_bundle(worded, v2))
    published = runner.invoke(cli, [*publish[:1], str(tmp_path / "2-3.otab"), *publish[2:]])
    assert published.exit_code == 0, published.output  # every heartbeat on the channel lists format 4
    assert agent.check_once()["outcome"] == "committed"
    active, _ = active_model_file(agent.cfg.data_dir)
    assert load_model(active).tokenizer.words == ("grocery", "olive")
    assert _beat(s3_store, agent)["version"] == 3
