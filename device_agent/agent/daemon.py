"""The agent's I/O and orchestration: one action per lifecycle state.

`Agent.step` runs the action of the persisted state and fires the event it
produced; `_transition` persists the new state before anything else
happens. Each action is idempotent, so a process killed anywhere re-runs at
most the step it was in. Invariants the actions keep:

- the active model file is never written: candidates go to the other slot;
- the pointer moves only in ACTIVATING (to a candidate that was written,
  re-read with the signed target hash, and passed the WER gate) and in
  ROLLING_BACK / FAILED (back to the model that was active before);
- every error ends in FAILED (or ROLLING_BACK after the swap) with the
  previous model active and the reason recorded and reported.
"""
from __future__ import annotations

import fcntl
import os
import random
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from device_agent.errors import (AgentBusyError, BundleError, ConfigError, ContentHashMismatchError, DataError,
                                 DecodeBoundError, DiskFullError, LifecycleError, OtaError, TrustError,
                                 WrongBaseError)
from device_agent.atomic import fsync_dir
from device_agent.agent.config import AgentConfig
from device_agent.agent.download import RangeDownloader, RetryPolicy, Stopped, download_signed
from device_agent.agent.heartbeat import Heartbeat, HeartbeatSender, failure_reason, heartbeat_key, metadata_expiry
from device_agent.agent.lifecycle import LIFECYCLE, Effect, Event, Lifecycle, State
from device_agent.agent.log import JsonLog
from device_agent.agent.policy import GateConfig, choose_update, gate_decision, parse_expected_wer
from device_agent.agent.slots import (Pointer, discard_model, load_slot, model_path, other_slot,
                                      pointer_path, read_pointer, write_model, write_pointer)
from device_agent.agent.state import AgentState, SlotRef, UpdateRecord, load_state, os_error, save_state
from device_agent.agent.telemetry import Outbox, report_key
from device_agent.agent.validate import Validator

Observer = Callable[[State, AgentState], None]
STOP_GRACE_S = 3.0  # docs/agent.md: SIGTERM stops the daemon within seconds in every state


def _exit_stopped(log: Callable[..., None]) -> None:
    try:
        log("agent_stopped", level="warning", detail=f"a step did not reach a boundary within {STOP_GRACE_S} s")
    finally:
        os._exit(143)  # 128 + SIGTERM; state on disk is consistent after every write


