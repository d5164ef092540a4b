"""Staged rollouts that advance on the fleet's reports and halt themselves.

A rollout moves one published version of a channel through cohorts (by
default 1% -> 10% -> 50% -> 100% of devices, the channel's rollout
percentage). Each `step` reads the devices' reports for that version and
decides, with the numbers that drove the decision:

- halt, when (after `min_halt_reports` reports) the share of failed
  updates, gate refusals or rollbacks, or the median WER change measured by
  the devices' own gates, passes its threshold. Halting sets the rollout to
  0% (no new installs) or, with `revert`, makes the previous version current
  at 100%, so devices that took the release go back through the small
  reverse bundle published at plan time instead of a full model;
- advance to the next cohort, when the cohort has enough reports, the
  success share is high enough and the median WER change is within bound;
- complete, when the last cohort (100%) passed those checks;
- otherwise wait.

Failures caused by the store (transport errors) are shown but do not halt:
they say nothing about the release, and an outage must not stop a good one.

The plan, the current cohort and every decision are persisted in the store
(`rollouts/<model>/<channel>.json`, replaced with If-Match), so a restarted
controller resumes where it stopped and two controllers cannot both act.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from device_agent import errors
from device_agent.agent.heartbeat import HEARTBEATS_PREFIX
from device_agent.errors import ConfigError, DataError, StoreConflictError, StoreNotFoundError
from device_agent.version import parse_version
from packager.fleet_status import ReportReader

ROLLOUTS_PREFIX = "rollouts/"
STATE_FORMAT = 1
STATUSES = ("running", "halted", "completed")
_TRANSPORT_ERRORS = {name for name, cls in vars(errors).items()
                     if isinstance(cls, type) and issubclass(cls, errors.TransportError)}


@dataclass(frozen=True)
class RolloutPlan:
    model_id: str
    channel: str
    version: int  # the release being rolled out
    previous_version: int | None  # where a revert goes back to
    cohorts: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)  # rollout percentages, increasing, ending at 100
    min_reports: int = 20  # reports needed from a cohort before it may advance ...
    cohort_report_share: float = 0.5  # ... and at least this share of its expected devices
    min_success: float = 0.95  # committed share of the version's reports needed to advance
    max_wer_change: float = 0.01  # median (after - before) WER allowed to advance
    min_halt_reports: int = 5  # no halt on fewer reports than this (one early failure is noise)
    halt_failed_share: float = 0.05
    halt_refused_share: float = 0.10
    halt_rolled_back_share: float = 0.05
    halt_wer_regression: float = 0.02  # median (after - before) WER that halts
    revert: bool = False  # on halt, make previous_version current again (needs previous_version)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cohorts", tuple(float(c) for c in self.cohorts))
        parse_version(self.version, "rollout version", ConfigError)
        if self.previous_version is not None:
            parse_version(self.previous_version, "rollout previous_version", ConfigError)
        c = self.cohorts
        if not c or any(not 0 < x <= 100 for x in c) or list(c) != sorted(set(c)) or c[-1] != 100.0:
            raise ConfigError(f"cohorts {list(c)}: expected increasing percentages in (0, 100] ending at 100")
        for name in ("min_reports", "min_halt_reports"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"rollout {name} {getattr(self, name)!r}: expected an integer >= 1")
        for name in ("cohort_report_share", "min_success", "halt_failed_share", "halt_refused_share",
                     "halt_rolled_back_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"rollout {name} {getattr(self, name)!r}: expected a share in [0, 1]")
        if self.revert and self.previous_version is None:
            raise ConfigError("rollout revert needs the previous version to go back to")
        if self.previous_version == self.version:
            raise ConfigError(f"rollout of version {self.version}: the previous version must differ")


@dataclass
class RolloutState:
    plan: RolloutPlan
    cohort: int = 0  # index into plan.cohorts
    status: str = "running"  # running | halted | completed
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {"format": STATE_FORMAT, "plan": asdict(self.plan), "cohort": self.cohort, "status": self.status,
               "decisions": self.decisions}
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutState:
        try:
            doc = json.loads(data)
            if doc["format"] != STATE_FORMAT:
                raise ConfigError(f"rollout state format {doc['format']}: expected {STATE_FORMAT}")
            plan = RolloutPlan(**{**doc["plan"], "cohorts": tuple(doc["plan"]["cohorts"]), **_plan_versions(doc["plan"])})
            cohort, status, decisions = doc["cohort"], doc["status"], doc["decisions"]
            # the controller indexes the cohorts and reads every decision: check them here, once
            if type(cohort) is not int or not 0 <= cohort < len(plan.cohorts):
                raise _malformed(f"cohort {cohort!r:.20} is not an index into {len(plan.cohorts)} cohorts")
            if status not in STATUSES:
                raise _malformed(f"status {status!r:.20} is not one of {STATUSES}")
            if not isinstance(decisions, list) or not all(isinstance(d, dict) and isinstance(d.get("action"), str)
                                                          for d in decisions):
                raise _malformed("decisions must be a list of objects with an action")
            return cls(plan, cohort, status, decisions)
        except DataError:  # already the project's error (ConfigError too)
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _malformed(str(exc)) from None


def _malformed(reason: str) -> DataError:
    return DataError(f"rollout state is malformed ({reason}); expected a file written by ota rollout plan")


def _plan_versions(plan: dict[str, Any]) -> dict[str, Any]:
    """A stored plan's versions as integers (earlier releases stored decimal strings)."""
    return {k: parse_version(plan[k], f"rollout state {k}", ConfigError, legacy_text=True)
            for k in ("version", "previous_version") if plan.get(k) is not None}


