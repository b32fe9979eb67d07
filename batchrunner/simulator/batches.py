"""The Batch API's state: uploaded files, batches and their progress on the config's clock.

A batch validates for `batch_validate_s` seconds of `SimulatorConfig.clock`, then answers one
line every `batch_line_s` (0: every line at once) in file order, and completes when every
line is answered; with `batch_seconds` set, it completes that many seconds after creation
instead (validating for a tenth of them at most). Past its completion window it expires. A
cancel freezes the lines answered so far ("cancelling"); the next read finishes it
("cancelled"). A finished batch writes an output file (200 lines) and an error file (4xx
and 5xx lines, and `batch_expired` / `batch_cancelled` for lines never run); a file with no
lines is not written (its id is `batch_none_id`). Lines are answered as batchlines.py says
(like the chat endpoint, or a scripted line fault, or the free test model's fixed text).
Only chat lines answered 200 are billed (`lines_billed`). At most two batch-test-model
batches run at once: a third create answers 429. Thread-safe: one lock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from batchrunner.wire import batch as wb

from .batchfaults import BatchFaults
from .batchlines import TEST_MAX_RUNNING, answer_line, parse_lines, test_answer
from .config import SimulatorConfig


class BatchApiError(Exception):
    """A request the Files / Batches API refuses: HTTP status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "created_at": self.created_at,
        }


@dataclass(slots=True)
class SimBatch:
    """One batch and how far it got. `lines` are the parsed input lines (custom_id, body)."""

    id: str
    input_file_id: str
    endpoint: str
    window: str
    metadata: dict[str, Any]
    lines: list[tuple[str, dict[str, Any]]]
    errors: list[dict[str, Any]]
    start: float  # on the config's clock
    epoch: int  # wall-clock seconds at creation
    validate_s: float  # how long it validates
    line_s: float  # then one line every line_s seconds (0: all at once)
    status: str = wb.VALIDATING
    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    frozen_at: int | None = None  # lines answered when cancelled
    output_file_id: str | None = None
    error_file_id: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)

    def to_wire(self, none_id: str | None) -> dict[str, Any]:
        done = len(self.results)
        ok = sum(1 for status, _ in self.results if status == 200)
        failed = done - ok
        if self.status in (wb.EXPIRED, wb.CANCELLED):
            failed = len(self.lines) - ok
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.status == wb.FAILED else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.window,
            "status": self.status,
            "output_file_id": self.output_file_id or none_id,
            "error_file_id": self.error_file_id or none_id,
            "request_counts": {"total": len(self.lines), "completed": ok, "failed": failed},
            "metadata": self.metadata or None,
        }
        obj.update({k: self.stamps.get(k) for k in wb.TIMESTAMPS})
        return obj

    @property
    def test(self) -> bool:
        """A batch-test-model batch: fixed answers, never billed."""
        return self.endpoint == wb.TEST_ENDPOINT


