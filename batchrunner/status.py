"""What `batchrunner status` and `batchrunner runs` show: one job's state, read from its store.

Kept apart from report.py (and from the price table) so that these commands start at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import shardviews
from .store import Store


def _rate_line(last: dict[str, Any], finished: int, settled: int) -> str:
    """Rate and ETA of the last run: `finished` requests in it, `settled` in the job."""
    start = datetime.fromisoformat(last["started_at"])
    end = datetime.fromisoformat(last["ended_at"]) if last["ended_at"] else datetime.now(UTC)
    seconds = max((end - start).total_seconds(), 1e-9)
    rate = finished / seconds
    left = max(0, (last["rows_total"] or 0) - settled)
    eta = "-" if not left or not rate else f"{left / rate / 60:.1f} min for about {left} requests left"
    return f"rate {rate:.2f} rows/s over {seconds:.0f}s; ETA {eta}"


def shown_status(run: dict[str, Any], holder: dict[str, object] | None) -> str:
    """A run's status as people should read it: a `running` run whose lock is free was killed."""
    if run["status"] == "running" and holder is None:
        return "killed"
    return str(run["status"])


def _results_line(counts: dict[str, int], queued: int) -> str:
    parts = [f"{k} {v}" for k, v in sorted(counts.items())]
    if queued:
        parts.append(f"{queued} of the failed queued for the next run")
    return "results: " + (", ".join(parts) or "none yet")


def _last_run(store: Store, last: dict[str, Any], holder: dict[str, object] | None, settled: int) -> list[str]:
    """The last run's line and its rate. The requests it finished are counted in `results` only
    while it runs (or when it was killed before it recorded them): a count that reads the whole
    table, seconds at 10M rows."""
    status = shown_status(last, holder)
    mode = f" ({last['mode']})" if last.get("mode") not in (None, "online") else ""
    if status == "running":
        tally = store.run_tally(last["id"])
        finished = sum(tally.values())
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
        head = (
            f"run #{last['id']}{mode} is running ({who}), started {last['started_at']}; so far "
            f"ok {tally.get('ok', 0)}, failed {tally.get('failed', 0)}"
        )
    else:
        recorded = last["ended_at"] is not None and last["ok"] is not None and last["failed"] is not None
        finished = last["ok"] + last["failed"] if recorded else store.finished_in_run(last["id"])
        exit_code = "-" if last["exit_code"] is None else last["exit_code"]
        head = (
            f"last run #{last['id']}{mode}: {status}, exit {exit_code}, "
            f"started {last['started_at']}, ended {last['ended_at'] or '-'}, "
            f"sent {last['sent'] or 0}, ok {last['ok'] or 0}, failed {last['failed'] or 0}"
        )
    return [head, "  " + _rate_line(last, finished, settled)]


def status_text(job: str, store: Store, holder: dict[str, object] | None = None) -> str:
    """Rows by status, failures by error code, the last (or live) run, and for a sharded job its
    shards (shardviews.status_lines): `batchrunner status`.
    Only the rows and runs of `job` count (specs may share one store). `holder` is who holds
    the job's lock now (lock.live_holder), None when no run is going."""
    counts, queued = store.counts(job), store.queued_count(job)
    lines = [f"job {job}  store {store.path}", _results_line(counts, queued)]
    lines += [f"  failed with {code}: {n}" for code, n in store.error_counts(job)]
    lines += _batches(store, job)
    last = store.last_run(job)
    if last is not None:
        settled = counts.get("ok", 0) + counts.get("failed", 0) - queued  # records.settled
        lines += _last_run(store, last, holder, settled)
    lines += shardviews.status_lines(store.shards(job))  # nothing for a job never sharded
    return "\n".join(lines) + "\n"


def _batches(store: Store, job: str) -> list[str]:
    """The job's batch files by state and its request lines by outcome (batch modes)."""
    if "batch_files" not in store.tables():
        return []
    files = store.batch_files(job, purpose="job")
    if not files:
        return []
    states = Counter(str(f["state"]) for f in files)
    live = Counter(
        str(f["remote_status"] or f["state"]) for f in files if f["state"] not in ("ingested", "cleaned", "abandoned")
    )
    lines = store.line_outcomes(job)
    shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    text = f"batches: {len(files)} file(s): {shown}"
    if live:
        text += " (at the service: " + ", ".join(f"{n} {s}" for s, n in sorted(live.items())) + ")"
    out = [text, f"  lines out in batches: {lines.get('live', 0)}; came back to send again: {lines.get('resubmit', 0)}"]
    return out


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


def runs_text(runs: Sequence[dict[str, Any]], holder: dict[str, object] | None = None) -> str:
    """The runs of a job as a table: what `batchrunner runs` shows (cost in USD; `ended` is `-`
    for a run still going, or one that died before it could record its end)."""
    lines = [
        f"{'run':>4} {'status':<11} {'exit':>4} {'started':<29} {'ended':<29} {'sent':>7} {'ok':>7} {'failed':>6} "
        f"{'cost_usd':>10}"
    ]
    for r in runs:
        exit_code = "-" if r["exit_code"] is None else r["exit_code"]
        lines.append(
            f"{r['id']:>4} {shown_status(r, holder):<11} {exit_code:>4} {r['started_at']:<29} "
            f"{r.get('ended_at') or '-':<29} {r['sent'] or 0:>7} {r['ok'] or 0:>7} {r['failed'] or 0:>6} "
            f"{run_cost(r):>10}"
        )
    return "\n".join(lines) + "\n"