def parse_cohorts(text: str) -> tuple[float, ...]:
    """'1,10,50,100' -> (1.0, 10.0, 50.0, 100.0); RolloutPlan checks the order and the final 100."""
    try:
        return tuple(float(c) for c in text.split(","))
    except ValueError:
        raise ConfigError(f"cohorts {text!r}: expected comma-separated percentages, e.g. 1,10,50,100") from None


def halt_target(channel: Any, version: int) -> int | None:
    """The version a halted rollout of `version` goes back to: the channel's current version if it is
    not the release, else the one version the release's diffs start from (None if that is not one)."""
    if channel is None:
        return None
    if channel.current_version != version:
        return channel.current_version
    bases = {e.from_version for e in channel.edges if e.to_version == version and e.from_version is not None}
    return bases.pop() if len(bases) == 1 else None


def state_key(model_id: str, channel: str) -> str:
    return f"{ROLLOUTS_PREFIX}{model_id}/{channel}.json"


@dataclass(frozen=True)
class CohortNumbers:
    """What the reports say about the release (latest report per device)."""

    reports: int
    committed: int
    refused: int
    failed: int  # failures of the release (not of the store)
    transport_failed: int
    rolled_back: int
    median_wer_change: float | None
    fleet: int  # devices that sent heartbeats on the channel (the fleet size estimate)
    ignored: int  # malformed or oversized records skipped

    def share(self, count: int) -> float:
        judged = self.reports - self.transport_failed
        return count / judged if judged else 0.0


def measure(reports: list[dict[str, Any]], plan: RolloutPlan, fleet: int, ignored: int) -> CohortNumbers:
    latest: dict[str, dict[str, Any]] = {}
    for r in reports:
        version = r.get("from_version") if r.get("kind") == "rollback" else r.get("to_version")
        if r["channel"] != plan.channel or version != plan.version:
            continue
        key = r["device_id"]
        if key not in latest or (r.get("finished_at") or 0) >= (latest[key].get("finished_at") or 0):
            latest[key] = r
    rs = list(latest.values())
    transport = sum(r["outcome"] == "failed" and r.get("error_class") in _TRANSPORT_ERRORS for r in rs)
    changes = [r["wer_after"] - r["wer_before"] for r in rs
               if r.get("wer_after") is not None and r.get("wer_before") is not None]
    return CohortNumbers(
        reports=len(rs), committed=sum(r["outcome"] == "committed" for r in rs),
        refused=sum(r["outcome"] == "refused" for r in rs),
        failed=sum(r["outcome"] == "failed" for r in rs) - transport, transport_failed=transport,
        rolled_back=sum(r["outcome"] == "rolled_back" for r in rs),
        median_wer_change=round(statistics.median(changes), 4) if changes else None, fleet=fleet, ignored=ignored)


