"""Step-level progress of training loops, for whoever is watching.

Training code announces its steps through `step_reporter()`; the command line installs a reporter that
draws a progress bar with step counts, loss and ETA. Without a reporter the
calls cost nothing.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class StepReporter(Protocol):
    def start(self, description: str, total: int, completed: int) -> None: ...

    def advance(self, loss: float) -> None: ...

    def epoch(self, epoch: int, epochs: int) -> None: ...

    def finish(self) -> None: ...


class _Silent:
    def start(self, description: str, total: int, completed: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass

    def epoch(self, epoch: int, epochs: int) -> None:
        pass

    def finish(self) -> None:
        pass


_reporter: ContextVar[StepReporter] = ContextVar("step_reporter", default=_Silent())


@contextmanager
def reporting_to(reporter: StepReporter) -> Iterator[StepReporter]:
    """Send the progress of training loops run inside this block to `reporter`."""
    token = _reporter.set(reporter)
    try:
        yield reporter
    finally:
        _reporter.reset(token)


def step_reporter() -> StepReporter:
    """Where a training loop reports: `start(what, total, done)`, then `epoch(i, n)` and
    `advance(loss)` per optimizer step, then `finish()`."""
    return _reporter.get()
