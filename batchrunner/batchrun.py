"""The Batch API executor: plan, upload, submit, wait, ingest, clean, all resumable from the store.

One pass (`step`) drives every unfinished file of the job one step along the state machine of
batchstate.py, committing each step before the remote call that follows it. `BatchRun.go`
makes passes until nothing is left: it plans the pending rows into files, submits them, polls
the live batches (the first wait `[batch] poll_interval_s`, then longer, with jitter, up to
`poll_max_s`), ingests what finished, plans again what came back without an answer. With
`detach` it makes one pass and returns, so that cron can drive a job to its end. In mode auto,
once `[batch] deadline` has passed since the job's first submission, it cancels the live
batches, ingests their partial output, and hands the rest back to the online pool.

Never billed twice: a create whose answer was lost is never sent again blindly; the file is
looked up by its `ds_name` (unique to the store, the job, the file and the attempt) and the
batch found is adopted. The client never retries a create on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import batchstate as bs
from .batchclient import BatchCallFailed, BatchClient, BatchUnavailable, CreateUnknown
from .batchingest import Ingester
from .errors import AuthError
from .store import Store, now
from .wire import batch as wb

log = logging.getLogger("batchrunner")

LOOKUP_WAITS_S = (2.0, 5.0, 10.0)  # looking for a batch whose create answer was lost


@dataclass(frozen=True)
class Clock:
    """The time a batch run waits on (tests pass one that jumps instead of sleeping)."""

    time: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class BatchRefused(Exception):
    """The service refused a file or a batch for good (a 400 / 404 on create)."""


@dataclass
class Poll:
    """The waits between polls: `first`, then x1.5 with +-20% jitter, up to `cap`."""

    first: float
    cap: float
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    wait: float = 0.0

    def reset(self) -> None:
        self.wait = 0.0

    def next(self) -> float:
        self.wait = self.first if self.wait == 0 else min(self.cap, self.wait * 1.5)
        return min(self.cap, self.wait * self.rng.uniform(0.8, 1.2))


class Driver:
    """Moves files along the state machine, one committed step before each remote call."""

    def __init__(
        self,
        store: Store,
        client: BatchClient,
        ingester: Ingester,
        *,
        job: str,
        window: str,
        keep_remote_files: bool,
        clock: Clock,
    ) -> None:
        self.store, self.client, self.ingester = store, client, ingester
        self.job, self.window, self.keep = job, window, keep_remote_files
        self.clock = clock
        self.changed = False  # a pass moved some file on (the poll waits start again)
        self.ingested = 0  # files ingested by this driver
        self.returned = 0  # lines that came back to be planned again (no verdict, or a file given up)

    async def step(self, file: dict[str, Any]) -> None:
        """Move one file as far as it goes without waiting on the service's progress.

        A refusal of the key (401/403) ends the run (AuthError); a file the service refuses for
        good (an upload or a create answered 400/404) is abandoned and ends it (BatchRefused)."""
        try:
            await self._step(file)
        except BatchCallFailed as exc:
            if exc.status in (401, 403):
                raise AuthError(f"the Batch API refused the key or account: {exc}", status=exc.status) from None
            raise

    async def _step(self, file: dict[str, Any]) -> None:
        state = file["state"]
        if state in (bs.PLANNED, bs.UPLOADING):
            file = await self._upload(file)
            state = file["state"]
        if state in (bs.UPLOADED, bs.CREATING):
            file = await self._submit(file)
            state = file["state"]
        if state == bs.SUBMITTED:
            file = await self._poll(file)
            state = file["state"]
        if state == bs.TERMINAL:
            tally = await self.ingester.ingest(file)
            self.returned += tally.resubmit + tally.dropped
            self.ingested += 1
            self.changed = True
            file = self.store.batch_file(int(file["id"]))
            state = file["state"]
        if state == bs.INGESTED:
            await self._clean(file)

    async def _upload(self, file: dict[str, Any]) -> dict[str, Any]:
        spool = Path(str(file["spool"]))
        if not spool.is_file():
            note = f"its planned file {spool} is gone; its lines are planned again"
            log.warning("%s: batch file %d: %s", self.job, file["id"], note)
            self.abandon(file, note)
            return self.store.batch_file(int(file["id"]))
        self.store.update_file(int(file["id"]), state=bs.UPLOADING)
        try:
            remote = await self.client.upload(spool, f"{file['ds_name']}.jsonl")
        except BatchCallFailed as exc:
            if exc.transient or exc.status in (401, 403):
                raise
            note = f"the Files API refused the upload: {exc}"
            self.abandon(file, note)
            raise BatchRefused(note) from None
        self.store.update_file(int(file["id"]), state=bs.UPLOADED, input_file_id=remote.id)
        self.changed = True
        return self.store.batch_file(int(file["id"]))

    async def _submit(self, file: dict[str, Any]) -> dict[str, Any]:
        file_id = int(file["id"])
        if file["state"] == bs.CREATING:  # a create may have been sent: look before creating again
            found = await self._adopt(file)
            if found is not None:
                return found
        first = {} if file.get("submitted_ts") else {"submitted_ts": self.clock.time()}
        self.store.update_file(file_id, state=bs.CREATING, **first)
        metadata = {"ds_name": str(file["ds_name"]), "ds_description": f"batchrunner job {self.job}"[:200]}
        try:
            batch = await self.client.create(
                str(file["input_file_id"]), window=self.window, endpoint=str(file["endpoint"]), metadata=metadata
            )
        except CreateUnknown as exc:
            log.warning(
                "%s: batch file %d: the answer to its create was lost (%s); looking it up", self.job, file_id, exc
            )
            for wait in LOOKUP_WAITS_S:  # the service may list a new batch a little late
                await self.clock.sleep(wait)
                found = await self._adopt(self.store.batch_file(file_id))
                if found is not None:
                    return found
            return self.store.batch_file(file_id)
        except BatchCallFailed as exc:
            if exc.status in (401, 403):
                raise AuthError(f"the Batch API refused the key or account: {exc}", status=exc.status) from None
            if exc.transient:  # 429: nothing was made; the next pass looks, then creates
                log.warning(
                    "%s: batch file %d: create refused for now (%s); trying again later", self.job, file_id, exc
                )
                return self.store.batch_file(file_id)
            hint = " (is the model served by the Batch API?)" if exc.status == 404 else ""
            note = f"the Batch API refused the batch: {exc}{hint}"
            self.abandon(self.store.batch_file(file_id), note)
            raise BatchRefused(note) from None
        return self._submitted(file_id, batch)

    async def _adopt(self, file: dict[str, Any]) -> dict[str, Any] | None:
        found = await self.client.find(str(file["ds_name"]), input_file_id=file.get("input_file_id") or None)
        if not found:
            return None
        found.sort(key=lambda b: b.created_at or 0)
        for extra in found[1:]:  # should never happen; cancelling stops what it would bill
            log.error(
                "%s: batch file %d has more than one batch at the service; following %s, cancelling %s",
                self.job,
                file["id"],
                found[0].id,
                extra.id,
            )
            if not extra.terminal:
                await self.client.cancel(extra.id)
        log.info("%s: batch file %d: adopted batch %s", self.job, file["id"], found[0].id)
        return self._submitted(int(file["id"]), found[0])

    def _submitted(self, file_id: int, batch: wb.Batch) -> dict[str, Any]:
        self.store.update_file(
            file_id,
            state=bs.SUBMITTED,
            batch_id=batch.id,
            remote_status=batch.status,
            submitted_at=now(),
        )
        self.changed = True
        return self._observed(file_id, batch)

    async def _poll(self, file: dict[str, Any]) -> dict[str, Any]:
        try:
            batch = await self.client.get(str(file["batch_id"]))
        except BatchCallFailed as exc:
            if exc.status != 404:
                raise
            log.error(
                "%s: batch file %d: its batch %s is gone at the service (404); its lines go again",
                self.job,
                file["id"],
                file["batch_id"],
            )
            batch = wb.Batch(str(file["batch_id"]), wb.EXPIRED)
        if batch.status != file["remote_status"]:
            self.changed = True
        return self._observed(int(file["id"]), batch)

    def _observed(self, file_id: int, batch: wb.Batch) -> dict[str, Any]:
        counts = batch.request_counts
        fields: dict[str, Any] = {
            "remote_status": batch.status,
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
        }
        if batch.terminal:
            errors = [{"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in batch.errors]
            fields.update(
                state=bs.TERMINAL,
                output_file_id=batch.output_file_id,
                error_file_id=batch.error_file_id,
                errors=json.dumps(errors) if errors else None,
                terminal_at=now(),
            )
        self.store.update_file(file_id, **fields)
        return self.store.batch_file(file_id)

    async def _clean(self, file: dict[str, Any]) -> None:
        if not self.keep:
            for remote in (file["input_file_id"], file["output_file_id"], file["error_file_id"]):
                if remote:
                    try:
                        await self.client.delete_file(str(remote))
                    except BatchCallFailed as exc:
                        if exc.transient or exc.status in (401, 403):
                            raise
                        log.warning("%s: could not delete remote file %s (%s)", self.job, remote, exc)
        self.store.update_file(int(file["id"]), state=bs.CLEANED, cleaned_at=now())

    async def cancel(self, file: dict[str, Any]) -> None:
        """Ask the service to cancel a live batch (what it answered stays and is ingested)."""
        if file["state"] == bs.SUBMITTED and file["remote_status"] not in (*wb.TERMINAL, wb.CANCELLING):
            try:
                batch = await self.client.cancel(str(file["batch_id"]))
            except BatchCallFailed as exc:
                if exc.transient or exc.status in (401, 403):
                    raise
                log.warning("%s: batch file %d: cancel refused (%s); polling it", self.job, file["id"], exc)
                return
            self._observed(int(file["id"]), batch)
            log.info("%s: batch file %d: cancel requested (batch %s)", self.job, file["id"], batch.id)

    async def stop(self, file: dict[str, Any], why: str) -> None:
        """Stop a file from being answered any further: cancel its batch (found by its ds_name
        if its create may have been sent), or abandon it if it has none."""
        state = file["state"]
        if state == bs.CREATING:
            found = await self._adopt(file)
            if found is None:
                self.abandon(file, why)
                return
            file, state = found, found["state"]
        if state in (bs.PLANNED, bs.UPLOADING, bs.UPLOADED):
            self.abandon(file, why)
            if file.get("input_file_id") and not self.keep:
                await self.client.delete_file(str(file["input_file_id"]))
        elif state == bs.SUBMITTED:
            await self.cancel(file)

    def abandon(self, file: dict[str, Any], note: str) -> None:
        """Give a file up before it was submitted: its lines go back to pending, its local file goes."""
        self.store.abandon_file(int(file["id"]), note)
        self.returned += int(file.get("lines") or 0)
        if file.get("spool"):
            Path(str(file["spool"])).unlink(missing_ok=True)
        self.changed = True


def unreachable(exc: BatchUnavailable) -> str:
    return f"the Batch API kept failing ({exc}); every batch is recorded in the store: run again to go on"
