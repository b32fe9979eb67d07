"""`[api] mode = "batch"` (and "auto" until its deadline): a run over the Batch API.

    catch up (every unfinished file one step) -> plan the pending rows into files -> submit
    -> poll / ingest / plan again what came back without an answer ... until nothing is left

`--detach` stops after the first round (exit 6 while batches are still running). Mode auto, its
deadline passed, cancels what is live, ingests the partial output, and returns `go_online`: the
runner then sends what is left with the online pool. See batchrun.py for the state machine.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from . import batchstate as bs
from .batchclient import BatchClient, BatchUnavailable
from .batchingest import Ingester
from .batchplan import Planner
from .batchrun import BatchRefused, Clock, Driver, Poll, unreachable
from .budget import Bounds, Budget
from .errors import AuthError, ExitCode
from .pending import Frontier, Pending
from .pool import Stop
from .pricing import PriceTable, format_usd, usd_to_pusd
from .progress import Progress
from .records import RunCounts
from .source import Source
from .spec import JobSpec
from .store import Store

log = logging.getLogger("batchrunner")

SIMULATED_POLL = (0.2, 2.0)  # first wait and cap on the simulator: it answers in seconds


@dataclass
class BatchOutcome:
    status: str
    exit_code: ExitCode
    message: str
    counts: RunCounts
    already_done: int = 0
    skipped: int = 0
    go_online: bool = False
    budget_stop: str | None = None
    planned_files: list[int] = field(default_factory=list)


class BatchRun:
    """One run of a job over the Batch API (see the module docstring)."""

    def __init__(
        self,
        spec: JobSpec,
        prices: PriceTable,
        source: Source,
        store: Store,
        *,
        root: str,
        api_key: str,
        run_id: int,
        stop: Stop,
        clock: Clock,
        progress: Progress,
        detach: bool = False,
        limit: int | None = None,
        retry_failed: bool = False,
        simulated: bool = False,
    ) -> None:
        self.spec, self.prices, self.source, self.store = spec, prices.for_batch(), source, store
        self.root, self.api_key, self.run_id, self.stop, self.clock = root, api_key, run_id, stop, clock
        self.progress, self.detach, self.limit, self.retry_failed = progress, detach, limit, retry_failed
        first, cap = spec.batch.poll_interval_s, spec.batch.poll_max_s
        if simulated:
            first, cap = min(first, SIMULATED_POLL[0]), min(cap, SIMULATED_POLL[1])
        self.poll = Poll(first, max(first, cap))
        self.job = spec.job.name
        self.counts = RunCounts()
        limits = spec.limits
        self.budget = Budget(
            max_cost_pusd=None if limits.max_cost_usd is None else usd_to_pusd(limits.max_cost_usd),
            max_run_cost_pusd=None if limits.max_cost_usd_per_run is None else usd_to_pusd(limits.max_cost_usd_per_run),
            max_requests=limits.max_requests,
            max_tokens=limits.max_tokens_total,
            before_pusd=(store.spent(self.job) + store.live_worst_pusd(self.job)) if limits.max_cost_usd else 0,
        )
        self.bounds = Bounds(spec.parameters, self.prices, priced=self.budget.costs_money)
        self.outcome = BatchOutcome("finished", ExitCode.OK, "", self.counts)

    async def go(self) -> BatchOutcome:
        self.progress.start(self.source.n_rows * self.spec.job.repeat, self.counts)
        async with BatchClient(
            self.root, self.api_key, timeout_s=self.spec.limits.timeout_s, sleep=self.clock.sleep
        ) as client:
            ingester = Ingester(
                self.store,
                client,
                job=self.job,
                run_id=self.run_id,
                prices=self.prices,
                parameters=self.spec.parameters.wire(),
                max_attempts=self.spec.batch.max_attempts,
                counts=self.counts,
            )
            driver = Driver(
                self.store,
                client,
                ingester,
                job=self.job,
                window=self.spec.batch.completion_window,
                keep_remote_files=self.spec.batch.keep_remote_files,
                clock=self.clock,
            )
            try:
                await self._rounds(driver)
            except AuthError as exc:
                self._end("aborted", ExitCode.AUTH, f"{exc}; every batch is recorded in the store")
            except BatchRefused as exc:
                self._end("aborted", ExitCode.AUTH, f"{exc}; check [model] name and the Batch API's model list")
            except BatchUnavailable as exc:
                self._end("outage", ExitCode.OUTAGE, unreachable(exc))
            finally:
                self.progress.close()
        return self.outcome

    def _end(self, status: str, code: ExitCode, message: str) -> None:
        self.outcome.status, self.outcome.exit_code, self.outcome.message = status, code, message

    async def _rounds(self, driver: Driver) -> None:
        await self._pass(driver)
        if self._deadline_passed():
            await self._wind_down(driver)
            return
        await self._plan(driver)
        ingested = driver.ingested
        while not self.stop.requested:
            if not self._unfinished():
                if driver.ingested == ingested:
                    break
                ingested = driver.ingested  # answers came back without a verdict: plan them again
                await self._plan(driver)
                continue
            if self.detach:
                live = len(self._unfinished())
                self._end(
                    "batches_running", ExitCode.BATCHES_RUNNING, f"{live} batch(es) still running: run again to collect"
                )
                return
            if self._deadline_passed():
                await self._wind_down(driver)
                return
            if driver.changed:
                self.poll.reset()
                driver.changed = False
            wait = self.poll.next()
            self._show(f"next poll in {wait:.0f}s")
            await self._wait(wait)
            await self._pass(driver)
            if driver.ingested != ingested:
                ingested = driver.ingested
                await self._plan(driver)
        if self.stop.requested:
            self._end(
                "interrupted",
                ExitCode.INTERRUPTED,
                "interrupted: every batch is recorded in the store; run again to collect",
            )
        elif self.outcome.budget_stop is not None:
            self._end("budget", ExitCode.BUDGET, self.outcome.budget_stop + "; raise the limit and run again to go on")

    def _unfinished(self) -> list[dict[str, object]]:
        return self.store.batch_files(self.job, states=bs.UNFINISHED, purpose=bs.JOB)

    async def _pass(self, driver: Driver) -> None:
        """Every unfinished (or uncleaned) file of the job one step along."""
        before = self.counts.ok + self.counts.failed
        for file in self.store.batch_files(self.job, states=(*bs.UNFINISHED, bs.INGESTED), purpose=bs.JOB):
            if self.stop.requested:
                break
            await driver.step(file)
        self.progress.advance(self.counts.ok + self.counts.failed - before)
        self._show()

    async def _plan(self, driver: Driver) -> None:
        if self.stop.requested or self.outcome.budget_stop is not None:
            return
        if self.spec.api.mode == "auto" and self._deadline_passed():
            return
        pending = Pending(self.source, self.store, retry_failed=self.retry_failed, limit=self.limit)
        planner = Planner(
            self.store,
            job=self.job,
            run_id=self.run_id,
            max_lines=self.spec.batch.max_lines_per_file,
            max_bytes=self.spec.batch.max_file_bytes,
            bounds=self.bounds,
            budget=self.budget,
        )
        plan = await planner.plan(pending.requests(Frontier(0), self.progress.advance))
        self.outcome.already_done, self.outcome.skipped = pending.already_done, pending.skipped
        self.outcome.planned_files += plan.files
        self.counts.sent += plan.lines
        self.counts.failed += plan.too_large
        self.outcome.budget_stop = plan.budget_stop
        if plan.files:
            await self._pass(driver)

    def _deadline_passed(self) -> bool:
        deadline = self.spec.batch.deadline_s
        if self.spec.api.mode != "auto" or deadline is None:
            return False
        first = self.store.first_submission_ts(self.job)
        return first is not None and self.clock.time() >= first + deadline

    async def _wind_down(self, driver: Driver) -> None:
        """Mode auto past its deadline: cancel the live batches, keep what they answered, and
        leave the rest to the online pool."""
        log.warning("%s: [batch] deadline (%s) passed: cancelling live batches", self.job, self.spec.batch.deadline)
        for file in self._unfinished():
            if file["state"] in (bs.PLANNED, bs.UPLOADING, bs.UPLOADED):
                self.store.abandon_file(int(str(file["id"])), "not submitted before the deadline; sent online")
            elif file["state"] == bs.SUBMITTED:
                await driver.cancel(file)
        self.poll.reset()
        while self._unfinished() and not self.stop.requested:
            await self._pass(driver)
            if self._unfinished():
                await self._wait(self.poll.next())
        if not self.stop.requested:
            self.outcome.go_online = True
            self._end("deadline", ExitCode.OK, "")

    async def _wait(self, seconds: float) -> None:
        """Wait on the run's clock, ending early when a stop is requested."""
        end = self.clock.time() + seconds
        while not self.stop.requested and self.clock.time() < end:
            await self.clock.sleep(min(0.5, end - self.clock.time()))

    def _show(self, extra: str = "") -> None:
        files = self.store.batch_files(self.job, purpose=bs.JOB)
        remote = Counter(str(f["remote_status"] or f["state"]) for f in files if f["state"] in bs.UNFINISHED)
        done = sum(1 for f in files if f["state"] in bs.DONE)
        running = ", ".join(f"{n} {s}" for s, n in sorted(remote.items())) or "none running"
        c = self.counts
        text = (
            f"batches: {running}; {done} done; lines this run: {c.ok} ok, {c.failed} failed; "
            f"{format_usd(c.cost_pusd, 4)} USD at batch price"
        )
        self.progress.batch_state(text + (f"; {extra}" if extra else ""))
