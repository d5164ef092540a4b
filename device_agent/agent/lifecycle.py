"""The update lifecycle: one explicit transition table, no I/O.

Every step of an update is a (state, event) -> next state row of
`TRANSITIONS`; nothing else moves the agent. `Lifecycle.fire` refuses any
event the table does not list for the current state, so no step can run out
of order (no activation before validation, no commit before the self-test).
The daemon persists the state after every transition and, when restarted,
re-runs the action of the state it finds: each action is idempotent.
"""
from __future__ import annotations

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


S, E = State, Event
# (state, event, next state): the whole lifecycle. docs/agent.md shows the same table.
TRANSITION_ROWS: tuple[tuple[State, Event, State], ...] = (
    (S.IDLE, E.CHECK, S.CHECKING),
    (S.IDLE, E.ROLLBACK, S.ROLLING_BACK),
    (S.CHECKING, E.NO_UPDATE, S.IDLE),
    (S.CHECKING, E.UPDATE_FOUND, S.DOWNLOADING),
    (S.CHECKING, E.ERROR, S.FAILED),
    (S.DOWNLOADING, E.DOWNLOADED, S.VERIFYING),
    (S.DOWNLOADING, E.ERROR, S.FAILED),
    (S.VERIFYING, E.VERIFIED, S.APPLYING),
    (S.VERIFYING, E.ERROR, S.FAILED),
    (S.APPLYING, E.APPLIED, S.VALIDATING),
    (S.APPLYING, E.ERROR, S.FAILED),
    (S.VALIDATING, E.GATE_PASSED, S.ACTIVATING),
    (S.VALIDATING, E.GATE_FAILED, S.REFUSED),
    (S.VALIDATING, E.ERROR, S.FAILED),
    (S.ACTIVATING, E.ACTIVATED, S.SELF_TESTING),
    (S.ACTIVATING, E.ERROR, S.FAILED),  # FAILED puts the previous pointer back
    (S.SELF_TESTING, E.SELF_TEST_PASSED, S.COMMITTED),
    (S.SELF_TESTING, E.ERROR, S.ROLLING_BACK),  # the new model does not load/hash/transcribe: go back
    (S.ROLLING_BACK, E.ROLLBACK_DONE, S.ROLLED_BACK),
    (S.ROLLING_BACK, E.ERROR, S.FAILED),
    (S.COMMITTED, E.REPORTED, S.IDLE),
    (S.REFUSED, E.REPORTED, S.IDLE),
    (S.ROLLED_BACK, E.REPORTED, S.IDLE),
    (S.FAILED, E.REPORTED, S.IDLE),
)
del S, E

TRANSITIONS: dict[tuple[State, Event], State] = {(s, e): n for s, e, n in TRANSITION_ROWS}
assert len(TRANSITIONS) == len(TRANSITION_ROWS), "duplicate (state, event) row"

TERMINAL = frozenset({State.COMMITTED, State.REFUSED, State.ROLLED_BACK, State.FAILED})
# States whose action may have changed the active pointer: a failure there must restore it.
POINTER_MAY_HAVE_MOVED = frozenset({State.ACTIVATING, State.SELF_TESTING, State.ROLLING_BACK})


def allowed_events(state: State) -> list[Event]:
    return [e for (s, e) in TRANSITIONS if s == state]


def next_state(state: State | str, event: Event | str) -> State:
    """The table lookup; LifecycleError names what the state would accept."""
    try:
        s, e = State(state), Event(event)
    except ValueError as exc:
        raise LifecycleError(f"unknown lifecycle state or event: {exc}") from None
    nxt = TRANSITIONS.get((s, e))
    if nxt is None:
        allowed = ", ".join(a.value for a in allowed_events(s))
        raise LifecycleError(f"cannot '{e.value}' while '{s.value}'; this state accepts: {allowed}")
    return nxt


class Lifecycle:
    """Holds the current state and moves it only along the table."""

    def __init__(self, state: State = State.IDLE) -> None:
        self.state = State(state)

    def fire(self, event: Event) -> State:
        self.state = next_state(self.state, event)
        return self.state

    def can(self, event: Event) -> bool:
        return (self.state, Event(event)) in TRANSITIONS

    @property
    def busy(self) -> bool:
        """An update (or rollback) is in progress: a restart must resume it."""
        return self.state != State.IDLE
