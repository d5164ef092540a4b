"""Rich progress bars for training commands: steps, loss, elapsed time and ETA.

Log lines are printed above the bar (never through it), and on a pipe or a
dumb terminal rich prints nothing but those lines.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class RichSteps:
    """A StepReporter (diffing.progress) drawing one bar per training loop."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task: TaskID | None = None
        self.label = ""
        self.stage = ""  # the demo's current stage, from its "[stage] ..." lines
        self.loss_sum, self.losses = 0.0, 0

    def start(self, description: str, total: int, completed: int) -> None:
        self.label = f"{self.stage} {description}".strip()
        self.loss_sum, self.losses = 0.0, 0
        self.task = self.progress.add_task(description, total=total, completed=completed, loss="-")

    def epoch(self, epoch: int, epochs: int) -> None:
        if self.task is not None:
            self.loss_sum, self.losses = 0.0, 0
            self.progress.update(self.task, description=f"{self.label} epoch {epoch}/{epochs}")

    def advance(self, loss: float) -> None:
        if self.task is not None:
            self.loss_sum, self.losses = self.loss_sum + loss, self.losses + 1
            self.progress.update(self.task, advance=1, loss=f"{self.loss_sum / self.losses:.3f}")

    def finish(self) -> None:
        if self.task is not None:
            self.progress.refresh()
        self.task = None

    def log(self, line: str) -> None:
        if line.startswith("[") and line.endswith("] ..."):
            self.stage = line[1:-5]
        self.progress.console.print(line, markup=False, highlight=False)


@contextmanager
def training_progress() -> Iterator[RichSteps]:
    """Progress bars on stderr for every training loop run inside the block."""
    from diffing.progress import reporting_to

    steps = RichSteps(Console(stderr=True))
    with steps.progress, reporting_to(steps):
        yield steps
