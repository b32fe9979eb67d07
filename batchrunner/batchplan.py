"""Planning batch files: the pending requests of a job, cut into JSONL files the Batch API takes.

Requests come from `Pending` exactly as an online run would send them (the same render, the
same request keys), minus those a batch may still answer. Each is translated to the
chat/completions body (`wire.chat_body`) and written as one line whose `custom_id` is its
request key. A file holds one model and is cut at `[batch] max_lines_per_file` lines or
`max_file_mb`; it is written to a spool file beside the store and flushed to disk before its
row is committed (`planned`), so memory holds one line at a time and the lines' keys of the
current slice, whatever the size of the table. A line over the service's 6 MB fails its row
here, before anything is uploaded. Under a cost budget every line books its worst case at the
batch price; planning stops before the budget could be passed.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import batchstate as bs
from . import wire
from .budget import Bounds, Budget
from .records import Failure, Result
from .render import Request
from .store import Store, now
from .store.batches import Line
from .wire import batch as wb

log = logging.getLogger("batchrunner")

SLICE = 2000  # requests looked up in the store at a time


def spool_dir(db_path: Path) -> Path:
    """Where planned files wait for their upload: a folder beside the store."""
    return db_path.with_name(db_path.name + ".batches")


@dataclass
class _Open:
    """A file being written."""

    path: Path
    handle: IO[bytes]
    model: str
    lines: list[Line] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    size: int = 0


@dataclass
class Plan:
    """What one planning pass did."""

    files: list[int] = field(default_factory=list)
    lines: int = 0
    too_large: int = 0
    budget_stop: str | None = None


class Planner:
    """Cuts a job's pending requests into batch files (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        job: str,
        run_id: int,
        max_lines: int,
        max_bytes: int,
        bounds: Bounds | None = None,
        budget: Budget | None = None,
        purpose: str = bs.JOB,
        model: str | None = None,
        url: str = wb.BATCH_ENDPOINT,
    ) -> None:
        self.store, self.job, self.run_id = store, job, run_id
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.bounds, self.budget = bounds, budget
        self.purpose, self.model, self.url = purpose, model, url
        self.folder = spool_dir(store.path)
        self._open: dict[str, _Open] = {}

    async def plan(self, requests: AsyncIterator[Request]) -> Plan:
        """Plan every request given (stopping early at a budget limit)."""
        plan = Plan()
        chunk: list[Request] = []
        try:
            async for request in requests:
                chunk.append(request)
                if len(chunk) >= SLICE:
                    self._slice(chunk, plan)
                    chunk = []
                if plan.budget_stop is not None:
                    break
            if chunk and plan.budget_stop is None:
                self._slice(chunk, plan)
            for model in list(self._open):
                self._close(model, plan)
        finally:
            for spool in self._open.values():  # an error left them half written: not planned
                spool.handle.close()
                spool.path.unlink(missing_ok=True)
            self._open.clear()
        return plan

    def _slice(self, chunk: list[Request], plan: Plan) -> None:
        keys = [r.key for r in chunk]
        live = self.store.live_keys(keys)
        tries = self.store.batch_tries(keys)
        for request in chunk:
            if request.key in live or any(request.key in o.keys for o in self._open.values()):
                continue
            if not self._add(request, tries.get(request.key, 0) + 1, plan):
                return

    def _add(self, request: Request, attempt: int, plan: Plan) -> bool:
        """Write one line; False when the budget stops planning."""
        body = wire.chat_body(request.body)
        if self.model is not None:
            body["model"] = self.model
        model = str(body["model"])
        try:
            data = wb.encode_line(request.key, body, self.url)
        except ValueError as exc:
            self._fail_too_large(request, str(exc))
            plan.too_large += 1
            return True
        worst = None
        if self.budget is not None and self.bounds is not None and self.budget.active:
            case = self.bounds.worst(request)
            if self.budget.reserve(case) is None:
                plan.budget_stop = self.budget.message()
                return False
            worst = case.cost_pusd
        spool = self._open.get(model)
        if spool is not None and (len(spool.lines) >= self.max_lines or spool.size + len(data) > self.max_bytes):
            self._close(model, plan)
            spool = None
        if spool is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{self.job}-{uuid.uuid4().hex[:12]}.jsonl"
            spool = self._open[model] = _Open(path, path.open("wb"), model)
        spool.handle.write(data)
        spool.size += len(data)
        spool.keys.add(request.key)
        r = request
        spool.lines.append(Line(r.key, r.key, r.row_index, r.row_id, r.sample, r.seed, attempt, worst))
        plan.lines += 1
        return True

    def _close(self, model: str, plan: Plan) -> None:
        spool = self._open.pop(model)
        spool.handle.flush()
        os.fsync(spool.handle.fileno())
        spool.handle.close()
        attempt = max(line.attempt for line in spool.lines)
        file_id, _ = self.store.plan_file(
            job=self.job,
            purpose=self.purpose,
            model=model,
            endpoint=self.url,
            attempt=attempt,
            spool=str(spool.path),
            size=spool.size,
            run_id=self.run_id,
            lines=spool.lines,
        )
        plan.files.append(file_id)
        log.info("%s: planned batch file %d: %d line(s), %d bytes", self.job, file_id, len(spool.lines), spool.size)

    def _fail_too_large(self, request: Request, message: str) -> None:
        from .records import result_of

        failure = Failure("LineTooLarge", f"{message}: shorten the row's prompt or media, or send it online")
        result: Result = result_of(
            request,
            run_id=self.run_id,
            started=now(),
            latency_ms=0,
            attempts=0,
            billed=0,
            failure=failure,
            job=self.job,
        )
        self.store.write([result], [])
        log.warning("%s: row %s not sent: %s", self.job, request.row_id, failure.error_message)
