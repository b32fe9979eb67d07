"""What `batchrunner status` and `batchrunner runs` show: one job's state, read from its store.

Kept apart from report.py (and from the price table) so that these commands start at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .store import Store


def _rate_line(store: Store, last: dict[str, Any]) -> str:
    """Rate and ETA of the last run, from its rows in the store."""
    start = datetime.fromisoformat(last["started_at"])
    end = datetime.fromisoformat(last["ended_at"]) if last["ended_at"] else datetime.now(UTC)
    seconds = max((end - start).total_seconds(), 1e-9)
    rate = store.finished_in_run(last["id"]) / seconds
    left = max(0, (last["rows_total"] or 0) - store.settled_count())
    eta = "-" if not left or not rate else f"{left / rate / 60:.1f} min for about {left} requests left"
    return f"rate {rate:.2f} rows/s over {seconds:.0f}s; ETA {eta}"


def status_text(job: str, store: Store) -> str:
    """Rows by status, failures by error code, and the last run: what `batchrunner status` shows."""
    counts = store.counts()
    lines = [
        f"job {job}  store {store.path}",
        "results: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"),
    ]
    lines += [f"  failed with {code}: {n}" for code, n in store.error_counts()]
    runs = store.runs()
    if runs:
        last = runs[-1]
        lines.append(
            f"last run #{last['id']}: {last['status']}, exit {last['exit_code']}, "
            f"started {last['started_at']}, ended {last['ended_at'] or '-'}, "
            f"sent {last['sent'] or 0}, ok {last['ok'] or 0}, failed {last['failed'] or 0}"
        )
        lines.append("  " + _rate_line(store, last))
    return "\n".join(lines) + "\n"


def run_cost(run: dict[str, Any]) -> str:
    """A run's cost for people: the sum of its attempts' costs (`unpriced` when none of its
    answers had a price, never 0), or, from a store older than per-attempt costs, the run's own."""
    if "paid_pusd" not in run:
        return "-" if run.get("cost_usd") is None else f"{run['cost_usd']:.6f}"
    unpriced = run.get("unpriced_attempts") or 0
    if unpriced and run.get("cost_usd"):  # a run from before per-attempt costs: its own tally has them all
        return f"{run['cost_usd']:.6f}"
    if run["paid_pusd"] is None and unpriced:
        return "unpriced"
    text = f"{Decimal(run['paid_pusd'] or 0).scaleb(-12):.6f}"
    return f"{text} + {unpriced} unpriced" if unpriced else text


def runs_text(runs: Sequence[dict[str, Any]]) -> str:
    """The runs of a job as a table: what `batchrunner runs` shows (cost in USD)."""
    lines = [
        f"{'run':>4} {'status':<11} {'exit':>4} {'started':<29} {'sent':>7} {'ok':>7} {'failed':>6} {'cost_usd':>10}"
    ]
    for r in runs:
        exit_code = "-" if r["exit_code"] is None else r["exit_code"]
        lines.append(
            f"{r['id']:>4} {r['status']:<11} {exit_code:>4} {r['started_at']:<29} {r['sent'] or 0:>7} "
            f"{r['ok'] or 0:>7} {r['failed'] or 0:>6} {run_cost(r):>10}"
        )
    return "\n".join(lines) + "\n"
