"""The batch part of a run (modes batch and auto): a `runs` row, `BatchRun`, the output table.

Returns the run's summary, or None when mode auto passed its deadline and the rest of the job
goes to the online pool (the runner goes on with it, as a second run of mode online).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import service, sink
from .batchcheck import batch_check
from .batchmode import BatchOutcome, BatchRun, poll_bounds
from .batchrun import Clock
from .endings import finish_run, finished
from .errors import ExitCode, OutputError
from .records import RunCounts, RunSummary

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import _Run

EXPORTED = ("finished", "budget", "outage")


async def run(r: _Run) -> RunSummary | None:
    spec, store, options = r.spec, r.store, r.options
    run_id = store.start_run(
        job=spec.job.name,
        spec_digest=spec.digest,
        simulated=r.svc.simulated,
        base_url=r.svc.base_url,
        rows_total=r.rows_total,
        input_signature=r.source.signature(),
        mode="batch",
    )
    batch = BatchRun(
        spec,
        r.prices,
        r.source,
        store,
        root=service.batch_root(spec.api, spec.batch, r.svc),
        api_key=r.svc.api_key,
        run_id=run_id,
        stop=r.stop,
        clock=options.clock or Clock(),
        progress=r.progress,
        detach=options.detach,
        limit=options.limit,
        retry_failed=options.retry_failed,
        simulated=r.svc.simulated,
    )
    r._task = task = asyncio.create_task(batch.go())
    try:
        outcome = await task
    except asyncio.CancelledError:
        if not r.interrupted:
            raise
        outcome = batch.outcome
        outcome.status, outcome.exit_code = "interrupted", ExitCode.INTERRUPTED
        outcome.message = "interrupted: every batch is recorded in the store; run again to collect"
    finally:
        r._task = None
    if outcome.go_online:
        _record(r, run_id, outcome, "deadline")
        return None
    table: dict[str, int] = {}
    output_path: Path | None = None
    unwritten: OutputError | None = None
    if outcome.status in EXPORTED or (options.write_partial and outcome.status != "aborted"):
        try:
            output_path, table = sink.export(spec, store, r.source)
        except OutputError as exc:
            unwritten = exc
            outcome.status, outcome.exit_code = "output_failed", ExitCode.BAD_INPUT
        if outcome.status == "finished":
            outcome.exit_code, outcome.message = finished(table, limited=options.limit is not None)
    _record(r, run_id, outcome, outcome.status)
    if unwritten is not None:
        raise unwritten
    return RunSummary(
        run_id=run_id,
        exit_code=int(outcome.exit_code),
        status=outcome.status,
        db_path=spec.db_path,
        output_path=output_path,
        rows_total=r.source.n_rows,
        already_done=outcome.already_done,
        skipped=outcome.skipped,
        counts=outcome.counts,
        table=table,
        simulated=r.svc.simulated,
        elapsed_s=0.0,
        message=outcome.message,
        job=spec.job.name,
    )


async def check(r: _Run) -> RunSummary:
    """`--batch-check`: the first rows as a free test batch; exit 0 when the round trip is right."""
    spec, store = r.spec, r.store
    run_id = store.start_run(
        job=spec.job.name,
        spec_digest=spec.digest,
        simulated=r.svc.simulated,
        base_url=r.svc.base_url,
        rows_total=0,
        mode="batch-check",
    )
    report = await batch_check(
        r.source,
        store,
        r.prices.for_batch(),
        job=spec.job.name,
        root=service.batch_root(spec.api, spec.batch, r.svc),
        api_key=r.svc.api_key,
        run_id=run_id,
        clock=r.options.clock or Clock(),
        poll=poll_bounds(spec, r.svc.simulated),
    )
    code = ExitCode.OK if report.ok else ExitCode.FAILED_ROWS
    status = "checked" if report.ok else "check_failed"
    finish_run(store, run_id, status=status, exit_code=int(code))
    return RunSummary(
        run_id=run_id,
        exit_code=int(code),
        status=status,
        db_path=spec.db_path,
        output_path=None,
        rows_total=r.source.n_rows,
        already_done=0,
        skipped=0,
        counts=RunCounts(),
        table={},
        simulated=r.svc.simulated,
        elapsed_s=0.0,
        message=report.text,
        job=spec.job.name,
    )


def _record(r: _Run, run_id: int, outcome: BatchOutcome, status: str) -> None:
    c = outcome.counts
    finish_run(
        r.store,
        run_id,
        status=status,
        exit_code=int(outcome.exit_code),
        rows_total=r.rows_total,
        already_done=outcome.already_done,
        sent=c.sent,
        ok=c.ok,
        failed=c.failed,
        skipped=outcome.skipped,
        attempts=c.ok + c.failed,
        retries=0,
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cost_usd=None if c.unpriced and not c.priced else c.cost_usd,
    )
