"""How a run ends: its exit code once it went through its input, and its `runs` row."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from .errors import ExitCode
from .store import Store

log = logging.getLogger("batchrunner")


def finished(table: dict[str, int], *, limited: bool) -> tuple[ExitCode, str]:
    """The exit code of a run that went through its input: 0 only when every row is settled."""
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
