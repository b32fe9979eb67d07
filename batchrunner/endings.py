"""How a run ends: its exit code once it went through its input, and its `runs` row."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from .errors import ExitCode
from .store import Store

if TYPE_CHECKING:
    from .attempts import Attempts
    from .records import RunCounts
    from .writer import CheckpointWriter

log = logging.getLogger("batchrunner")


def finished(table: dict[str, int], *, limited: bool, live: int = 0) -> tuple[ExitCode, str]:
    """The exit code of a run that went through its input: 0 only when every row is settled.
    `live`: rows an online run left alone because a batch may still answer them."""
    if live:
        return ExitCode.FAILED_ROWS, (
            f"{live} row(s) are out in batches of an earlier batch-mode run, so they were not sent online; "
            "run the job in batch mode to collect them (or `batchrunner cancel` them)"
        )
    if table.get("failed"):
        return ExitCode.FAILED_ROWS, f"{table['failed']} row(s) failed: see `batchrunner status` and `retry`"
    if table.get("pending") and not limited:
        return ExitCode.FAILED_ROWS, (
            f"{table['pending']} row(s) are still pending (the input changed during the run?); run again to send them"
        )
    return ExitCode.OK, ""


def counted(c: RunCounts) -> dict[str, Any]:
    """A run's counters as its `runs` row keeps them (the cost unknown when nothing was priced)."""
    names = ("sent", "ok", "failed", "attempts", "retries", "input_tokens", "output_tokens")
    return {**{n: getattr(c, n) for n in names}, "cost_usd": None if c.unpriced and not c.priced else c.cost_usd}


def finish_run(store: Store, run_id: int, **fields: Any) -> None:
    """Record how the run ended, if the store can still be written."""
    try:
        store.finish_run(run_id, **fields)
    except sqlite3.Error as exc:
        log.error("%s: cannot record the end of run %d (%s)", store.path, run_id, exc)


def store_failure(writer: CheckpointWriter) -> str:
    cause = writer.error or "the store stayed locked by another connection"
    kept = f"kept in {writer.spilled}, which the next run loads first" if writer.spilled else "NOT kept (see above)"
    return (
        f"the store {writer.store.path} could not be written ({cause}); sending stopped. Answers not committed: "
        f"{kept}. Free the disk (or the lock) and run again to go on"
    )


def run_ending(attempts: Attempts, interrupted: bool) -> tuple[str, ExitCode, str]:
    """(status, exit code, message) of a run whose pool stopped without an exception."""
    if interrupted:
        message = "interrupted: every answer received is saved; run the same command again to resume"
        return "interrupted", ExitCode.INTERRUPTED, message
    if attempts.breaker.tripped is not None:
        message = attempts.breaker.tripped + "; nothing is lost: run again when the service recovers"
        return "outage", ExitCode.OUTAGE, message
    if attempts.budget.exhausted is not None:
        return "budget", ExitCode.BUDGET, attempts.budget.message() + "; raise the limit and run again to go on"
    return "finished", ExitCode.OK, ""
