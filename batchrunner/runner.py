"""`run_job`: the whole job, from spec to output table. The library entry point behind the CLI.

The data flow, one module a step:

    spec -> source -> render -> pending -> pool -> attempts [pacing -> budget -> client -> wire]
    -> records -> writer -> store -> sink

Everything a user can get wrong is checked before the first request (spec, input, output
path, key, base URL, prices). With `handle_signals` (the CLI's choice; the library default
is off), the first SIGINT/SIGTERM stops dispatching and lets requests in flight finish for
`[limits] grace_s`; a second one cancels them at once. Either way every answer received is
committed, and the run ends with exit code 130 and a store that the next run resumes from.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import batchphase, service, signals, sink
from .attempts import Attempts, Policy
from .batchmodels import check_batch_model
from .batchrun import Clock
from .control import Control, RunHandle
from .endings import counted
from .endings import finish_run as _finish_run
from .endings import finished as _finished
from .endings import run_ending as _ending
from .endings import store_failure as _store_failure
from .errors import AuthError, ExitCode, OutputError, ServiceUnreachable, StoreError
from .lock import JobLock
from .pending import Frontier, Pending
from .pool import Pool, Stop
from .pricing import PriceTable, load_prices, price_warnings
from .progress import Progress
from .records import Result, RunSummary
from .render import Request
from .route import check_route, route_of
from .source import Source
from .spec import JobSpec, load
from .store import Store
from .workers import sender_for
from .writer import CheckpointWriter, load_spilled

log = logging.getLogger("batchrunner")


@dataclass(frozen=True)
class RunOptions:
    """How one run goes (the CLI flags of `run`)."""

    limit: int | None = None
    simulate: bool = False
    retry_failed: bool = False
    write_partial: bool = False
    handle_signals: bool = False
    new_store: bool = False
    detach: bool = False  # batch modes: one round, then exit (6 while batches are running)
    clock: Clock | None = None  # batch modes: the time polls and the deadline are measured on
    batch_check: bool = False  # send the first rows as a free test batch instead of the job
    sim_batch_seconds: float | None = None  # with simulate: how long a simulated batch takes
    rows: tuple[int, int] | None = None  # a Ray shard: only these input rows (first, end)
    control: Control | None = None  # a Ray shard: its share of the limits, its stop


def run_job(
    spec: JobSpec | str | os.PathLike[str],
    *,
    db: Path | None = None,
    output: Path | None = None,
    limit: int | None = None,
    simulate: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
    handle_signals: bool = False,
    prices: Path | None = None,
    max_cost_usd: float | None = None,
    max_cost_usd_per_run: float | None = None,
    write_partial: bool = False,
    new_store: bool = False,
    detach: bool = False,
    clock: Clock | None = None,
    batch_check: bool = False,
    sim_batch_seconds: float | None = None,
) -> RunSummary:
    """Run a job to completion (or interruption) and write its output table.

    Raises SpecError / InputError / OutputError before sending anything when the spec or
    the input is unusable; an authentication or permission error ends the run with
    exit_code 3 in the summary (no row is marked failed for it). StoreError when the store
    cannot be used (damaged, not a store, not writable, or an empty file without `new_store`);
    OutputError when the output table cannot be written at the end (the run is recorded as
    `output_failed`; every answer is in the store, and `batchrunner export` writes the table).
    """
    job = spec if isinstance(spec, JobSpec) else load(spec)
    job = job.with_overrides(db=db, output=output, max_cost_usd=max_cost_usd, max_cost_usd_per_run=max_cost_usd_per_run)
    table = prices_for(job, prices)
    options = RunOptions(
        limit,
        simulate,
        retry_failed,
        write_partial,
        handle_signals,
        new_store,
        detach,
        clock,
        batch_check,
        sim_batch_seconds,
    )
    return asyncio.run(run_with(job, table, options, progress or Progress()))


def prices_for(spec: JobSpec, prices_file: Path | None = None) -> PriceTable:
    """The price table a job runs with (its region's, with its [pricing.models] and a --prices
    file applied)."""
    return load_prices(
        spec.model.name,
        spec_models=spec.pricing.models,
        prices_file=prices_file,
        budget_usd=spec.limits.max_cost_usd or spec.limits.max_cost_usd_per_run,
        region=spec.api.region,
    )


async def run_with(spec: JobSpec, prices: PriceTable, options: RunOptions, progress: Progress) -> RunSummary:
    """`run_job` on a loaded spec and price table (a Ray shard's way in, with its options)."""
    t0 = time.monotonic()
    for warning in [*price_warnings(prices, spec.model.name), *check_route(spec, prices, simulate=options.simulate)]:
        log.warning("%s: %s", spec.job.name, warning)
    if spec.batched and not options.batch_check:
        unknown = check_batch_model(prices, spec.model.name, chat=False)
        if unknown:
            log.warning("%s: %s", spec.job.name, unknown)
    source = Source(spec, options.rows)
    shard = options.rows is not None  # the driver checked the input and writes the output
    source.check(reserved=sink.result_columns(spec), rows_checked=shard or source.checked_before())
    if not shard:
        sink.check_writable(spec.output.path)
        note = sink.conversion_note(spec.output.path, source.schema)
        if note:
            log.warning(note)
    sim_clock = options.clock.time if options.clock is not None else None
    async with service.connect(
        spec.api, simulate=options.simulate, sim_batch_seconds=options.sim_batch_seconds, sim_clock=sim_clock
    ) as svc:
        with JobLock(spec.db_path) as lock:
            if lock.previous:
                log.warning(
                    "%s: took over the lock of pid %s on %s (started %s), which did not end cleanly",
                    spec.job.name,
                    lock.previous.get("pid"),
                    lock.previous.get("host"),
                    lock.previous.get("started_at"),
                )
            try:
                store = Store(spec.db_path, new_store=options.new_store)
            except StoreError:
                lock.discard()
                raise
            with store:
                killed = store.mark_killed()
                if killed:
                    log.warning("%s: %d earlier run(s) had not ended cleanly; marked killed", spec.job.name, killed)
                run = _Run(spec, prices, source, store, svc, options, progress)
                with signals.handled(
                    run.interrupt, spec.limits.grace_s, enabled=options.handle_signals, last_words=run.keep_unsaved
                ):
                    summary = await run.go()
                summary.elapsed_s = time.monotonic() - t0
                return summary


async def run_rows(
    spec: JobSpec, prices: PriceTable, rows: tuple[int, int], control: Control, progress: Progress, retry_failed: bool
) -> RunSummary:
    """One Ray shard's run: its rows only, steered by `control`, no output table."""
    return await run_with(spec, prices, RunOptions(rows=rows, control=control, retry_failed=retry_failed), progress)


class _Run:
    """One run over an open store: wires pending -> pool -> attempts -> writer, then the sink."""

    def __init__(
        self,
        spec: JobSpec,
        prices: PriceTable,
        source: Source,
        store: Store,
        svc: service.Service,
        options: RunOptions,
        progress: Progress,
    ) -> None:
        self.spec, self.prices, self.source, self.store = spec, prices, source, store
        self.svc, self.options, self.progress = svc, options, progress
        self.route = route_of(spec, svc, prices, source.renderer.wire)  # where the online pool sends
        self.rows_total = source.n_rows * spec.job.repeat
        self.stop = Stop()
        self.interrupted = False
        self._task: asyncio.Task[Any] | None = None
        self.writer: CheckpointWriter | None = None

    def keep_unsaved(self) -> None:
        """The watchdog's last call: put what the writer has not committed in its side file."""
        if self.writer is not None:
            self.writer.spill()

    def interrupt(self, first: bool) -> None:
        """A signal: stop dispatching; cancel what is in flight after grace_s (first) or now."""
        self.interrupted = True
        self.stop.request()
        task = self._task
        if task is None:
            return
        if first and self.spec.scale.engine == "ray" and self.options.rows is None:
            return  # a Ray driver: its shards get grace_s (rayengine's watch cancels them STOP_MARGIN_S later)
        if first:
            asyncio.get_running_loop().call_later(self.spec.limits.grace_s, task.cancel)
        else:
            task.cancel()

    async def _elsewhere(self) -> RunSummary | None:
        """A batch check, a Ray-sharded job or the Batch API; None: the online pool sends here."""
        if self.options.batch_check:
            return await batchphase.check(self)
        if self.spec.scale.engine == "ray" and self.options.rows is None:
            from . import rayengine

            return await rayengine.run(self, run_rows)
        if self.spec.batched:
            summary = await batchphase.run(self)
            if summary is not None:
                return summary
            self.stop = Stop()  # mode auto past its deadline: the rest goes online
        return None

    async def go(self) -> RunSummary:
        summary = await self._elsewhere()
        if summary is not None:
            return summary
        spec, store, options = self.spec, self.store, self.options
        signature = self.source.signature()
        try:
            load_spilled(store)
            start = 0 if options.retry_failed else store.resume_point(spec.digest, signature)
            run_id = store.start_run(
                job=spec.job.name,
                spec_digest=spec.digest,
                simulated=self.svc.simulated,
                base_url=self.route.base_url,
                rows_total=self.rows_total,
                input_signature=signature,
                mode=self.route.mode,
                render_context=self.source.renderer.render_context(signature),
            )
        except sqlite3.Error as exc:  # before anything is sent: the store cannot be written
            raise StoreError(f"{store.path}: cannot write the store ({exc}); nothing was sent") from None
        pending = Pending(self.source, store, retry_failed=options.retry_failed, limit=options.limit)
        if start and not pending.checked_start(start):
            log.warning(
                "%s: the rows before the resume point (%d) now make other requests (a context or media "
                "file changed?); reading the input from its first row",
                spec.job.name,
                start,
            )
            start = 0
        frontier = Frontier(start)

        def committed(results: Sequence[Result]) -> None:
            pending.committed(results)
            frontier.committed(results)

        writer = CheckpointWriter(
            store,
            run_id=run_id,
            min_interval_s=spec.limits.commit_interval_ms / 1000,
            resume_point=frontier.point,
            on_commit=committed,
            on_error=lambda exc: self.stop.request(),
        )
        self.writer = writer
        writer_task = asyncio.create_task(writer.run())
        try:
            attempts, (status, exit_code, message) = await self._send(pending, frontier, writer, run_id)
        finally:
            await writer.close()
            writer_task.cancel()
            self.progress.close()
        if writer.error is not None or writer.pending:
            status, exit_code, message = "store_failed", ExitCode.STORE, _store_failure(writer)
        table: dict[str, int] = {}
        output_path: Path | None = None
        unwritten: OutputError | None = None
        if options.rows is not None:
            pass  # a shard: the driver merges its rows and writes the table
        elif status in ("finished", "budget", "outage") or (status == "interrupted" and options.write_partial):
            try:
                output_path, table = sink.export(spec, store, self.source)
            except OutputError as exc:
                unwritten, status, exit_code = exc, "output_failed", ExitCode.BAD_INPUT
            if status == "finished":
                exit_code, message = _finished(table, limited=options.limit is not None, live=pending.live)
        c = attempts.counts
        _finish_run(
            store,
            run_id,
            status=status,
            exit_code=int(exit_code),
            rows_total=self.rows_total,
            already_done=pending.already_done,
            skipped=pending.skipped,
            **counted(c),
        )
        if unwritten is not None:
            raise unwritten
        return RunSummary(
            run_id=run_id,
            exit_code=int(exit_code),
            status=status,
            db_path=spec.db_path,
            output_path=output_path,
            rows_total=self.source.n_rows,
            already_done=pending.already_done,
            skipped=pending.skipped,
            counts=c,
            table=table,
            simulated=self.svc.simulated,
            elapsed_s=0.0,
            message=message,
            job=spec.job.name,
            mode=self.route.mode,
        )

    async def _send(
        self, pending: Pending, frontier: Frontier, writer: CheckpointWriter, run_id: int
    ) -> tuple[Attempts, tuple[str, ExitCode, str]]:
        """Send what is pending; (the attempts, (status, exit code, message))."""
        spec, route = self.spec, self.route
        done = await pending.surveyed(frontier.scanned, self.rows_total)  # a resume's display starts there
        async with sender_for(spec, route, self.svc.api_key) as client:
            attempts = Attempts(
                Policy.of(spec, route.prices, mode=route.mode),
                client,
                writer.add_result,
                writer.add_attempt,
                run_id=run_id,
                stop=self.stop,
                prices=route.prices,
                on_result=self.progress.row_finished,
                spent_before_pusd=self.store.spent(spec.job.name) if spec.limits.max_cost_usd is not None else 0,
            )
            pool: Pool[Request] = Pool(
                route.work(attempts.process), concurrency=spec.limits.concurrency, stop=self.stop
            )
            self.progress.start(self.rows_total, attempts.counts, done=done)
            requests = writer.paced(pending.requests(frontier, self.progress.advance))
            self._task = task = asyncio.create_task(pool.run(requests))
            watch = RunHandle(attempts, self.progress, self.interrupt).watched(self.options.control)
            try:
                await task
                return attempts, _ending(attempts, self.interrupted)
            except AuthError as exc:
                check = (
                    f"the base URL ({route.base_url}: a wrong path answers 404) and the model name"
                    if exc.status == 404
                    else f"the key in ${spec.api.api_key_env}, the workspace and your access to {spec.model.name!r}"
                )
                message = f"the service refused the request: {exc}. Check {check}; nothing was marked failed."
                return attempts, ("aborted", ExitCode.AUTH, message)
            except ServiceUnreachable as exc:
                return attempts, ("unreachable", ExitCode.BAD_INPUT, f"{exc}{route.hint()}; nothing was marked failed")
            except asyncio.CancelledError:
                if not self.interrupted:
                    raise
                return attempts, _ending(attempts, True)
            finally:
                if watch is not None:
                    watch.cancel()
