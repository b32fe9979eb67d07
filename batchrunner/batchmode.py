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
from dataclasses import dataclass

from . import batchstate as bs
from .batchclient import BatchCallFailed, BatchClient, BatchUnavailable
from .batchingest import Ingester
from .batchplan import Planner
from .batchrun import BatchRefused, Clock, Driver, Poll, unreachable
from .budget import Bounds, Budget, Reservation
from .errors import AuthError, ExitCode
from .pending import Frontier, Pending
from .pool import Stop
from .pricing import PriceTable, format_usd, usd_to_pusd
from .progress import Progress
from .records import RunCounts
from .source import Source
from .spec import JobSpec
from .store import Store
from .store.batches import Line

log = logging.getLogger("batchrunner")

SIMULATED_POLL = (0.2, 2.0)  # first wait and cap on the simulator: it answers in seconds


def poll_bounds(spec: JobSpec, simulated: bool) -> tuple[float, float]:
    """(first wait, cap) between polls: the spec's, shortened on the simulator."""
    first, cap = spec.batch.poll_interval_s, spec.batch.poll_max_s
    if simulated:
        first, cap = min(first, SIMULATED_POLL[0]), min(cap, SIMULATED_POLL[1])
    return first, max(first, cap)


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
        self.poll = Poll(*poll_bounds(spec, simulated))
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
        self._ingested_at_stop = -1  # files ingested when the budget last stopped planning

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
                on_cost=self._settle,
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
                self._end("aborted", ExitCode.AUTH, f"{exc}; nothing more was sent")
            except BatchUnavailable as exc:
                self._end("outage", ExitCode.OUTAGE, unreachable(exc))
            except BatchCallFailed as exc:
                self._end("aborted", ExitCode.AUTH, f"the Batch API refused a call: {exc}; every batch is in the store")
            finally:
                self.progress.close()
        return self.outcome

    def _settle(self, line: Line, cost_pusd: int, planned_here: bool) -> None:
        """A line's answer came in: its cost replaces the worst case booked for it."""
        worst = line.worst_pusd
        if worst is None or not self.budget.costs_money:
            return
        if planned_here:
            self.budget.settle(Reservation(worst, 0), cost_pusd, 0)
        else:  # booked by an earlier run: it is in what the job had spent before this one
            self.budget.before_pusd += cost_pusd - worst

    def _end(self, status: str, code: ExitCode, message: str) -> None:
        self.outcome.status, self.outcome.exit_code, self.outcome.message = status, code, message

    async def _rounds(self, driver: Driver) -> None:
        if self._deadline_passed():
            await self._wind_down(driver)
            return
        await self._pass(driver)
        await self._plan(driver)
        returned = driver.returned
        while not self.stop.requested:
            if driver.returned != returned:  # lines came back without a verdict: plan them again
                returned = driver.returned
                await self._plan(driver)
                continue
            if not self._unfinished():
                if self.outcome.budget_stop is None or driver.ingested == self._ingested_at_stop:
                    break
                # Answers settled the worst cases booked for them: what is left may fit now.
                self.budget.exhausted, self.outcome.budget_stop = None, None
                await self._plan(driver)
                continue
            if self.detach:
                live = len(self._unfinished())
                message = f"{live} batch(es) still running: run again to collect"
                self._end("batches_running", ExitCode.BATCHES_RUNNING, message)
                return
            if self._deadline_passed():
                await self._wind_down(driver)
                return
            await self._next_poll(driver)
            await self._pass(driver)
        self._ending()

    def _ending(self) -> None:
        if self.stop.requested:
            message = "interrupted: every batch is recorded in the store; run again to collect"
            self._end("interrupted", ExitCode.INTERRUPTED, message)
        elif self.outcome.budget_stop is not None:
            self._end("budget", ExitCode.BUDGET, self.outcome.budget_stop + "; raise the limit and run again to go on")

    async def _next_poll(self, driver: Driver) -> None:
        if driver.changed:
            self.poll.reset()
            driver.changed = False
        wait = self.poll.next()
        self._show(f"next poll in {wait:.0f}s")
        await self._wait(wait)

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
        """Plan what is pending into files and submit them. A pass over the whole input is
        skipped when the last one (same spec, same input) found everything planned and nothing
        has come back since (a cron job of 2M rows does not render them all every 15 minutes)."""
        if self.stop.requested or self.outcome.budget_stop is not None:
            return
        left = None if self.limit is None else self.limit - self.counts.sent
        if left is not None and left <= 0:
            return
        marker_name = f"planned:{self.job}"
        marker = f"{self.spec.digest}:{self.source.signature()}:{self.store.plan_marker(self.job)}"
        if not self.retry_failed and left is None and self.store.meta(marker_name) == marker:
            return
        retry, self.retry_failed = self.retry_failed, False  # --retry-failed: once per run
        pending = Pending(self.source, self.store, retry_failed=retry, limit=left, remember=False)
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
        self.counts.sent += plan.lines
        self.counts.failed += plan.too_large
        self.outcome.budget_stop = plan.budget_stop
        self._ingested_at_stop = driver.ingested
        if plan.budget_stop is None and left is None and not self.stop.requested:
            self.store.set_meta(
                marker_name, f"{self.spec.digest}:{self.source.signature()}:{self.store.plan_marker(self.job)}"
            )
        if plan.files:
            await self._pass(driver)

    def _deadline_passed(self) -> bool:
        deadline = self.spec.batch.deadline_s
        if self.spec.api.mode != "auto" or deadline is None:
            return False
        first = self.store.first_submission_ts(self.job)
        return first is not None and self.clock.time() >= first + deadline

    async def _wind_down(self, driver: Driver) -> None:
        """Mode auto past its deadline: stop every file (cancel its batch, or give it up before
        it is submitted), keep what the batches answered, and leave the rest to the online pool."""
        log.warning("%s: [batch] deadline (%s) passed: cancelling live batches", self.job, self.spec.batch.deadline)
        self.poll.reset()
        while not self.stop.requested:
            for file in self._unfinished():
                await driver.stop(file, "not answered before [batch] deadline; sent online")
            await self._pass(driver)
            if not self._unfinished():
                self.outcome.go_online = True
                self._end("deadline", ExitCode.OK, "")
                return
            if self.detach:
                live = len(self._unfinished())
                message = f"[batch] deadline passed: {live} cancelled batch(es) still ending: run again to collect"
                self._end("batches_running", ExitCode.BATCHES_RUNNING, message)
                return
            await self._next_poll(driver)
        self._ending()

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
