"""A run steered from outside while it sends: a Ray shard's share of the job's limits.

The runner hands a `RunHandle` to `Control.watch`, which runs beside the pool for the life of
the sending: it may move the run's request and token rates (`regrant`), raise its budget
(`raise_budget`), read its counters and rows done, and stop it as Ctrl-C would (`interrupt`).
The runner knows nothing of who steers (shards.py's coordinator, over Ray, in practice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .progress import Progress
from .records import Result, RunCounts

if TYPE_CHECKING:
    from .attempts import Attempts


class Control(Protocol):
    async def watch(self, run: RunHandle) -> None: ...


class Tally(Progress):
    """A progress display that shows nothing and keeps the rows done (a shard's)."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        self.total, self.done = total_rows, done

    def advance(self, n: int) -> None:
        self.done += n

    def row_finished(self, result: Result) -> None:
        self.done += 1


class RunHandle:
    """What a `Control` may read and move in a run that is sending."""

    def __init__(self, attempts: Attempts, progress: Progress, interrupt: Callable[[bool], None]) -> None:
        self.attempts = attempts
        self.progress = progress
        self._interrupt = interrupt

    def watched(self, control: Control | None) -> asyncio.Task[None] | None:
        return None if control is None else asyncio.create_task(control.watch(self))

    @property
    def counts(self) -> RunCounts:
        return self.attempts.counts

    @property
    def rows_done(self) -> int:
        return self.progress.done if isinstance(self.progress, Tally) else 0

    @property
    def spent_pusd(self) -> int:
        """Money this run may have spent: answers' costs, and the worst case of those unanswered."""
        return self.attempts.budget.run_pusd

    def recent_starts(self) -> int:
        """The run's starts that still count at the service (its pacer's last window)."""
        return self.attempts.pacer.recent_starts(time.monotonic())

    def regrant(self, rpm: int, tpm: int | None) -> None:
        self.attempts.pacer.regrant(rpm)
        if self.attempts.tokens is not None and tpm is not None:
            self.attempts.tokens.regrant(tpm)

    def raise_budget(self, ceiling_pusd: int) -> None:
        """A new ceiling on the job's spending (its store's, earlier runs included)."""
        budget = self.attempts.budget
        if budget.max_cost_pusd is not None and ceiling_pusd > budget.max_cost_pusd:
            budget.max_cost_pusd = ceiling_pusd

    def interrupt(self) -> None:
        self._interrupt(True)
