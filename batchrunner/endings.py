"""How a run ends: its exit code once it went through its input, and its `runs` row."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from .errors import ExitCode
from .store import Store

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


def finish_run(store: Store, run_id: int, **fields: Any) -> None:
    """Record how the run ended, if the store can still be written."""
    try:
        store.finish_run(run_id, **fields)
    except sqlite3.Error as exc:
        log.error("%s: cannot record the end of run %d (%s)", store.path, run_id, exc)
