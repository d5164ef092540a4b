"""Fleet simulation: N devices poll a real SeaweedFS on loopback through staged rollouts.

    python -m bench.fleet_sim --devices 10000          # writes bench/results/fleet_sim.json

What is real and what is simulated:
- the store (SeaweedFS, boto3), the TUF repository and every device's TUF
  client (python-tuf ngclient, one metadata folder per device), the signed
  channel read, the rollout cohort test (`in_rollout`), the ranged,
  hash-verified bundle downloads, the heartbeats and reports each device
  writes, `ota repo refresh` on a cron schedule, the rollout controller, and
  the store outage (the SeaweedFS process is stopped and started again);
- apply + WER gate: each device is paired with one of `samples` real
  validation sets (4 utterances of samples/validation.jsonl each). The first
  time a bundle reaches a pair, the shipped model's bundle is applied
  bit-exactly and the real WER gate (`gate_decision`, the agent's defaults)
  runs on that validation set; every device of the pair then reports that
  measured outcome and WER (`measured outcomes for the rest`);
- time: a simulated clock (polls every `poll_interval` simulated seconds at
  a per-device phase, the controller and cron once per slot); TUF expiry is
  checked against it, so hours of metadata lifetime take minutes.

Scenarios, in one run on one repository:
1. good release (a small diff that leaves WER unchanged) through 1/10/50/100%;
2. bad release (encoder weights scrambled: WER +7 points median on the
   validation sets) halted in its first cohort; the channel moves back and
   devices that took it return through an exact reverse diff bundle;
3. good release with the store down for two slots mid-rollout;
4. nobody publishes for 3x the timestamp expiry while `refresh_repository`
   runs every 15 minutes; then a release goes out. Optionally the same
   quiet period without the cron job: devices report "metadata expired".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.agent.heartbeat import Heartbeat, HeartbeatSender, failure_reason, heartbeat_key
from device_agent.agent.policy import GateConfig, choose_update, gate_decision
from device_agent.agent.telemetry import REPORT_FORMAT, report_key
from device_agent.agent.validate import Validator
from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.errors import OtaError, StoreConflictError
from device_agent.model_format import encode_model, load_model
from device_agent.bundle import apply_bundle, decode_bundle
from packager.bundle import encode_diff_bundle, encode_full_bundle
from device_agent.channels import UpdateEdge, fetch_channel
from packager.exact_diff import exact_diff
from packager.fleet_status import fleet_summary, release_rows
from packager.publish import publish_bundle
from packager.rollout_controller import RolloutController, RolloutPlan
from demo.seaweed import SeaweedServer
from device_agent.store import S3Store, Store
from packager.trust import ExpiryPolicy, init_repository, refresh_repository
from device_agent.trust_client import TrustedUpdater

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "base-v1.otam"
SAMPLES = ROOT / "samples" / "validation.jsonl"
CHANNEL = "stable"
GATE = GateConfig(max_wer=0.5, max_regression=0.02, expected_slack=None)  # the agent's defaults


@dataclass
class SimConfig:
    devices: int = 10_000
    samples: int = 12  # real validation sets (pairs)
    utterances: int = 4  # per validation set
    poll_interval: float = 3600.0  # simulated seconds between a device's checks
    slots: int = 6  # phases per poll interval; the controller and cron run once per slot
    threads: int = 8  # I/O threads (one process)
    chunk: int = 64 << 10  # bytes per ranged GET
    cohorts: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    min_reports: int = 20
    min_halt_reports: int = 5
    refresh_every: float = 900.0  # the cron job
    outage_slots: int = 2
    quiet_lifetimes: int = 3
    without_refresh: bool = True  # also run the quiet period without the cron job
    scenarios: tuple[str, ...] = ("good", "bad", "outage", "quiet")
    # A one-hour timestamp makes "3x the expiry" three polls long; snapshot and targets
    # live longer, as in production, so a steady poll does not refetch them.
    expiry: ExpiryPolicy = field(default_factory=lambda: ExpiryPolicy(
        root=timedelta(days=365), targets=timedelta(days=7), snapshot=timedelta(days=1), timestamp=timedelta(hours=1)))
    bad_release: tuple[str, float, int] = ("encoder.weight_hh_l2", 0.6, 80)  # tensor, share of entries, |delta|
    max_slots: int = 60  # per scenario: a rollout that never finishes fails the run instead of hanging


class SimClock:
    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.t, timezone.utc)


class CountingStore(Store):
    """Counts requests and bytes per operation on the way to a real store (instrumentation)."""

    def __init__(self, inner: Store, counts: Counter, lock: threading.Lock) -> None:
        self.inner, self.counts, self.lock = inner, counts, lock

    def _add(self, op: str, nbytes: int = 0, error: bool = False) -> None:
        with self.lock:
            self.counts[f"req.{op}"] += 1
            self.counts["bytes"] += nbytes
            if error:
                self.counts["errors"] += 1

    def _call(self, op: str, fn, *args, **kw):  # type: ignore[no-untyped-def]
        try:
            out = fn(*args, **kw)
        except OtaError as exc:
            # a 404 (no newer root) and a lost create-only race are answers, not errors
            self._add(op, error=type(exc).__name__ not in ("StoreNotFoundError", "StoreConflictError"))
            raise
        size = len(out) if isinstance(out, bytes) else len(args[1]) if op == "put" else 0
        self._add(op, size)
        return out

    def get(self, key):  # type: ignore[no-untyped-def]
        return self._call("get", self.inner.get, key)

    def get_range(self, key, start, end):  # type: ignore[no-untyped-def]
        return self._call("get", self.inner.get_range, key, start, end)

    def head(self, key):  # type: ignore[no-untyped-def]
        return self._call("head", self.inner.head, key)

    def put(self, key, data, **kw):  # type: ignore[no-untyped-def]
        return self._call("put", self.inner.put, key, data, **kw)

    def put_file(self, key, path, **kw):  # type: ignore[no-untyped-def]
        return self._call("put", self.inner.put_file, key, path, **kw)

    def list(self, prefix=""):  # type: ignore[no-untyped-def]
        return self._call("list", self.inner.list, prefix)

    def delete(self, key):  # type: ignore[no-untyped-def]
        return self._call("delete", self.inner.delete, key)

    @property
    def url(self) -> str:
        return self.inner.url


# --- releases -------------------------------------------------------------------------------
def random_diff(base: DeviceModel, seed: int, tensor: str, share: float, magnitude: int) -> Diff:
    """Random integer deltas on `share` of one tensor's entries (|delta| <= magnitude)."""
    rng = np.random.default_rng(seed)
    w = base.weights[tensor]
    n = max(1, int(w.q.size * share))
    positions = np.sort(rng.choice(w.q.size, n, replace=False))
    values = (rng.integers(1, magnitude + 1, n) * rng.choice([-1, 1], n)).astype(np.int8)
    diff = Diff("sparse", base.model_id, base.version, base.version + 1, base.content_hash(), "",
                {tensor: SparseDelta(positions, values)})
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


