"""`run_job`: the whole job, from spec to output table. The library entry point behind the CLI.

    spec.load -> Source.check -> sink.check_writable -> Store -> pending requests
    -> Pool (pacer, gate, client) -> CheckpointWriter -> sink.export -> RunSummary

Everything a user can get wrong is checked before the first request. Signals: the first
SIGINT/SIGTERM stops dispatching and lets requests in flight finish for `[limits] grace_s`;
a second one cancels them at once. Either way every answer received is committed, and the
run ends with exit code 130 and a store that the next run resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import sink, wire
from .client import DashScopeClient
from .credentials import api_key_for, check_base_url
from .errors import SpecError
from .lock import JobLock
from .pending import Frontier, Pending
from .pool import Abort, Pool, PoolCounts
from .pricing import PriceTable
from .source import Source
from .spec import JobSpec, load
from .store import Store
from .writer import CheckpointWriter

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_INPUT, EXIT_AUTH, EXIT_BUDGET, EXIT_OUTAGE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
log = logging.getLogger("batchrunner")
SIMULATED_KEY = "sk-simulated"


@dataclass
class RunSummary:
    """What one run did. `exit_code` follows the CLI's exit codes."""

    run_id: int
    exit_code: int
    status: str  # finished | interrupted | aborted | budget | outage
    db_path: Path
    output_path: Path | None
    rows_total: int
    already_done: int
    skipped: int
    counts: PoolCounts
    table: dict[str, int]  # rows by status in the output table (ok, failed, skipped, pending)
    simulated: bool
    elapsed_s: float
    message: str = ""


