"""The update lifecycle: one explicit transition table, no I/O.

Every step of an update is a row of `LIFECYCLE`: (state, event) -> next
state, with the effects of that move. Nothing else moves the agent or decides
what a move does: the daemon fires every event through this one object, so
no step can run out of order (no activation before validation, no commit
before the self-test), and whether a move restores the pointer, refuses a
version or is reported is read from its row, not decided case by case.

The daemon persists the state after every transition and, when restarted,
re-runs the action of the state it finds: each action is idempotent. The
effects of a move into a terminal state are carried out by that state's
action, so a crash between the move and the tidy-up repeats them; the one
effect the next state's action needs first (`START_ROLLBACK`) is recorded
with the move itself.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from device_agent.errors import LifecycleError


class State(str, Enum):
    IDLE = "idle"  # nothing in progress
    CHECKING = "checking"  # TUF refresh, channel, rollout, plan
    DOWNLOADING = "downloading"  # resumable ranged GETs into downloads/*.part
    VERIFYING = "verifying"  # signed length + hashes, then bundle parse
    APPLYING = "applying"  # result written into the inactive slot, hash checked
    VALIDATING = "validating"  # WER gate on local data
    ACTIVATING = "activating"  # atomic pointer swap to the candidate slot
    SELF_TESTING = "self_testing"  # the new active model loads, hashes, transcribes
    ROLLING_BACK = "rolling_back"  # pointer swapped back to the previous slot
    COMMITTED = "committed"  # terminal: the new model is active
    REFUSED = "refused"  # terminal: WER gate said no; version never retried
    ROLLED_BACK = "rolled_back"  # terminal: previous model active again
    FAILED = "failed"  # terminal: error; the previous model stays active


class Event(str, Enum):
    CHECK = "check"
    NO_UPDATE = "no_update"
    UPDATE_FOUND = "update_found"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    APPLIED = "applied"
    GATE_PASSED = "gate_passed"
    GATE_FAILED = "gate_failed"
    ACTIVATED = "activated"
    SELF_TEST_PASSED = "self_test_passed"
    ROLLBACK = "rollback"  # operator asked for the previous model
    ROLLBACK_DONE = "rollback_done"
    REPORTED = "reported"  # the attempt's outcome is recorded; back to idle
    ERROR = "error"


class Effect(str, Enum):
    """What a move does besides changing the state (the daemon carries it out)."""

    START_ROLLBACK = "start_rollback"  # go back from the candidate to the model active before the update
    RESTORE_POINTER = "restore_pointer"  # the pointer names the model active before the update again
    DISCARD_CANDIDATE = "discard_candidate"  # delete the candidate model from its slot
    REFUSE_VERSION = "refuse_version"  # the version refused or rolled back from is never installed again
    DISCARD_DOWNLOAD = "discard_download"  # delete the downloaded bundle (and its .part)
    KEEP_FOR_RESUME = "keep_for_resume"  # keep the attempt's record: a retry resumes its download
    REPORT = "report"  # spool the attempt's report for the fleet


@dataclass(frozen=True)
class Transition:
    state: State
    event: Event
    next: State
    effects: frozenset[Effect] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "effects", frozenset(self.effects))


class Lifecycle:
    """The transition table. `move` is the only way from one state to the next."""

    def __init__(self, rows: Iterable[Transition]) -> None:
        self.rows: tuple[Transition, ...] = tuple(rows)
        self._rows = {(r.state, r.event): r for r in self.rows}
        if len(self._rows) != len(self.rows):
            raise LifecycleError("duplicate (state, event) row in the lifecycle table")
        # terminal states only report and go back to idle
        self.terminal = frozenset(s for s in State if self.allowed(s) == [Event.REPORTED])

    def allowed(self, state: State) -> list[Event]:
        return [r.event for r in self.rows if r.state == state]

    def can(self, state: State | str, event: Event | str) -> bool:
        return (State(state), Event(event)) in self._rows

    def move(self, state: State | str, event: Event | str) -> Transition:
        """The row for `event` in `state`; LifecycleError names what the state would accept."""
        try:
            s, e = State(state), Event(event)
        except ValueError as exc:
            raise LifecycleError(f"unknown lifecycle state or event: {exc}") from None
        row = self._rows.get((s, e))
        if row is None:
            allowed = ", ".join(a.value for a in self.allowed(s))
            raise LifecycleError(f"cannot '{e.value}' while '{s.value}'; this state accepts: {allowed}")
        return row

    def entered_by(self, state: State, failed_in: State | str | None) -> Transition:
        """The row that led into terminal `state`: for FAILED the error row of the state that
        failed (`failed_in`, persisted with the error), for the others their one row in."""
        if state == State.FAILED:
            return self.move(State(failed_in or State.IDLE), Event.ERROR)
        rows = [r for r in self.rows if r.next == state]
        if len(rows) != 1:
            raise LifecycleError(f"'{state.value}' is entered by {len(rows)} rows; expected one")
        return rows[0]


S, E, X = State, Event, Effect
ENDS = frozenset({X.DISCARD_DOWNLOAD, X.REPORT})  # a finished attempt: report it, drop its bundle
FAILS = frozenset({X.REPORT, X.KEEP_FOR_RESUME})  # a failed attempt: report it, resume its download later
LIFECYCLE = Lifecycle(Transition(*row) for row in (
    (S.IDLE, E.CHECK, S.CHECKING),
    (S.IDLE, E.ROLLBACK, S.ROLLING_BACK),
    (S.CHECKING, E.NO_UPDATE, S.IDLE),
    (S.CHECKING, E.UPDATE_FOUND, S.DOWNLOADING),
    (S.CHECKING, E.ERROR, S.FAILED),  # store down, bad metadata: no attempt was made, logged but not reported
    (S.DOWNLOADING, E.DOWNLOADED, S.VERIFYING),
    (S.DOWNLOADING, E.ERROR, S.FAILED, FAILS),
    (S.VERIFYING, E.VERIFIED, S.APPLYING),
    (S.VERIFYING, E.ERROR, S.FAILED, FAILS),
    (S.APPLYING, E.APPLIED, S.VALIDATING),
    (S.APPLYING, E.ERROR, S.FAILED, FAILS),
    (S.VALIDATING, E.GATE_PASSED, S.ACTIVATING),
    (S.VALIDATING, E.GATE_FAILED, S.REFUSED, ENDS | {X.DISCARD_CANDIDATE, X.REFUSE_VERSION}),
    (S.VALIDATING, E.ERROR, S.FAILED, FAILS),
    (S.ACTIVATING, E.ACTIVATED, S.SELF_TESTING),
    (S.ACTIVATING, E.ERROR, S.FAILED, FAILS | {X.RESTORE_POINTER}),
    (S.SELF_TESTING, E.SELF_TEST_PASSED, S.COMMITTED, ENDS),
    (S.SELF_TESTING, E.ERROR, S.ROLLING_BACK, {X.START_ROLLBACK}),  # the new model does not load/hash/transcribe
    (S.ROLLING_BACK, E.ROLLBACK_DONE, S.ROLLED_BACK, ENDS | {X.REFUSE_VERSION}),
    (S.ROLLING_BACK, E.ERROR, S.FAILED, {X.REPORT}),
    (S.COMMITTED, E.REPORTED, S.IDLE),
    (S.REFUSED, E.REPORTED, S.IDLE),
    (S.ROLLED_BACK, E.REPORTED, S.IDLE),
    (S.FAILED, E.REPORTED, S.IDLE),
))
del S, E, X