def with_version(diff: Diff, base: DeviceModel, version: int) -> Diff:
    diff.target_version = version
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


@dataclass
class Outcome:
    outcome: str  # committed | refused
    wer_before: float
    wer_after: float


class SampleLab:
    """Real apply + WER gate, once per (validation set, bundle)."""

    def __init__(self, folder: Path, n_sets: int, per_set: int) -> None:
        self.folder = folder
        lines = SAMPLES.read_text().splitlines()
        self.validators = []
        for j in range(n_sets):
            stride = max(1, len(lines) // n_sets)  # spread the sets over the file; they overlap when many
            chosen = [json.loads(lines[(j * stride + k) % len(lines)]) for k in range(per_set)]
            for c in chosen:
                c["audio_filepath"] = str((SAMPLES.parent / c["audio_filepath"]).resolve())
            manifest = folder / f"validation-{j}.jsonl"
            manifest.write_text("".join(json.dumps(c) + "\n" for c in chosen))
            # The device's gate has a wall-clock budget; the lab measures WER once per pair on a shared,
            # busy machine, so it gets a generous one (a timeout here is load, not the model).
            self.validators.append(Validator(manifest, folder / f"wer-cache-{j}.json", budget=(600.0, 60.0)))
        self.models: dict[int, tuple[DeviceModel, Path]] = {}
        self.bundles: dict[str, bytes] = {}
        self.cache: dict[tuple[int, str], Outcome] = {}
        self.lock = threading.Lock()
        self.apply_seconds = 0.0
        self.gates_run = 0

    def add_model(self, model: DeviceModel) -> None:
        path = self.folder / f"v{model.version}.otam"
        path.write_bytes(encode_model(model))
        self.models[model.version] = (model, path)

    def outcome(self, pair: int, edge: UpdateEdge) -> Outcome:
        key = (pair, edge.target)
        with self.lock:  # one real evaluation per key; the CPU is the limit anyway
            if key not in self.cache:
                started = time.perf_counter()
                base = self.models[edge.from_version][0] if edge.from_version is not None else None
                candidate = apply_bundle(decode_bundle(self.bundles[edge.target]), base)
                _, path = self.models[candidate.version]
                assert candidate.content_hash() == self.models[candidate.version][0].content_hash()
                v = self.validators[pair]
                after = v.wer(path, candidate.content_hash())
                before = None if base is None else v.wer(self.models[edge.from_version][1], base.content_hash())
                passed = gate_decision(after, before, None, GATE).passed
                self.cache[key] = Outcome("committed" if passed else "refused",
                                          after if before is None else before, after)
                self.apply_seconds += time.perf_counter() - started
                self.gates_run += 1
            return self.cache[key]


# --- devices -------------------------------------------------------------------------------
@dataclass
class SimDevice:
    device_id: str
    folder: Path
    pair: int
    phase: int
    version: int | None = 1
    refused: set[int] = field(default_factory=set)
    activated: set[int] = field(default_factory=set)


class Fleet:
    def __init__(self, cfg: SimConfig, work: Path, endpoint, bucket: str, root: bytes, lab: SampleLab,
                 clock: SimClock) -> None:
        self.cfg, self.work, self.root, self.lab, self.clock = cfg, work, root, lab, clock
        self.endpoint, self.bucket = endpoint, bucket
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.devices = []
        for i in range(cfg.devices):
            device_id = f"dev-{i:05d}"
            digest = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
            self.devices.append(SimDevice(device_id, work / "devices" / device_id, digest % cfg.samples,
                                          (digest >> 16) % cfg.slots))
        self.pool = ThreadPoolExecutor(cfg.threads)
        self.bundle_bytes: Counter = Counter()  # by target version
        self.polls = 0

    def store(self) -> Store:
        # one boto3 client per thread (its connection pool holds 10)
        if not hasattr(self.local, "store"):
            inner = S3Store(self.bucket, "repo", endpoint_url=self.endpoint.endpoint_url,
                            access_key=self.endpoint.access_key, secret_key=self.endpoint.secret_key,
                            connect_timeout=1.0, max_attempts=1)
            self.local.store = CountingStore(inner, self.counts, self.lock)
        return self.local.store

    def poll_slot(self, slot: int) -> Counter:
        due = [d for d in self.devices if d.phase == slot]
        results = Counter(self.pool.map(self.poll, due))
        self.polls += len(due)
        return results

    def poll(self, dev: SimDevice) -> str:
        store = self.store()
        now = self.clock.dt()
        failed, error, result = False, None, "no_update"
        try:
            updater = TrustedUpdater(store, dev.folder / "metadata", self.root, target_chunk_size=self.cfg.chunk,
                                     clock=lambda: now)
            updater.refresh()
            channel = fetch_channel(updater, "speech-commands", CHANNEL)
            choice = choose_update(channel, dev.version, dev.refused, dev.device_id)
            if choice.edge is not None:
                info = updater.get_target(choice.edge.target)
                data = updater.read_target(info)  # ranged GETs, verified against the signed hashes
                with self.lock:
                    self.bundle_bytes[choice.edge.to_version] += len(data)
                out = self.lab.outcome(dev.pair, choice.edge)
                result = out.outcome
                report = {"format": REPORT_FORMAT, "device_id": dev.device_id, "model_id": "speech-commands",
                          "channel": CHANNEL, "outcome": out.outcome,
                          "kind": "full" if choice.edge.from_version is None else "diff", "from_version": dev.version, "to_version": choice.edge.to_version,
                          "target": choice.edge.target, "wer_before": out.wer_before, "wer_after": out.wer_after,
                          "finished_at": self.clock(), "bytes_downloaded": len(data), "error_class": None}
                if out.outcome == "committed":
                    dev.version = choice.edge.to_version
                    dev.activated.add(dev.version)
                else:
                    dev.refused.add(choice.edge.to_version)
                try:
                    store.put(report_key("speech-commands", CHANNEL, dev.device_id, self.clock()),
                              json.dumps(report).encode(), if_none_match=True)
                except StoreConflictError:
                    pass
        except OtaError as exc:
            failed, error, result = True, exc, f"failed: {failure_reason(None, exc)}"
        beat = Heartbeat(dev.device_id, "speech-commands", CHANNEL, self.clock(), dev.version,
                         "failed" if failed else result, type(error).__name__ if error else None,
                         failure_reason(None, error) if error else None, str(error) if error else None, 0,
                         _expiry_text(dev.folder / "metadata"), sorted(dev.refused))
        sender = HeartbeatSender(dev.folder / "heartbeat.json", self.cfg.poll_interval * 4)
        sender.record(beat, failed)
        try:
            sender.send(store, heartbeat_key("speech-commands", CHANNEL, dev.device_id), beat)
        except OtaError:
            pass  # store down: the next check sends it
        return result

    def versions(self) -> Counter:
        return Counter(d.version for d in self.devices)


def _expiry_text(folder: Path) -> str | None:
    from device_agent.agent.heartbeat import metadata_expiry

    return metadata_expiry(folder)


# --- the run -------------------------------------------------------------------------------
def _print(message: str) -> None:
    print(message, flush=True)


class Simulation:
    def __init__(self, cfg: SimConfig, work: Path, log=_print) -> None:  # type: ignore[no-untyped-def]
        self.cfg, self.work, self.log = cfg, work, log
        self.clock = SimClock()
        self.server = SeaweedServer(work / "seaweedfs")
        self.slot_seconds = cfg.poll_interval / cfg.slots
        self.slot = 0
        self.cron = True
        self.last_refresh = 0.0
        self.cron_runs = Counter()

    def admin(self) -> Store:
        """The publisher's and controller's store (not counted as device load)."""
        if self._admin is None:
            e = self.server.endpoint
            self._admin = S3Store(self.bucket, "repo", endpoint_url=e.endpoint_url, access_key=e.access_key,
                                  secret_key=e.secret_key, connect_timeout=1.0, max_attempts=1)
        return self._admin

    _admin: Store | None = None

    def setup(self) -> None:
        import boto3

        e = self.server.start()
        self.bucket = "fleet"
        boto3.client("s3", endpoint_url=e.endpoint_url, aws_access_key_id=e.access_key,
                     aws_secret_access_key=e.secret_key, region_name=e.region).create_bucket(Bucket=self.bucket)
        self.keys = self.work / "keys"
        self.root = init_repository(self.admin(), self.keys, expiry=self.cfg.expiry)
        self.lab = SampleLab(self.work, self.cfg.samples, self.cfg.utterances)
        self.base = load_model(MODEL)
        self.lab.add_model(self.base)
        full = encode_full_bundle(encode_model(self.base), self.base)
        self.full_size = len(full)
        self.publish(full)
        self.fleet = Fleet(self.cfg, self.work, e, self.bucket, self.root, self.lab, self.clock)
        self.controller = RolloutController(self.admin(), self.keys, "speech-commands", CHANNEL, clock=self.clock)

    def publish(self, bundle: bytes, **kw: Any) -> str:
        release = publish_bundle(self.admin(), self.keys, bundle, channel=CHANNEL, now=self.clock.dt(), **kw)
        self.lab.bundles[release.target] = bundle
        return release.target

    def release(self, diff: Diff, base: DeviceModel) -> tuple[DeviceModel, bytes]:
        model = apply_diff(base, diff)
        self.lab.add_model(model)
        return model, encode_diff_bundle(diff, base)

    # one slot: devices of this phase poll, cron, controller, clock
    def tick(self) -> dict[str, Any]:
        self.run_cron()
        started = time.perf_counter()
        results = self.fleet.poll_slot(self.slot % self.cfg.slots)
        poll_seconds = time.perf_counter() - started
        decision = None
        if self.controller_on:
            try:
                decision = self.controller.step()
            except OtaError as exc:  # the store is down: the controller tries again next slot
                decision = {"action": "error", "reason": f"{type(exc).__name__}", "status": "running"}
        self.slot += 1
        self.clock.t += self.slot_seconds
        return {"results": results, "decision": decision, "poll_seconds": poll_seconds}

    def run_cron(self) -> None:
        if self.cron and self.clock() - self.last_refresh >= self.cfg.refresh_every:
            try:
                resigned = refresh_repository(self.admin(), self.keys, now=self.clock.dt()).resigned
                self.cron_runs["ok"] += 1
                self.cron_runs["resigned " + "+".join(resigned or ("nothing",))] += 1
                self.last_refresh = self.clock()
            except OtaError as exc:
                self.cron_runs[f"failed: {type(exc).__name__}"] += 1

    controller_on = False

    def rollout(self, version: int, previous: int, revert: bool, outage_at: int | None = None) -> dict[str, Any]:
        plan = RolloutPlan("speech-commands", CHANNEL, version, previous, self.cfg.cohorts,
                           min_reports=self.cfg.min_reports, min_halt_reports=self.cfg.min_halt_reports,
                           revert=revert)
        self.controller.plan(plan)
        self.controller_on = True
        start_t, start_counts, start_polls = self.clock(), Counter(self.fleet.counts), self.fleet.polls
        real_start = time.perf_counter()
        timeline, failures_outage = [], Counter()
        decisions: list[dict[str, Any]] = []
        reached_all = None
        down = False
        stable_slots = 0  # slots since the fleet's versions last changed
        last_counts: Counter = Counter()
        for i in range(self.cfg.max_slots):
            if outage_at is not None and i == outage_at:
                self.server.stop()
                down = True
            if down and i == outage_at + self.cfg.outage_slots:
                self.server.start()
                down = False
            out = self.tick()
            if down:
                failures_outage.update(out["results"])
            d = out["decision"]
            if d and d["action"] not in ("wait", "none"):
                decisions.append({k: d.get(k) for k in ("action", "reason", "cohort_percent", "numbers", "at")})
            counts = self.fleet.versions()
            timeline.append({"t_hours": round((self.clock() - start_t) / 3600, 3), "versions": dict(counts),
                             "action": None if d is None else d["action"]})
            state = None if d is None else d["status"]
            stable_slots = stable_slots + 1 if counts == last_counts else 0
            last_counts = counts
            if counts.get(version, 0) == len(self.fleet.devices) and reached_all is None:
                reached_all = self.clock() - start_t
            if state == "completed" and (reached_all is not None or stable_slots >= self.cfg.slots):
                break  # everyone has it, or a full round passed with no device changing
            if state == "halted" and not revert:
                break
            if state == "halted" and revert and counts.get(version, 0) == 0:
                break
        self.controller_on = False
        delta = self.fleet.counts - start_counts
        return {"sim_hours": round((self.clock() - start_t) / 3600, 3),
                "real_seconds": round(time.perf_counter() - real_start, 1),
                "polls": self.fleet.polls - start_polls, "store": dict(delta),
                "hours_to_every_device": None if reached_all is None else round(reached_all / 3600, 3),
                "decisions": decisions, "timeline": timeline[-3:], "outage_poll_results": dict(failures_outage),
                "status": self.controller.load()[0].status}

    def run_slots(self, n: int) -> Counter:
        results: Counter = Counter()
        for _ in range(n):
            results.update(self.tick()["results"])
        return results


def run(cfg: SimConfig, work: Path, log=_print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    sim = Simulation(cfg, work, log)
    sim.setup()
    try:
        return _scenarios(sim, cfg, log)
    finally:
        sim.fleet.pool.shutdown()
        sim.server.stop()


def _per_poll(store: dict[str, int], polls: int) -> dict[str, float]:
    reqs = sum(v for k, v in store.items() if k.startswith("req."))
    return {"requests": round(reqs / polls, 3), "bytes": round(store.get("bytes", 0) / polls, 1),
            "errors": store.get("errors", 0)}


def _scenarios(sim: Simulation, cfg: SimConfig, log) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    fleet, n = sim.fleet, cfg.devices
    results: dict[str, Any] = {"config": {k: v for k, v in vars(cfg).items() if k != "expiry"}}
    results["config"]["expiry_seconds"] = {r: int(getattr(cfg.expiry, r).total_seconds())
                                           for r in ("timestamp", "snapshot", "targets", "root")}
    results["full_bundle_bytes"] = sim.full_size

    # 0) every device checks once (first contact: all metadata) then once more (steady state, no release)
    c0, real0 = Counter(fleet.counts), time.perf_counter()
    sim.run_slots(cfg.slots)
    first = fleet.counts - c0
    c1, real1 = Counter(fleet.counts), time.perf_counter()
    idle = sim.run_slots(cfg.slots)
    steady = fleet.counts - c1
    steady_seconds = time.perf_counter() - real1
    results["idle_poll"] = {"first_contact": _per_poll(dict(first), n), "steady": _per_poll(dict(steady), n),
                            "steady_results": dict(idle), "real_seconds_per_round": round(steady_seconds, 1),
                            "polls_per_real_second": round(n / steady_seconds, 1),
                            "requests_per_real_second": round(sum(v for k, v in steady.items()
                                                                  if k.startswith("req.")) / steady_seconds, 1),
                            "first_contact_real_seconds": round(real1 - real0, 1)}
    log(f"idle poll: {results['idle_poll']}")

    # 1) good release 1 -> 2
    v2, b12 = sim.release(random_diff(sim.base, 1, "joint.out.weight", 0.02, 10), sim.base)
    sim.publish(b12, rollout_percent=0.0)
    good = sim.rollout(2, 1, revert=False)
    good["bundle_bytes"] = len(b12)
    good["delivered_bytes"] = fleet.bundle_bytes[2]
    good["full_model_delivery_bytes"] = sim.full_size * n
    results["good_release"] = good
    log(f"good release: {({k: v for k, v in good.items() if k not in ('timeline', 'decisions')})}")

    # 2) bad release 2 -> 3, reverse bundle 3 -> 2 published with it
    v3, b23 = sim.release(with_version(random_diff(v2, 7, *cfg.bad_release), v2, 3), v2)
    sim.publish(b23, rollout_percent=0.0)
    reverse = encode_diff_bundle(exact_diff(v3, v2), v3)
    sim.publish(reverse, make_current=False)
    bad = sim.rollout(3, 2, revert=True)
    activated = sum(3 in d.activated for d in fleet.devices)
    row = next(r for r in release_rows(sim.controller.reader.reports.values()) if r["version"] == 3)
    halt = next((d for d in bad["decisions"] if d["action"] == "halt"), None)
    first_bad = _first_bad_report(sim.admin(), 3)
    bad.update({"activated_devices": activated, "activated_share": activated / n,
                "first_cohort_percent": cfg.cohorts[0], "release_row": row,
                "reverse_bundle_bytes": len(reverse), "reverted_bytes": fleet.bundle_bytes[2] - good["delivered_bytes"],
                "first_bad_report_to_halt_minutes": None if halt is None or first_bad is None
                else round((halt["at"] - first_bad) / 60, 1),
                "still_on_bad_version": fleet.versions().get(3, 0)})
    results["bad_release"] = bad
    log(f"bad release: {({k: v for k, v in bad.items() if k not in ('timeline', 'release_row')})}")

    if "outage" not in cfg.scenarios:
        return _finish(results, sim, fleet)
    # 3) good release 2 -> 4 with a store outage after the first cohort opened
    v4, b24 = sim.release(with_version(random_diff(v2, 3, "joint.out.weight", 0.02, 10), v2, 4), v2)
    sim.publish(b24, rollout_percent=0.0)
    outage = sim.rollout(4, 2, revert=False, outage_at=cfg.slots)
    outage["outage_sim_minutes"] = cfg.outage_slots * sim.slot_seconds / 60
    results["store_outage"] = outage
    log(f"outage: {({k: v for k, v in outage.items() if k not in ('timeline', 'decisions')})}")

    if "quiet" not in cfg.scenarios:
        return _finish(results, sim, fleet)
    # 4) quiet repository for 3x the timestamp expiry, cron on; then a release
    quiet_slots = int(cfg.quiet_lifetimes * cfg.expiry.timestamp.total_seconds() / sim.slot_seconds)
    sim.cron_runs.clear()
    quiet = sim.run_slots(quiet_slots)
    v5, b45 = sim.release(with_version(random_diff(v4, 5, "joint.out.weight", 0.02, 10), v4, 5), v4)
    sim.publish(b45, rollout_percent=100.0)
    after = sim.run_slots(cfg.slots)
    results["quiet_with_refresh"] = {"sim_hours": round(quiet_slots * sim.slot_seconds / 3600, 2),
                                     "poll_results": dict(quiet), "cron": dict(sim.cron_runs),
                                     "release_after": dict(after), "versions_after": dict(fleet.versions())}
    log(f"quiet with refresh: {results['quiet_with_refresh']}")
    if cfg.without_refresh:
        sim.cron = False
        quiet2 = sim.run_slots(quiet_slots)
        summary = fleet_summary(sim.admin(), "speech-commands", now=sim.clock.dt())
        sim.cron = True
        recovered = sim.run_slots(cfg.slots)
        results["quiet_without_refresh"] = {"poll_results": dict(quiet2), "fleet_status_failing": summary["failing"]
                                            ["by_reason"], "after_refresh_resumed": dict(recovered)}
        log(f"quiet without refresh: {results['quiet_without_refresh']}")
    return _finish(results, sim, fleet)


def _finish(results: dict[str, Any], sim: Simulation, fleet: Fleet) -> dict[str, Any]:
    results["lab"] = {"gates_run": sim.lab.gates_run, "apply_and_gate_seconds": round(sim.lab.apply_seconds, 1),
                      "outcomes": {f"pair{p}:{t.split('/')[-1][:14]}": vars(o) for (p, t), o in sim.lab.cache.items()}}
    results["store_errors_total"] = fleet.counts.get("errors", 0)
    results["store_requests_total"] = sum(v for k, v in fleet.counts.items() if k.startswith("req."))
    return results


def _first_bad_report(store: Store, version: int) -> float | None:
    from packager.fleet_status import ReportReader

    times = [r.get("finished_at") for r in ReportReader(store, "speech-commands", CHANNEL).read()
             if r.get("to_version") == version and (r["outcome"] != "committed" or
                                                         (r.get("wer_after") or 0) - (r.get("wer_before") or 0) > 0.02)]
    times = [t for t in times if isinstance(t, (int, float))]
    return min(times) if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-without-refresh", action="store_true", help="Skip the quiet period without cron.")
    parser.add_argument("--scenarios", default="good,bad,outage,quiet", help="Which scenarios to run, in order.")
    parser.add_argument("--work", type=Path, help="Working folder (default: a temp dir).")
    args = parser.parse_args()
    cfg = SimConfig(devices=args.devices, threads=args.threads, without_refresh=not args.no_without_refresh,
                    scenarios=tuple(args.scenarios.split(",")))
    if args.devices < 1000:
        # A 1% cohort of a small fleet may hold no device at all: bigger cohorts, fewer reports.
        cfg = replace(cfg, cohorts=(20.0, 50.0, 100.0), min_reports=3, min_halt_reports=2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleet-sim-", dir=args.work) as tmp:
        results = run(cfg, Path(tmp))
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["model_hash"] = load_model(MODEL).content_hash()
    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    from bench.common import RESULTS, write_results

    # One file, one entry per fleet size (the largest runs fewer scenarios on a shared machine).
    path = RESULTS / "fleet_sim.json"
    runs = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    runs[str(cfg.devices)] = results
    print(write_results("fleet_sim", {"runs": runs}))
    print(json.dumps({k: v for k, v in results.items() if k != "lab"}, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
