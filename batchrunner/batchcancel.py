"""`batchrunner cancel JOB`: cancel the job's live batches and keep what they answered.

Each live batch is asked to cancel; then the files are polled until the service has ended them,
and their output and error files are ingested like any finished batch: the answered lines are
results (and billed, at the batch price), the others go back to pending for a later run.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from . import batchstate as bs
from . import service
from .batchclient import BatchClient
from .batchingest import Ingester
from .batchrun import Clock, Driver, Poll
from .lock import JobLock
from .records import RunCounts
from .runner import prices_for
from .spec import JobSpec
from .store import Store

CANCEL_WAIT_S = 900.0  # how long to wait for the service to end cancelled batches


def cancel_job(spec: JobSpec, *, clock: Clock | None = None, poll: tuple[float, float] = (2.0, 30.0)) -> str:
    """Cancel the job's live batches, wait for them to end, ingest them; a line for people."""
    if not spec.db_path.is_file():
        return f"{spec.job.name}: no live batches (no store yet at {spec.db_path})"
    return asyncio.run(_cancel(spec, clock or Clock(), poll))


async def _cancel(spec: JobSpec, clock: Clock, poll: tuple[float, float]) -> str:
    prices = prices_for(spec).for_batch()
    async with service.connect(spec.api, simulate=False) as svc:
        root = service.batch_root(spec.api, spec.batch, svc)
        with JobLock(spec.db_path), Store(spec.db_path) as store:
            live = store.batch_files(spec.job.name, states=bs.UNFINISHED, purpose=bs.JOB)
            if not live:
                return f"{spec.job.name}: no live batches"
            run_id = store.start_run(
                job=spec.job.name,
                spec_digest=spec.digest,
                simulated=False,
                base_url=svc.base_url,
                mode="batch",
            )
            counts = RunCounts()
            async with BatchClient(root, svc.api_key, sleep=clock.sleep) as client:
                ingester = Ingester(
                    store,
                    client,
                    job=spec.job.name,
                    run_id=run_id,
                    prices=prices,
                    parameters=spec.parameters.wire(),
                    max_attempts=spec.batch.max_attempts,
                    counts=counts,
                )
                driver = Driver(
                    store,
                    client,
                    ingester,
                    job=spec.job.name,
                    window=spec.batch.completion_window,
                    keep_remote_files=spec.batch.keep_remote_files,
                    clock=clock,
                )
                waits, start = Poll(*poll), clock.time()
                while clock.time() - start < CANCEL_WAIT_S:
                    for file in store.batch_files(spec.job.name, states=bs.UNFINISHED, purpose=bs.JOB):
                        await driver.stop(file, "cancelled (batchrunner cancel) before it was submitted")
                    for file in store.batch_files(spec.job.name, states=(*bs.UNFINISHED, bs.INGESTED), purpose=bs.JOB):
                        await driver.step(file)
                    if not store.batch_files(spec.job.name, states=bs.UNFINISHED, purpose=bs.JOB):
                        break
                    await clock.sleep(waits.next())
            left = Counter(
                str(f["remote_status"]) for f in store.batch_files(spec.job.name, states=bs.UNFINISHED, purpose=bs.JOB)
            )
            store.finish_run(
                run_id, status="cancelled", exit_code=0, ok=counts.ok, failed=counts.failed, cost_usd=counts.cost_usd
            )
    kept = f"{counts.ok} answered line(s) kept ({counts.cost_text()} at batch price)"
    if left:
        still = ", ".join(f"{n} {s}" for s, n in left.items())
        asked = f"cancel requested for {len(live)} batch(es)"
        return f"{spec.job.name}: {asked}; {kept}; still ending: {still} (run cancel again)"
    return f"{spec.job.name}: cancelled {len(live)} batch(es); {kept}; the rest is pending for the next run"