class BatchStore:
    """Files and batches of one simulator, and the Batch API counters."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.faults = BatchFaults(config)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._files: dict[str, StoredFile] = {}
            self._batches: dict[str, SimBatch] = {}
            self._created = 0
            self._billed = 0
            self._billed_in = 0
            self._billed_out = 0
            self._calls: dict[str, int] = {}
        self.faults.reset()

    def counters(self) -> dict[str, Any]:
        """batches_created, lines_billed, the billed lines' input / output tokens, the faults
        injected (see BatchFaults.counters) and `batch_calls`: requests by route name."""
        with self._lock:
            counts: dict[str, Any] = {
                "batches_created": self._created,
                "lines_billed": self._billed,
                "batch_input_tokens": self._billed_in,
                "batch_output_tokens": self._billed_out,
                "batch_calls": dict(self._calls),
            }
        return {**counts, **self.faults.counters()}

    def count_call(self, route: str) -> None:
        """Count one request to a Batch API route ("create", "get", "content", ...)."""
        with self._lock:
            self._calls[route] = self._calls.get(route, 0) + 1

    # ------------------------------------------------------------------ files

    def add_file(self, filename: str, purpose: str, data: bytes, prefix: str = "file-batch-") -> dict[str, Any]:
        if purpose != wb.PURPOSE:
            raise BatchApiError(400, "invalid_request_error", f"purpose must be '{wb.PURPOSE}', got '{purpose}'")
        if len(data) > wb.MAX_FILE_BYTES:
            raise BatchApiError(400, "invalid_request_error", "The file is larger than 500 MB.")
        with self._lock:
            return self._store(filename, purpose, data, prefix).to_wire()

    def _store(self, filename: str, purpose: str, data: bytes, prefix: str) -> StoredFile:
        stored = StoredFile(prefix + str(uuid.uuid4()), filename, purpose, data, int(time.time()))
        self._files[stored.id] = stored
        return stored

    def _file(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise BatchApiError(404, "invalid_request_error", f"No such File object: {file_id}")
        return stored

    def get_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            return self._file(file_id).to_wire()

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            return self._file(file_id).data

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            self._file(file_id)
            del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def list_files(self) -> dict[str, Any]:
        with self._lock:
            data = [f.to_wire() for f in reversed(self._files.values())]
        return {"object": "list", "data": data, "has_more": False}

    # ------------------------------------------------------------------ batches

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.faults.throttle_create():
            raise BatchApiError(429, "limit_requests", "Batch throttling: too many batches created; try again later.")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata") or {}
        if endpoint not in (wb.BATCH_ENDPOINT, wb.TEST_ENDPOINT):
            raise BatchApiError(400, "invalid_request_error", f"The endpoint '{endpoint}' is not supported.")
        try:
            wb.window_hours(str(window))
        except ValueError as exc:
            raise BatchApiError(400, "invalid_request_error", str(exc)) from None
        if not isinstance(metadata, dict) or len(str(metadata.get("ds_name", ""))) > wb.DS_NAME_MAX:
            raise BatchApiError(400, "invalid_request_error", "metadata.ds_name is at most 100 characters.")
        with self._lock:
            source = self._file(str(body.get("input_file_id")))
            if endpoint == wb.TEST_ENDPOINT and self._tests_running() >= TEST_MAX_RUNNING:
                self.faults.count_throttled()
                message = f"At most {TEST_MAX_RUNNING} {wb.TEST_MODEL} batches may run at once."
                raise BatchApiError(429, "limit_requests", message)
            lines, errors = parse_lines(source.data, str(endpoint))
            epoch = int(time.time())
            batch = SimBatch(
                "batch_" + str(uuid.uuid4()),
                source.id,
                str(endpoint),
                str(window),
                dict(metadata),
                lines,
                errors,
                self.config.clock(),
                epoch,
                *self._pace(len(lines)),
            )
            batch.stamps["created_at"] = epoch
            self._batches[batch.id] = batch
            self._created += 1
            return batch.to_wire(self.config.batch_none_id)

    def _pace(self, lines: int) -> tuple[float, float]:
        """(validation seconds, seconds per line) of a new batch of `lines` lines."""
        cfg = self.config
        if cfg.batch_seconds is None:
            return cfg.batch_validate_s, cfg.batch_line_s
        validate_s = min(cfg.batch_validate_s, cfg.batch_seconds / 10)
        return validate_s, (cfg.batch_seconds - validate_s) / lines if lines else 0.0

    def _tests_running(self) -> int:
        running = 0
        for batch in self._batches.values():
            if batch.test:
                self._advance(batch)
                running += batch.status not in wb.TERMINAL
        return running

    def _batch(self, batch_id: str) -> SimBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise BatchApiError(404, "invalid_request_error", f"No such Batch object: {batch_id}")
        self._advance(batch)
        return batch

    def get(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            return self._batch(batch_id).to_wire(self.config.batch_none_id)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status not in wb.TERMINAL and batch.status != wb.CANCELLING:
                batch.status = wb.CANCELLING
                batch.frozen_at = len(batch.results)
                batch.stamps["cancelling_at"] = self._stamp(batch)
            return batch.to_wire(self.config.batch_none_id)

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit") or 20)
        statuses = {s for s in query.get("status", "").split(",") if s}
        inputs = {s for s in query.get("input_file_ids", "").split(",") if s}
        name = query.get("ds_name", "")
        after = query.get("after")
        with self._lock:
            chosen = []
            for batch in reversed(self._batches.values()):  # newest first
                self._advance(batch)
                if statuses and batch.status not in statuses:
                    continue
                if inputs and batch.input_file_id not in inputs:
                    continue
                if name and name not in str(batch.metadata.get("ds_name", "")):
                    continue
                chosen.append(batch.to_wire(self.config.batch_none_id))
        if after is not None:
            ids = [b["id"] for b in chosen]
            chosen = chosen[ids.index(after) + 1 :] if after in ids else []
        page = chosen[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(chosen) > limit,
        }

    # ------------------------------------------------------------------ progress

    def _stamp(self, batch: SimBatch, at: float | None = None) -> int:
        now = self.config.clock() if at is None else at
        return batch.epoch + int(now - batch.start)

    def _advance(self, batch: SimBatch) -> None:
        """Bring a batch up to the clock: validate, answer lines, finish."""
        if batch.status in wb.TERMINAL:
            return
        elapsed = self.config.clock() - batch.start
        if batch.status == wb.CANCELLING:
            self._finish(batch, wb.CANCELLED, wb.LINE_CANCELLED)
            return
        if elapsed < batch.validate_s:
            return
        if batch.errors:
            batch.status = wb.FAILED
            batch.stamps["failed_at"] = self._stamp(batch)
            return
        if batch.status == wb.VALIDATING:
            batch.status = wb.IN_PROGRESS
            batch.stamps["in_progress_at"] = batch.epoch + int(batch.validate_s)
            batch.stamps["expires_at"] = batch.epoch + wb.window_hours(batch.window) * 3600
        window_s = wb.window_hours(batch.window) * 3600.0
        running = min(elapsed, window_s) - batch.validate_s
        total = len(batch.lines)
        # The small slack keeps float rounding from holding back the line that is due now.
        done = total if batch.line_s == 0 else min(total, int(running / batch.line_s + 1e-9))
        self._answer(batch, done)
        if done >= total:
            batch.stamps["finalizing_at"] = self._stamp(batch)
            self._finish(batch, wb.COMPLETED, "")
        elif elapsed >= window_s:
            self._finish(batch, wb.EXPIRED, wb.LINE_EXPIRED)

    def _answer(self, batch: SimBatch, done: int) -> None:
        created = self._stamp(batch)
        while len(batch.results) < done:
            n = len(batch.results)
            request_id = f"{batch.id}-{n + 1}"
            line = batch.lines[n][1]
            if batch.test:
                status, body = 200, test_answer(line, request_id, created)
            else:
                max_output = self.config.max_output_tokens
                status, body = answer_line(line, request_id, created, max_output, self.faults.line_fault)
            batch.results.append((status, body))
            if status == 200 and not batch.test:
                usage = body.get("usage") or {}
                self._billed += 1
                self._billed_in += int(usage.get("prompt_tokens", 0))
                self._billed_out += int(usage.get("completion_tokens", 0))

    def _finish(self, batch: SimBatch, status: str, unrun_code: str) -> None:
        """Write the output and error files and end the batch in `status`."""
        out: list[bytes] = []
        err: list[bytes] = []
        for n, (custom_id, _) in enumerate(batch.lines):
            line_id = f"{batch.id}-{n + 1}"
            if n < len(batch.results):
                code, body = batch.results[n]
                line = wb.result_line(line_id, custom_id, code, body, line_id)
                (out if code == 200 else err).append(_dumps(line))
            else:
                message = f"The request was not run: the batch was {status}."
                err.append(_dumps(wb.result_line(line_id, custom_id, None, {"code": unrun_code, "message": message})))
        prefix = "file-batch_output-"
        if out:
            batch.output_file_id = self._store("output.jsonl", "batch_output", b"\n".join(out) + b"\n", prefix).id
        if err:
            batch.error_file_id = self._store("error.jsonl", "batch_output", b"\n".join(err) + b"\n", prefix).id
        batch.status = status
        batch.stamps[f"{status}_at"] = self._stamp(batch)