class Progress:
    """Callbacks a display can implement; the default does nothing."""

    def start(self, total_rows: int, counts: PoolCounts) -> None: ...
    def advance(self, n: int) -> None: ...
    def row_finished(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def run_job(
    spec: JobSpec | str | os.PathLike[str],
    *,
    db: Path | None = None,
    output: Path | None = None,
    limit: int | None = None,
    simulate: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
    handle_signals: bool = True,
    prices: Path | None = None,
    max_cost_usd: float | None = None,
    write_partial: bool = False,
) -> RunSummary:
    """Run a job to completion (or interruption) and write its output table.

    Raises SpecError / InputError / OutputError before sending anything when the spec or
    the input is unusable; an authentication or permission error ends the run with
    exit_code 3 in the summary (no row is marked failed for it).
    """
    job = spec if isinstance(spec, JobSpec) else load(spec)
    job = job.with_overrides(db=db, output=output, max_cost_usd=max_cost_usd)
    table = load_prices(job, prices)
    options = RunOptions(limit, simulate, retry_failed, write_partial, handle_signals)
    return asyncio.run(_run(job, table, options, progress or Progress()))


def load_prices(spec: JobSpec, prices_file: Path | None = None) -> PriceTable:
    """The shipped price table with the spec's [pricing] and a --prices file applied.

    A budget needs a price: a job with max_cost_usd whose model has none is refused here.
    """
    overrides: list[dict[str, Any] | Path] = []
    if spec.pricing.models:
        overrides.append({"models": spec.pricing.models})
    if prices_file is not None:
        overrides.append(prices_file)
    table = PriceTable.load(overrides)
    if spec.limits.max_cost_usd is not None and table.lookup(spec.model.name) is None:
        msg = (
            f"[limits] max_cost_usd: model {spec.model.name!r} has no price in the price table; "
            f"add it under [pricing.models] or pass --prices FILE"
        )
        raise SpecError(msg)
    return table


@contextlib.asynccontextmanager
async def _service(spec: JobSpec, simulate: bool) -> AsyncIterator[tuple[str, str]]:
    """(base_url, api_key): the real service, or a simulator started in this loop."""
    if not simulate:
        check_base_url(spec.base_url, allow_insecure_http=spec.api.allow_insecure_http)
        yield spec.base_url, api_key_for(spec)
        return
    from .simulator import Simulator, SimulatorConfig

    async with Simulator(SimulatorConfig()).serve(host="127.0.0.1", port=0) as base_url:
        if spec.api.protocol == "openai":
            base_url = base_url.removesuffix("/api/v1") + wire.COMPATIBLE_SUFFIX
        yield base_url, SIMULATED_KEY


@dataclass(frozen=True)
class RunOptions:
    """How one run goes (the CLI flags of `run`)."""

    limit: int | None = None
    simulate: bool = False
    retry_failed: bool = False
    write_partial: bool = False
    handle_signals: bool = True


async def _run(spec: JobSpec, prices: PriceTable, options: RunOptions, progress: Progress) -> RunSummary:
    t0 = time.monotonic()
    source = Source(spec)
    source.check()
    sink.check_writable(spec.output.path)
    async with _service(spec, options.simulate) as (base_url, api_key):
        with JobLock(spec.db_path) as lock:
            if lock.previous:
                log.warning(
                    "%s: took over the lock of pid %s on %s (started %s), which did not end cleanly",
                    spec.job.name,
                    lock.previous.get("pid"),
                    lock.previous.get("host"),
                    lock.previous.get("started_at"),
                )
            store = Store(spec.db_path)
            try:
                return await _run_with_store(spec, prices, source, store, base_url, api_key, options, progress, t0)
            finally:
                store.close()


def _ending(pool: Pool, interrupted: bool) -> tuple[str, int, str]:
    """(status, exit code, message) of a run whose pool stopped without an exception."""
    if interrupted:
        return (
            "interrupted",
            EXIT_INTERRUPTED,
            ("interrupted: every answer received is saved; run the same command again to resume"),
        )
    if pool.breaker_tripped is not None:
        return "outage", EXIT_OUTAGE, pool.breaker_tripped + "; nothing is lost: run again when the service recovers"
    if pool.budget.exhausted is not None:
        return "budget", EXIT_BUDGET, pool.budget.message() + "; raise the limit and run again to go on"
    return "finished", EXIT_OK, ""


async def _run_with_store(
    spec: JobSpec,
    prices: PriceTable,
    source: Source,
    store: Store,
    base_url: str,
    api_key: str,
    options: RunOptions,
    progress: Progress,
    t0: float,
) -> RunSummary:
    signature = source.signature()
    start = 0 if options.retry_failed else store.resume_point(spec.digest, signature)
    run_id = store.start_run(
        job=spec.job.name,
        spec_digest=spec.digest,
        simulated=options.simulate,
        base_url=base_url,
        rows_total=source.n_rows * spec.job.repeat,
        input_signature=signature,
    )
    pending = Pending(source, store, retry_failed=options.retry_failed, limit=options.limit)

    def committed(rows: list[dict[str, Any]]) -> None:
        pending.committed(rows)
        frontier.committed(rows)

    writer = CheckpointWriter(store, interval_s=spec.limits.commit_interval_ms / 1000, on_commit=committed)
    frontier = Frontier(start, lambda offset: writer.set_resume_point(run_id, offset))
    writer_task = asyncio.create_task(writer.run())
    async with DashScopeClient(
        base_url,
        api_key,
        timeout_s=spec.limits.timeout_s,
        max_connections=spec.limits.concurrency,
        wire=source.renderer.wire,
        stream=spec.parameters.stream,
    ) as client:
        pool = Pool(spec, client, writer, run_id=run_id, on_result=progress.row_finished, prices=prices)
        progress.start(source.n_rows * spec.job.repeat, pool.counts)
        requests = pending.requests(frontier, progress.advance)
        pool_task = asyncio.create_task(pool.run(requests))
        with _signals(pool, pool_task, spec.limits.grace_s, enabled=options.handle_signals) as interrupted:
            try:
                await pool_task
                status, exit_code, message = _ending(pool, interrupted())
            except Abort as abort:
                error = abort.error
                status, exit_code = "aborted", EXIT_AUTH
                message = (
                    f"the service refused the request: HTTP {error.status} {error.code}: {error.message} "
                    f"(request_id {error.request_id}). Check the key in ${spec.api.api_key_env}, "
                    f"the workspace and your access to model {spec.model.name!r}; nothing was marked failed."
                )
            except asyncio.CancelledError:
                if not interrupted():
                    raise
                status, exit_code, message = _ending(pool, True)
    await writer.close()
    writer_task.cancel()
    progress.close()
    table: dict[str, int] = {}
    output_path: Path | None = None
    if status in ("finished", "budget", "outage") or (status == "interrupted" and options.write_partial):
        output_path, table = sink.export(spec, store, source)
        if status == "finished":
            exit_code = EXIT_FAILED_ROWS if table.get("failed") else EXIT_OK
    c = pool.counts
    store.finish_run(
        run_id,
        status=status,
        exit_code=exit_code,
        rows_total=source.n_rows * spec.job.repeat,
        already_done=pending.already_done,
        sent=c.sent,
        ok=c.ok,
        failed=c.failed,
        skipped=pending.skipped,
        attempts=c.attempts,
        retries=c.retries,
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cost_usd=c.cost_usd,
    )
    return RunSummary(
        run_id,
        exit_code,
        status,
        spec.db_path,
        output_path,
        source.n_rows,
        pending.already_done,
        pending.skipped,
        c,
        table,
        options.simulate,
        time.monotonic() - t0,
        message,
    )


@contextlib.contextmanager
def _signals(pool: Pool, task: asyncio.Task[None], grace_s: float, *, enabled: bool) -> Iterator[Callable[[], bool]]:
    """First SIGINT/SIGTERM: stop dispatching, cancel after grace_s. Second: cancel now."""
    loop = asyncio.get_running_loop()
    state = {"hits": 0}

    def on_signal() -> None:
        state["hits"] += 1
        pool.stop()
        if state["hits"] == 1:
            loop.call_later(grace_s, task.cancel)
        else:
            task.cancel()

    installed: list[signal.Signals] = []
    if enabled:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
    try:
        yield lambda: state["hits"] > 0
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