class Agent:
    """One device's update agent over `config.data_dir` (exclusive: see `lock`)."""

    lifecycle: Lifecycle = LIFECYCLE  # every move goes through this table (the one the tests walk)

    def __init__(self, config: AgentConfig, *, store=None, report_store=None, log: Callable[..., None] | None = None,
                 observer: Observer | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.cfg = config
        self.data = Path(config.data_dir)
        self._store = store
        self._report_store = report_store
        self.log = log or JsonLog(device_id=config.device_id)
        self.observer = observer
        self.sleep = sleep
        self._stop = threading.Event()
        self.validator = Validator(config.validation_manifest, self.data / "wer_cache.json",
                                   should_stop=self._stop.is_set)
        self.outbox = Outbox(self.data / "outbox")
        self.heartbeats = HeartbeatSender(self.data / "heartbeat.json", config.heartbeat_interval)
        self.clock = clock  # None: real time; a simulated clock reaches the TUF expiry checks and heartbeats
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._error: BaseException | None = None  # the exception behind the last FAILED, this process only
        self._outcome: dict[str, Any] | None = None  # how the last attempt of this process ended

    # --- resources -------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from device_agent.store import open_store

            self._store = open_store(self.cfg.store_url)
        return self._store

    @property
    def report_store(self):
        if self._report_store is None:
            self._report_store = self.store if self.cfg.reports_url == self.cfg.store_url else None
            if self._report_store is None:
                from device_agent.store import open_store

                self._report_store = open_store(self.cfg.reports_url)
        return self._report_store

    def lock(self) -> Agent:
        """Hold `<data_dir>/agent.lock` (flock) so a daemon and a CLI command never interleave steps."""
        if self._lock_fd is not None:
            self._lock_depth += 1  # re-entrant: run() holds it across check_once() calls
            return self
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise os_error(exc, f"opening the agent's data_dir {self.data}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentBusyError(f"another agent process holds {self.data / 'agent.lock'}; "
                                 "stop the daemon (or wait for it) and retry") from None
        self._lock_fd = fd
        self._lock_depth = 1
        return self

    def unlock(self) -> None:
        self._lock_depth -= 1
        if self._lock_depth <= 0 and self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> Agent:
        return self.lock()

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def stop(self) -> None:
        """Ask a running loop to stop at the next step boundary (signal-handler safe)."""
        self._stop.set()

    def _stop_or_exit(self) -> None:
        """SIGTERM/SIGINT: stop at the next step boundary (downloads and the WER gate check
        between chunks and frames); if a step still runs after STOP_GRACE_S (a slow store
        call, a long apply), exit anyway. Every step is crash-safe (bench/crash_agent.py
        kills it in each state), so leaving mid-step loses at most that step's work."""
        if self._stop.is_set():
            return
        self._stop.set()
        timer = threading.Timer(STOP_GRACE_S, _exit_stopped, args=(self.log,))
        timer.daemon = True
        timer.start()

    # --- persistence -------------------------------------------------------------------
    def _transition(self, st: AgentState, event: Event, **fields: Any) -> None:
        before = st.state
        row = self.lifecycle.move(st.state, event)  # LifecycleError if the table has no such row
        if Effect.START_ROLLBACK in row.effects and st.update is not None:
            rec = st.update  # persisted with the move: ROLLING_BACK's action reads it
            st.rollback = {"to": rec.previous, "from": SlotRef(rec.candidate_slot, rec.to_version, rec.target_hash)}
        st.state = row.next
        st.steps += 1
        save_state(self.data, st)
        self.log("transition", **{"from": before.value, "on": event.value, "to": st.state.value}, **fields)
        if self.observer is not None:
            self.observer(st.state, st)

    # --- public operations ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = load_state(self.data)
        ptr = read_pointer(self.data)
        return {"state": st.state.value, "active": _ref(ptr.active), "previous": _ref(ptr.previous),
                "update": None if st.update is None else {
                    k: getattr(st.update, k) for k in ("target", "from_version", "to_version", "length",
                                                        "bytes_downloaded", "wer_before", "wer_after")},
                "refused": st.refused, "last_error": st.last_error, "last_outcome": st.last_outcome,
                "last_check": st.last_check, "reports_pending": len(self.outbox.pending())}

    def check_once(self, *, raise_errors: bool = True) -> dict[str, Any]:
        """Finish any interrupted update, then check and install until up to date
        (one bundle per attempt, at most `max_hops`). Returns the last outcome;
        with `raise_errors`, a failed attempt re-raises its error after it was recorded."""
        with self:
            self._flush_reports()
            st = load_state(self.data)
            outcome: dict[str, Any] = {"outcome": "no_update"}
            installed: list[int] = []  # versions committed by this call, in order
            for _ in range(self.cfg.max_hops + 1):
                if st.state == State.IDLE:
                    self._transition(st, Event.CHECK)
                self._error = None
                self._outcome = None
                try:
                    self._run_until_idle(st)
                except Stopped as exc:
                    self.log("stopped", state=st.state.value, detail=str(exc))
                    return {"outcome": "stopped", "state": st.state.value}
                latest = self._outcome or {"outcome": "no_update"}
                if latest.get("outcome") != "no_update" or not installed:
                    outcome = latest  # after committed hops, "nothing more to do" is not the headline
                if latest.get("outcome") != "committed":
                    break
                installed.append(latest.get("to_version"))
            outcome["installed"] = installed
            self._flush_reports()
            self._heartbeat(st, outcome)
            if outcome.get("outcome") == "failed" and raise_errors and self._error is not None:
                raise self._error
            return outcome

    def rollback(self) -> dict[str, Any]:
        """Operator rollback to the previous slot; the version left is refused from then on."""
        with self:
            st = load_state(self.data)
            if st.state != State.IDLE:
                raise LifecycleError(f"cannot roll back while '{st.state.value}'; run `ota agent check-once` "
                                     "to finish the interrupted update first")
            ptr = read_pointer(self.data)
            if ptr.active is None or ptr.previous is None:
                raise LifecycleError("no previous model to roll back to (the device has had one model, "
                                     "or already rolled back)")
            self._error = None
            load_slot(self.data, ptr.previous)  # it must still be there and intact before we commit to it
            st.rollback = {"to": ptr.previous, "from": ptr.active}
            st.update = None
            self._transition(st, Event.ROLLBACK)
            self._run_until_idle(st)
            self._flush_reports()
            if self._error is not None:
                raise self._error
            return dict(st.last_outcome or {})

    def run(self, *, install_signals: bool = True, max_cycles: int | None = None) -> None:
        """The daemon loop: check, then sleep poll_interval + jitter; stops cleanly between steps."""
        if install_signals:
            import signal

            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop_or_exit())
        self.log("agent_started", config=self.cfg.to_json())
        cycles = 0
        with self:
            while not self._stop.is_set():
                try:
                    out = self.check_once(raise_errors=False)
                    self.log("cycle_done", **out)
                except OtaError as exc:  # e.g. unreadable state: keep the device as it is, retry later
                    self.log("cycle_error", level="error", error_class=type(exc).__name__, error=str(exc))
                cycles += 1
                if max_cycles is not None and cycles >= max_cycles:
                    break
                self._stop.wait(self.cfg.poll_interval + random.uniform(0.0, self.cfg.poll_jitter))
        self.log("agent_stopped")

    # --- the step engine ------------------------------------------------------------------
    def _run_until_idle(self, st: AgentState) -> None:
        while st.state != State.IDLE:
            if self._stop.is_set():
                raise Stopped(f"stop requested in state {st.state.value}")
            self.step(st)

    def step(self, st: AgentState) -> None:
        """Run the current state's action once and fire its event."""
        state = st.state
        action = self._actions[state]
        started = time.monotonic()
        try:
            event = action(self, st)
        except Stopped:
            raise
        except Exception as exc:  # any failure (ours or a bug) must end in a safe, recorded state
            self._record_error(st, state, exc, time.monotonic() - started)
            return
        if st.update is not None and state not in (State.IDLE,):
            st.update.durations[state.value] = round(st.update.durations.get(state.value, 0.0)
                                                     + time.monotonic() - started, 4)
        self._transition(st, event)

    def _record_error(self, st: AgentState, state: State, exc: Exception, elapsed: float) -> None:
        if not self.lifecycle.can(state, Event.ERROR):
            raise exc  # finishing failed (e.g. disk full writing state): state.json is unchanged, retry later
        self._error = exc
        st.last_error = {"class": type(exc).__name__, "message": str(exc), "state": state.value}
        st.failed_in = state.value
        if st.update is not None:
            st.update.durations[state.value] = round(st.update.durations.get(state.value, 0.0) + elapsed, 4)
        self.log("step_failed", level="error", state=state.value, error_class=type(exc).__name__, error=str(exc))
        self._transition(st, Event.ERROR)

    # --- actions: one per state, each returns the event it produced --------------------------
    def _checking(self, st: AgentState) -> Event:
        from device_agent.channels import fetch_channel
        from device_agent.trust_client import TrustedUpdater

        updater = TrustedUpdater(self.store, self.data / "metadata", self._trusted_root(),
                                 target_chunk_size=self.cfg.chunk_size, clock=self.clock)
        updater.refresh()  # all-or-nothing: a hostile or stale store leaves metadata_dir as it was
        channel = fetch_channel(updater, self.cfg.model_id, self.cfg.channel)
        active = read_pointer(self.data).active
        choice = choose_update(channel, active.version if active else None, set(st.refused), self.cfg.device_id)
        st.last_check = {"at": time.time(), "channel_version": channel.current_version,
                         "rollout_percent": channel.rollout_percent, "reason": choice.reason,
                         "found": choice.edge is not None}
        self.log("checked", reason=choice.reason, plan=[e.target for e in choice.plan])
        if choice.edge is None:
            self._outcome = {"outcome": "no_update", "reason": choice.reason,
                             "active_version": active.version if active else None}
            return Event.NO_UPDATE
        info = updater.get_target(choice.edge.target)
        if info is None:
            raise TrustError(f"channel lists {choice.edge.target}, which is not in the signed targets")
        st.update = self._new_record(st.resume, info, choice.edge.to_version, active)
        return Event.UPDATE_FOUND

    def _new_record(self, old: UpdateRecord | None, info, to_version: int, active: SlotRef | None) -> UpdateRecord:
        c = info.custom
        expected = {"model_id": self.cfg.model_id, "target_version": to_version}
        for key, value in expected.items():
            if c.get(key) != value:
                raise TrustError(f"bundle {info.name}: signed {key} is {c.get(key)!r}, expected {value!r}")
        kind = c.get("kind")
        if kind not in ("full", "diff") or not isinstance(c.get("target_hash"), str):
            raise TrustError(f"bundle {info.name}: signed custom metadata lacks kind/target_hash")
        if kind == "diff" and (active is None or c.get("base_hash") != active.hash):
            have = "no model" if active is None else f"{active.hash} (version {active.version})"
            raise WrongBaseError(f"bundle {info.name} is a diff against {c.get('base_hash')} (version "
                                 f"{c.get('base_version')}); the active model is {have}")
        rec = UpdateRecord(
            attempt_id=uuid.uuid4().hex[:12], target=info.name, length=info.length, hashes=dict(info.hashes),
            store_key=info.store_key, kind=kind, from_version=active.version if active else None,
            to_version=to_version, base_hash=c.get("base_hash"), target_hash=c["target_hash"],
            expected_wer=parse_expected_wer(c.get("expected_wer")), started_at=time.time(), previous=active,
            candidate_slot=other_slot(active.slot if active else None))
        # A retry of the same bundle keeps its download accounting (the .part file is resumed).
        if old is not None and old.target == rec.target and old.hashes == rec.hashes:
            rec.bytes_downloaded, rec.bytes_refetched = old.bytes_downloaded, old.bytes_refetched
            rec.resumed_from, rec.failed_offsets = old.resumed_from, old.failed_offsets
        return rec

    def _trusted_root(self) -> bytes:
        try:
            return self.cfg.trust_root.read_bytes()
        except OSError as exc:
            raise ConfigError(f"agent config trust_root: cannot read {self.cfg.trust_root} "
                              f"({exc.strerror or exc}); expected the repository's root.json") from None

    def _download_paths(self, rec: UpdateRecord) -> tuple[Path, Path]:
        name = rec.store_key.rsplit("/", 1)[-1]  # "<sha256>.<basename>": unique per signed content
        folder = self.data / "downloads"
        return folder / (name + ".part"), folder / name

    def _downloading(self, st: AgentState) -> Event:
        rec = st.update
        assert rec is not None
        part, final = self._download_paths(rec)
        if final.exists() and final.stat().st_size == rec.length:
            return Event.DOWNLOADED  # finished before a crash; VERIFYING checks the bytes
        downloader = RangeDownloader(
            self.store, self.cfg.chunk_size,
            RetryPolicy(self.cfg.retry_limit, self.cfg.retry_backoff, self.cfg.retry_backoff_max),
            self.cfg.bandwidth_limit, should_stop=self._stop.is_set, sleep=self.sleep)
        try:
            stats = download_signed(downloader, rec.store_key, rec.target, rec.length, rec.hashes, part, final,
                                    failed_before=set(rec.failed_offsets))
        except DiskFullError:
            part.unlink(missing_ok=True)  # give the space back so the failure itself can be recorded
            raise
        finally:
            live = downloader.stats
            if live.resumed_from and not rec.resumed_from:
                rec.resumed_from = live.resumed_from
            rec.bytes_downloaded += live.received
            rec.bytes_refetched += live.refetched
            rec.failed_offsets = sorted(downloader.failed_offsets)
        self.log("downloaded", target=rec.target, bytes=rec.length, resumed_from=rec.resumed_from,
                 refetched=rec.bytes_refetched, failed_requests=stats.failed_requests)
        return Event.DOWNLOADED

    def _verifying(self, st: AgentState) -> Event:
        from device_agent.bundle import read_bundle_manifest
        from device_agent.trust_client import TargetInfo, verify_target

        rec = st.update
        assert rec is not None
        _, final = self._download_paths(rec)
        try:
            with open(final, "rb") as f:
                verify_target(TargetInfo(rec.target, rec.length, rec.hashes), f)
            m = read_bundle_manifest(final)
        except (TrustError, BundleError):
            final.unlink(missing_ok=True)
            raise
        except OSError as exc:
            raise os_error(exc, f"reading {final}") from None
        # The bundle's own manifest must say what the signed metadata said (no mix-and-match).
        promised = (self.cfg.model_id, rec.kind, rec.to_version, rec.target_hash, rec.base_hash)
        found = (m.model_id, m.kind, m.target_version, m.target_hash, m.base_hash)
        if found != promised:
            final.unlink(missing_ok=True)
            raise TrustError(f"bundle {rec.target} describes {found}, its signed metadata promises {promised}")
        return Event.VERIFIED

    def _applying(self, st: AgentState) -> Event:
        from device_agent.model_format import FAST_LEVEL, encode_model, load_model
        from device_agent.bundle import apply_bundle, read_bundle

        rec = st.update
        assert rec is not None
        active = read_pointer(self.data).active
        if active != rec.previous:
            raise DataError(f"the active model changed during the update (now {_ref(active)}, expected "
                            f"{_ref(rec.previous)}); starting over")
        if active is not None and rec.candidate_slot == active.slot:
            raise LifecycleError("refusing to write the candidate into the active slot")
        base = load_slot(self.data, active) if active is not None else None
        _, final = self._download_paths(rec)
        # streamed from the file and sized against the model it changes before any section is read
        bundle = read_bundle(final, base)
        # in place: `base` was loaded from the slot file just for this, so extra memory stays O(diff)
        model = apply_bundle(bundle, base, in_place=True)  # WrongBaseError on a base mismatch; checks the target hash
        if model.content_hash() != rec.target_hash:
            raise ContentHashMismatchError(f"applying {rec.target} produced {model.content_hash()}, the signed "
                                           f"target hash is {rec.target_hash}")
        data = bundle.model_bytes if bundle.kind == "full" else encode_model(model, FAST_LEVEL)
        del bundle, base, model
        path = write_model(self.data, rec.candidate_slot, data)
        # Re-read what is on disk: the signed hash is checked against the file that will be activated.
        written = load_model(path).content_hash()
        if written != rec.target_hash:
            discard_model(self.data, rec.candidate_slot)
            raise ContentHashMismatchError(f"{path} reads back as {written}, expected {rec.target_hash}")
        return Event.APPLIED

    def _validating(self, st: AgentState) -> Event:
        rec = st.update
        assert rec is not None
        try:
            rec.wer_after = self.validator.wer(model_path(self.data, rec.candidate_slot), rec.target_hash)
        except DecodeBoundError as exc:  # e.g. a model that never emits blank: refused, never retried
            rec.gate_reasons = [str(exc)]
            self.log("wer_gate", passed=False, wer_before=rec.wer_before, wer_after=None,
                     expected_wer=rec.expected_wer, reasons=rec.gate_reasons)
            return Event.GATE_FAILED
        if rec.previous is not None:
            rec.wer_before = self.validator.wer(model_path(self.data, rec.previous.slot), rec.previous.hash)
        decision = gate_decision(rec.wer_after, rec.wer_before, rec.expected_wer,
                                 GateConfig(self.cfg.max_wer, self.cfg.max_wer_regression, self.cfg.expected_wer_slack))
        rec.gate_reasons = decision.reasons
        self.log("wer_gate", passed=decision.passed, wer_before=rec.wer_before, wer_after=rec.wer_after,
                 expected_wer=rec.expected_wer, reasons=decision.reasons)
        return Event.GATE_PASSED if decision.passed else Event.GATE_FAILED

    def _activating(self, st: AgentState) -> Event:
        rec = st.update
        assert rec is not None
        write_pointer(self.data, Pointer(SlotRef(rec.candidate_slot, rec.to_version, rec.target_hash), rec.previous))
        return Event.ACTIVATED

    def _self_testing(self, st: AgentState) -> Event:
        rec = st.update
        assert rec is not None
        ptr = read_pointer(self.data)
        if ptr.active is None or ptr.active.hash != rec.target_hash:
            raise DataError(f"self-test: the pointer names {_ref(ptr.active)}, expected the candidate")
        text = self.validator.self_test(model_path(self.data, ptr.active.slot), rec.target_hash)
        self.log("self_test_passed", version=rec.to_version, text=text[:80])
        return Event.SELF_TEST_PASSED

    def _rolling_back(self, st: AgentState) -> Event:
        to = (st.rollback or {}).get("to")
        if to is None:
            # The failed model was the device's first: there is nothing to go back to.
            try:
                pointer_path(self.data).unlink(missing_ok=True)
                fsync_dir(pointer_path(self.data).parent)
            except OSError as exc:
                raise os_error(exc, "removing the active pointer") from None
        else:
            load_slot(self.data, to)
            write_pointer(self.data, Pointer(to, None))  # no "previous": it would be the model just left
        return Event.ROLLBACK_DONE  # the version left is refused by the move's effects (_finish)

    # terminal states: carry out the effects of the move that led here, spool the report, back to idle
    def _finish(self, st: AgentState) -> Event:
        rec = st.update
        effects = self.lifecycle.entered_by(st.state, st.failed_in).effects
        self._carry_out(st, effects)
        if st.state != State.FAILED:
            st.last_error = None
            st.failed_in = None
        report = self._report(st, st.state.value)
        if Effect.REPORT in effects and (rec is not None or st.rollback is not None):
            started = rec.started_at if rec is not None else time.time()
            self.outbox.add(report_key(self.cfg.model_id, self.cfg.channel, self.cfg.device_id, started), report)
        st.last_outcome = {k: report[k] for k in ("outcome", "from_version", "to_version", "wer_before",
                                                  "wer_after", "error_class", "error", "finished_at")}
        st.rollback = None
        if rec is not None:
            # The attempt is over: its record goes with it, so a later failed check reports no versions or
            # WERs of this one (and adds no seconds to it). Only a failed download is worth resuming.
            st.resume = rec if Effect.KEEP_FOR_RESUME in effects else None
        st.update = None
        self._outcome = dict(st.last_outcome)
        return Event.REPORTED

    def _carry_out(self, st: AgentState, effects: frozenset[Effect]) -> None:
        """The effects of a move into a terminal state (each idempotent: a crash repeats them)."""
        rec = st.update
        if rec is not None:
            if Effect.RESTORE_POINTER in effects:
                self._restore_pointer(rec)
            if Effect.DISCARD_CANDIDATE in effects:
                discard_model(self.data, rec.candidate_slot)
            if Effect.DISCARD_DOWNLOAD in effects:
                for path in self._download_paths(rec):
                    path.unlink(missing_ok=True)
        if Effect.REFUSE_VERSION in effects:
            left = (st.rollback or {}).get("from")  # rolled back: the version left; refused: the candidate
            version = left.version if left is not None else rec.to_version if rec is not None else None
            if version is not None and version not in st.refused:
                st.refused.append(version)

    def _restore_pointer(self, rec: UpdateRecord) -> None:
        if read_pointer(self.data).active == rec.previous:
            return
        if rec.previous is None:
            pointer_path(self.data).unlink(missing_ok=True)
        else:
            write_pointer(self.data, Pointer(rec.previous, None))
        self.log("pointer_restored", active=_ref(rec.previous))

    def _report(self, st: AgentState, outcome: str) -> dict[str, Any]:
        from device_agent.agent.telemetry import REPORT_FORMAT

        rec = st.update
        rb = st.rollback or {}
        failed = st.state == State.FAILED
        base = {"format": REPORT_FORMAT, "device_id": self.cfg.device_id, "model_id": self.cfg.model_id,
                "channel": self.cfg.channel, "outcome": outcome, "finished_at": time.time(),
                "error_class": (st.last_error or {}).get("class") if failed else None,
                "error": (st.last_error or {}).get("message") if failed else None,
                "failed_in": st.failed_in if failed else None}
        if rec is None:  # operator rollback
            frm, to = rb.get("from"), rb.get("to")
            return {**base, "kind": "rollback", "from_version": frm.version if frm else None,
                    "to_version": to.version if to else None, "wer_before": None, "wer_after": None,
                    "bytes_downloaded": 0, "bytes_refetched": 0, "durations": {}}
        return {**base, "attempt_id": rec.attempt_id, "target": rec.target, "kind": rec.kind,
                "from_version": rec.from_version, "to_version": rec.to_version, "target_hash": rec.target_hash,
                "wer_before": rec.wer_before, "wer_after": rec.wer_after, "expected_wer": rec.expected_wer,
                "gate_reasons": rec.gate_reasons, "bytes_downloaded": rec.bytes_downloaded,
                "bytes_refetched": rec.bytes_refetched, "resumed_from": rec.resumed_from, "length": rec.length,
                "started_at": rec.started_at, "durations": rec.durations}

    def _heartbeat(self, st: AgentState, outcome: dict[str, Any]) -> None:
        """Leave this check's status record in the store (rate-limited; never fails the check)."""
        failed = outcome.get("outcome") == "failed"
        active = read_pointer(self.data).active
        error = (st.last_error or {}) if failed else {}
        now = self.clock().timestamp() if self.clock else time.time()
        beat = Heartbeat(self.cfg.device_id, self.cfg.model_id, self.cfg.channel, now,
                         active.version if active else None, str(outcome.get("outcome")),
                         error.get("class"), failure_reason(error.get("class"), self._error if failed else None),
                         error.get("message"), 0, metadata_expiry(self.data / "metadata"), list(st.refused))
        self.heartbeats.record(beat, failed)
        try:
            self.heartbeats.send(self.report_store, heartbeat_key(self.cfg.model_id, self.cfg.channel,
                                                                  self.cfg.device_id), beat)
        except OtaError as exc:
            self.log("heartbeat_not_sent", level="warning", error=f"{type(exc).__name__}: {exc}")

    def _flush_reports(self) -> None:
        try:
            sent, err = self.outbox.flush(self.report_store)
        except OtaError as exc:  # e.g. a bad report_store_url: never blocks updates
            sent, err = 0, exc
        if sent or err:
            self.log("reports_flushed", sent=sent, error=None if err is None else f"{type(err).__name__}: {err}",
                     level="warning" if err else "info")

    _actions: dict[State, Callable[[Agent, AgentState], Event]] = {
        State.CHECKING: _checking, State.DOWNLOADING: _downloading, State.VERIFYING: _verifying,
        State.APPLYING: _applying, State.VALIDATING: _validating, State.ACTIVATING: _activating,
        State.SELF_TESTING: _self_testing, State.ROLLING_BACK: _rolling_back,
        State.COMMITTED: _finish, State.REFUSED: _finish, State.ROLLED_BACK: _finish, State.FAILED: _finish,
    }


def _ref(ref: SlotRef | None) -> dict[str, str] | None:
    return None if ref is None else {"slot": ref.slot, "version": ref.version, "hash": ref.hash}


def active_model_file(data_dir: Path) -> tuple[Path, SlotRef] | None:
    """Where the active model is (for the runtime that serves transcriptions), or None."""
    ref = read_pointer(Path(data_dir)).active
    return None if ref is None else (model_path(Path(data_dir), ref.slot), ref)