def decide(state: RolloutState, n: CohortNumbers) -> tuple[str, str]:
    """(action, reason): action is halt, advance, complete or wait. Pure."""
    plan = state.plan
    judged = n.reports - n.transport_failed
    if judged >= plan.min_halt_reports:
        for label, count, limit in (("failed", n.failed, plan.halt_failed_share),
                                    ("refused by the WER gate", n.refused, plan.halt_refused_share),
                                    ("rolled back", n.rolled_back, plan.halt_rolled_back_share)):
            if n.share(count) > limit:
                return "halt", f"{n.share(count):.1%} of {judged} reports {label} (limit {limit:.1%})"
        if n.median_wer_change is not None and n.median_wer_change > plan.halt_wer_regression:
            return "halt", (f"median WER change {n.median_wer_change:+.4f} above the halt bound "
                            f"{plan.halt_wer_regression:+.4f}")
    percent = plan.cohorts[state.cohort]
    expected = n.fleet * percent / 100.0
    needed = max(1, min(math.ceil(expected), max(plan.min_reports, math.ceil(plan.cohort_report_share * expected))))
    if judged < needed:
        return "wait", f"{judged} of {needed} reports needed at {percent:g}% (fleet of {n.fleet})"
    if n.share(n.committed) < plan.min_success:
        return "wait", f"success {n.share(n.committed):.1%} below {plan.min_success:.1%}"
    if n.median_wer_change is not None and n.median_wer_change > plan.max_wer_change:
        return "wait", f"median WER change {n.median_wer_change:+.4f} above {plan.max_wer_change:+.4f}"
    last = state.cohort == len(plan.cohorts) - 1
    why = (f"{judged} reports, success {n.share(n.committed):.1%}, median WER change "
           f"{'n/a' if n.median_wer_change is None else f'{n.median_wer_change:+.4f}'}")
    return ("complete" if last else "advance"), why


