"""`batchrunner run JOB --batch-check`: the job's first rows as a real, free batch.

The first 100 requests of the input are rendered exactly as the job would send them, put in one
file on `batch-test-model` (url /v1/chat/ds-test: the service answers without inference, at no
cost; a file of at most 100 lines and 1 MB), uploaded, submitted, waited for, downloaded and
matched back line by line. The report says whether the file, the lines and the round trip are
right, before the job spends anything. The check's lines are kept apart from the job's (their
keys carry a `check:` prefix) and its answers are not results of the job.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from . import batchstate as bs
from .batchclient import BatchClient
from .batchingest import Ingester
from .batchplan import Planner
from .batchrun import Clock, Driver, Poll
from .pricing import PriceTable
from .records import RunCounts
from .render import Request
from .source import Source
from .store import Store
from .wire import batch as wb

log = logging.getLogger("batchrunner")

CHECK_LINES = 100
CHECK_BYTES = 1024 * 1024
CHECK_WAIT_S = 600.0  # how long the check waits for its batch before giving up


@dataclass(frozen=True)
class CheckReport:
    ok: bool
    text: str


async def _first(source: Source, n: int) -> AsyncIterator[Request]:
    for item in source.requests(source.batch_at(0, n)):
        if isinstance(item, Request):
            yield replace(item, key="check:" + item.key)


async def batch_check(
    source: Source,
    store: Store,
    prices: PriceTable,
    *,
    job: str,
    root: str,
    api_key: str,
    run_id: int,
    clock: Clock,
    poll: tuple[float, float],
) -> CheckReport:
    """Send the check batch and wait for it; what went right or wrong, for people."""
    async with BatchClient(root, api_key, sleep=clock.sleep) as client:
        ingester = Ingester(
            store,
            client,
            job=job,
            run_id=run_id,
            prices=prices,
            parameters={},
            max_attempts=1,
            counts=RunCounts(),
            keep_results=False,
        )
        window = wb.DEFAULT_WINDOW
        driver = Driver(store, client, ingester, job=job, window=window, keep_remote_files=False, clock=clock)
        await _forget_earlier_checks(store, driver, job)
        planner = Planner(
            store,
            job=job,
            run_id=run_id,
            max_lines=CHECK_LINES,
            max_bytes=CHECK_BYTES,
            purpose=bs.CHECK,
            model=wb.TEST_MODEL,
            url=wb.TEST_ENDPOINT,
        )
        plan = await planner.plan(_first(source, CHECK_LINES))
        if not plan.files:
            return CheckReport(False, "batch check: no row of the input makes a request to check")
        file_id = plan.files[0]
        waits, start = Poll(*poll), clock.time()
        file = store.batch_file(file_id)
        while True:
            await driver.step(file)
            file = store.batch_file(file_id)
            if file["state"] in bs.DONE:
                break
            if clock.time() - start > CHECK_WAIT_S:
                await _forget_earlier_checks(store, driver, job)
                break
            await clock.sleep(waits.next())
        return _report(file, store.line_outcomes_of(file_id), plan.too_large, clock.time() - start)


async def _forget_earlier_checks(store: Store, driver: Driver, job: str) -> None:
    """Cancel check batches that an earlier (killed or timed-out) check left, and let their
    lines go: a check's answers are never needed, and its lines must not hold the rows."""
    for file in store.batch_files(job, states=bs.UNFINISHED, purpose=bs.CHECK):
        if file["state"] == bs.SUBMITTED:
            await driver.cancel(file)
        store.abandon_file(int(file["id"]), "a check that did not finish; cancelled")


def _report(file: dict[str, object], outcomes: dict[str, int], too_large: int, took_s: float) -> CheckReport:
    lines = int(str(file["lines"] or 0))
    ok = outcomes.get(bs.OK, 0)
    head = f"batch check: {lines} line(s), {file['bytes']} bytes, on {wb.TEST_MODEL}"
    facts = [head]
    if too_large:
        facts.append(f"{too_large} row(s) make lines over the 6 MB a line may hold (they would fail)")
    status = file["remote_status"]
    if file["state"] not in bs.DONE:
        facts.append(f"the batch {file['batch_id']} did not finish within {CHECK_WAIT_S:.0f}s (status {status})")
        return CheckReport(False, "; ".join(facts))
    if file["state"] == bs.ABANDONED:
        facts.append(f"not sent: {file['note']}")
        return CheckReport(False, "; ".join(facts))
    facts.append(f"batch {file['batch_id']} {status} in {took_s:.0f}s; {ok}/{lines} line(s) came back answered")
    if file["errors"]:
        facts.append(f"validation errors: {file['errors']}")
    good = status == wb.COMPLETED and ok == lines and not too_large
    facts.append("the file, the lines and the round trip are right" if good else "NOT ready: see above")
    return CheckReport(good, "; ".join(facts))