class RolloutController:
    """Runs one channel's rollout against a store, persisting every decision."""

    def __init__(self, store, keys_dir, model_id: str, channel: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys_dir = keys_dir
        self.key = state_key(model_id, channel)
        self.model_id, self.channel = model_id, channel
        self.clock = clock
        self.reader = ReportReader(store, model_id, channel)

    # --- persistence ------------------------------------------------------------------
    def load(self) -> tuple[RolloutState, str]:
        info = self.store.head(self.key)
        if info is None:
            raise StoreNotFoundError(f"no rollout planned for {self.model_id}/{self.channel} "
                                     f"({self.key}); expected ota rollout plan first")
        return RolloutState.from_json(self.store.get(self.key)), info.etag

    def _save(self, state: RolloutState, etag: str | None) -> None:
        try:
            if etag is None:
                self.store.put(self.key, state.to_json(), if_none_match=True)
            else:
                self.store.put(self.key, state.to_json(), if_match=etag)
        except StoreConflictError:
            raise StoreConflictError(f"{self.key} changed while deciding (another controller?); nothing was "
                                     "applied twice, re-run to continue from the stored state") from None

    # --- operations -------------------------------------------------------------------
    def plan_release(self, version: int, *, previous_version: int | None = None, revert_bundle: bytes | None = None,
                     **settings: Any) -> RolloutPlan:
        """Plan a staged rollout of published `version` (what `ota rollout plan` does).

        A halt goes back to `previous_version`, by default the channel's current version (or, when
        the release is already current, the one version its diffs start from). With `revert_bundle`
        (a bundle from `version` back to it) a halt makes that version current again; the bundle is
        published, listed but not current, once the plan itself is known to be valid."""
        from packager.publish import publish_bundle, read_channel

        if previous_version is None:
            previous_version = halt_target(read_channel(self.store, self.keys_dir, self.model_id, self.channel),
                                           version)
        plan = RolloutPlan(self.model_id, self.channel, version, previous_version, revert=revert_bundle is not None,
                           **settings)  # ConfigError before anything is written
        if revert_bundle is not None:
            publish_bundle(self.store, self.keys_dir, revert_bundle, channel=self.channel, make_current=False)
        self.plan(plan)
        return plan

    def plan(self, plan: RolloutPlan, *, replace_finished: bool = True) -> RolloutState:
        """Start a rollout: persist the plan, then open the first cohort."""
        from packager.publish import read_channel, set_rollout

        channel = read_channel(self.store, self.keys_dir, plan.model_id, plan.channel)
        if channel is None or not any(e.to_version == plan.version for e in channel.edges):
            raise ConfigError(f"version {plan.version} is not published on {plan.model_id}/{plan.channel}; "
                              "publish it first (ota publish --rollout 0)")
        if plan.revert and not any(e.to_version == plan.previous_version and e.from_version == plan.version
                                   for e in channel.edges):
            raise ConfigError(f"revert to {plan.previous_version} needs a bundle from {plan.version} to "
                              f"{plan.previous_version} on the channel (publish it with --no-current)")
        etag = None
        info = self.store.head(self.key)
        if info is not None:
            old = RolloutState.from_json(self.store.get(self.key))
            if old.status == "running" or not replace_finished:
                raise ConfigError(f"a rollout of version {old.plan.version} is still {old.status} on "
                                  f"{plan.model_id}/{plan.channel}; halt it or let it finish first")
            etag = info.etag
        state = RolloutState(plan)
        self._log(state, "plan", f"cohorts {', '.join(f'{c:g}%' for c in plan.cohorts)}", None)
        self._save(state, etag)
        set_rollout(self.store, self.keys_dir, plan.model_id, plan.channel, plan.cohorts[0], plan.version,
                    now=self._now())
        return state

    def step(self) -> dict[str, Any]:
        """Read new reports, decide once, apply and persist. Returns the decision."""
        state, etag = self.load()
        if state.status != "running":
            return {"action": "none", "reason": f"rollout is {state.status}", "status": state.status}
        # The fleet size is the number of devices with a heartbeat on the channel: a listing, no reads.
        fleet = len(self.store.list(f"{HEARTBEATS_PREFIX}{self.model_id}/{self.channel}/"))
        numbers = measure(self.reader.read(), state.plan, fleet, self.reader.warnings.total())
        action, reason = decide(state, numbers)
        if action == "wait":
            return {"action": action, "reason": reason, "status": state.status, "numbers": asdict(numbers)}
        # Persist the decision first (If-Match): a crash before the channel write is
        # repaired by `resume`, and a second controller loses instead of acting twice.
        if action == "advance":
            state.cohort += 1
        elif action == "complete":
            state.status = "completed"
        else:
            state.status = "halted"
        decision = self._log(state, action, reason, numbers)
        self._save(state, etag)
        self._apply(state)
        return {**decision, "status": state.status}

    def resume(self) -> RolloutState:
        """Make the channel match the stored state (after a crash between save and apply)."""
        state, _ = self.load()
        self._apply(state)
        return state

    def _apply(self, state: RolloutState) -> None:
        from packager.publish import read_channel, set_rollout

        plan = state.plan
        if state.status == "halted":
            if plan.revert:
                want_version, want_percent = plan.previous_version, 100.0
            else:
                want_version, want_percent = plan.version, 0.0
        else:
            want_version, want_percent = plan.version, plan.cohorts[state.cohort]
        current = read_channel(self.store, self.keys_dir, plan.model_id, plan.channel)
        if current is not None and (current.current_version, current.rollout_percent) == (want_version, want_percent):
            return  # already applied: steps are idempotent
        set_rollout(self.store, self.keys_dir, plan.model_id, plan.channel, want_percent, want_version,
                    now=self._now())

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _log(self, state: RolloutState, action: str, reason: str, numbers: CohortNumbers | None) -> dict[str, Any]:
        entry = {"at": round(self.clock(), 3), "action": action, "reason": reason,
                 "cohort_percent": state.plan.cohorts[state.cohort],
                 "numbers": None if numbers is None else asdict(numbers)}
        state.decisions.append(entry)
        return entry

