"""The OpenAI-compatible Batch API (DashScope compatible mode): files, batches, JSONL lines.

All paths are relative to the compatible-mode root, e.g.
https://dashscope-intl.aliyuncs.com/compatible-mode/v1:

    POST   {root}/files                 multipart `file`, purpose=batch -> file object
    GET    {root}/files                 list; GET / DELETE {root}/files/{id}
    GET    {root}/files/{id}/content    the file's bytes (JSONL)
    POST   {root}/batches               {input_file_id, endpoint, completion_window, metadata}
    GET    {root}/batches/{id}          the batch object; POST {root}/batches/{id}/cancel
    GET    {root}/batches?limit&after&ds_name&status&input_file_ids

Answers are read liberally: `output_file_id` / `error_file_id` may be null or "" (both mean
none), `data` of a list may be null, counts and timestamps may be missing. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .openai import parse_chat_completion
from .types import Completion, MalformedResponse, Usage, load_json

FILES_PATH = "/files"
BATCHES_PATH = "/batches"
BATCH_ENDPOINT = "/v1/chat/completions"  # the `url` of a line and the `endpoint` of a batch
TEST_ENDPOINT = "/v1/chat/ds-test"  # batch-test-model: no inference, a fixed answer, free
TEST_MODEL = "batch-test-model"
PURPOSE = "batch"

MAX_LINES = 50_000  # requests a file
MAX_FILE_BYTES = 500 * 1024 * 1024
MAX_LINE_BYTES = 6 * 1024 * 1024
MIN_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 336  # 14 days
DEFAULT_WINDOW = "24h"
DS_NAME_MAX = 100
DS_DESCRIPTION_MAX = 200

VALIDATING = "validating"
IN_PROGRESS = "in_progress"
FINALIZING = "finalizing"
COMPLETED = "completed"
FAILED = "failed"
EXPIRED = "expired"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
STATUSES = (VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED, FAILED, EXPIRED, CANCELLING, CANCELLED)
TERMINAL = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})

# `error.code` of a line that got no answer because its batch ended first.
LINE_EXPIRED = "batch_expired"
LINE_CANCELLED = "batch_cancelled"
# Validation codes of a failed batch (`errors.data[].code`).
URL_NOT_FOUND = "url_not_found"
MISMATCHED_MODEL = "mismatched_model"
DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
INVALID_LINE = "invalid_json_line"
TOO_MANY_LINES = "too_many_lines"
LINE_TOO_LARGE = "line_too_large"

TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)

_WINDOW = re.compile(r"^\s*(\d+)\s*h\s*$")


# ----------------------------------------------------------------- paths


def file_path(file_id: str) -> str:
    return f"{FILES_PATH}/{file_id}"


def file_content_path(file_id: str) -> str:
    return f"{FILES_PATH}/{file_id}/content"


def batch_path(batch_id: str) -> str:
    return f"{BATCHES_PATH}/{batch_id}"


def cancel_path(batch_id: str) -> str:
    return f"{BATCHES_PATH}/{batch_id}/cancel"


def list_query(
    *,
    limit: int | None = None,
    after: str | None = None,
    ds_name: str | None = None,
    status: Iterable[str] = (),
    input_file_ids: Iterable[str] = (),
) -> dict[str, str]:
    """The query of GET {root}/batches (`status` and `input_file_ids` are comma lists)."""
    query: dict[str, str] = {}
    if limit is not None:
        query["limit"] = str(limit)
    if after:
        query["after"] = after
    if ds_name:
        query["ds_name"] = ds_name
    statuses = ",".join(status)
    if statuses:
        query["status"] = statuses
    ids = ",".join(input_file_ids)
    if ids:
        query["input_file_ids"] = ids
    return query


# ----------------------------------------------------------------- requests


def window_hours(window: str) -> int:
    """The hours of a `completion_window` ("24h" .. "336h"). Raises ValueError."""
    match = _WINDOW.match(window)
    hours = int(match.group(1)) if match else -1
    if not MIN_WINDOW_HOURS <= hours <= MAX_WINDOW_HOURS:
        msg = f"completion_window must be {MIN_WINDOW_HOURS}h..{MAX_WINDOW_HOURS}h, got {window!r}"
        raise ValueError(msg)
    return hours


def input_line(custom_id: str, body: dict[str, Any], url: str = BATCH_ENDPOINT) -> dict[str, Any]:
    """One request line of an input file, from a chat/completions body (never streamed)."""
    clean = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": clean}


def encode_line(custom_id: str, body: dict[str, Any], url: str = BATCH_ENDPOINT) -> bytes:
    """The JSONL bytes of one input line (ending in a newline). Raises ValueError over 6 MB."""
    data = json.dumps(input_line(custom_id, body, url), ensure_ascii=False, separators=(",", ":")).encode()
    if len(data) > MAX_LINE_BYTES:
        msg = f"line {custom_id!r} is {len(data)} bytes; the Batch API takes at most {MAX_LINE_BYTES}"
        raise ValueError(msg)
    return data + b"\n"


def create_body(
    input_file_id: str, *, window: str = DEFAULT_WINDOW, endpoint: str = BATCH_ENDPOINT, **metadata: str
) -> dict[str, Any]:
    """The body of POST {root}/batches; `metadata` e.g. ds_name=..., ds_description=..."""
    window_hours(window)
    body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": window}
    if metadata:
        body["metadata"] = dict(metadata)
    return body


# ----------------------------------------------------------------- objects


def _str(value: Any) -> str | None:
    """A non-empty string, else None (null and "" both mean none)."""
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _object(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    return data if isinstance(data, dict) else load_json(data)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file object of the Files API."""

    id: str
    bytes: int = 0
    filename: str = ""
    purpose: str = ""
    status: str = ""
    created_at: int | None = None


def parse_file(data: bytes | str | dict[str, Any]) -> RemoteFile:
    """Read a file object. Raises MalformedResponse when it has no id."""
    obj = _object(data)
    file_id = _str(obj.get("id"))
    if file_id is None:
        msg = "file object has no id"
        raise MalformedResponse(msg)
    return RemoteFile(
        file_id,
        _int(obj.get("bytes")),
        str(obj.get("filename") or ""),
        str(obj.get("purpose") or ""),
        str(obj.get("status") or ""),
        _opt_int(obj.get("created_at")),
    )


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class BatchError:
    """One entry of a failed batch's `errors.data`; `line` is 1-based, None when not given."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch object. `output_file_id` / `error_file_id` are None when absent, null or ""."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    request_counts: RequestCounts = RequestCounts()
    errors: tuple[BatchError, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    timestamps: dict[str, int] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True once the batch will change no more (completed, failed, expired, cancelled)."""
        return self.status in TERMINAL

    @property
    def result_files(self) -> tuple[str, ...]:
        """The ids of the output and error files that exist, output first."""
        return tuple(f for f in (self.output_file_id, self.error_file_id) if f is not None)

    @property
    def created_at(self) -> int | None:
        return self.timestamps.get("created_at")


def _errors(value: Any) -> tuple[BatchError, ...]:
    data = value.get("data") if isinstance(value, dict) else value
    if not isinstance(data, list):
        return ()
    return tuple(
        BatchError(str(e.get("code") or ""), str(e.get("message") or ""), _str(e.get("param")), _opt_int(e.get("line")))
        for e in data
        if isinstance(e, dict)
    )


def parse_batch(data: bytes | str | dict[str, Any]) -> Batch:
    """Read a batch object. Raises MalformedResponse without an id or a known status."""
    obj = _object(data)
    batch_id = _str(obj.get("id"))
    status = obj.get("status")
    if batch_id is None or status not in STATUSES:
        msg = f"batch object without an id or a known status (status {status!r})"
        raise MalformedResponse(msg)
    counts = obj.get("request_counts") or {}
    metadata = obj.get("metadata") or {}
    return Batch(
        batch_id,
        str(status),
        _str(obj.get("input_file_id")),
        _str(obj.get("output_file_id")),
        _str(obj.get("error_file_id")),
        _str(obj.get("endpoint")),
        _str(obj.get("completion_window")),
        RequestCounts(_int(counts.get("total")), _int(counts.get("completed")), _int(counts.get("failed"))),
        _errors(obj.get("errors")),
        {str(k): str(v) for k, v in metadata.items() if v is not None} if isinstance(metadata, dict) else {},
        {k: v for k in TIMESTAMPS if (v := _opt_int(obj.get(k))) is not None},
    )


@dataclass(frozen=True, slots=True)
class BatchPage:
    """One page of GET {root}/batches."""

    batches: tuple[Batch, ...]
    has_more: bool = False
    last_id: str | None = None


def parse_batch_list(data: bytes | str | dict[str, Any]) -> BatchPage:
    """Read a list answer (`data` may be null when empty)."""
    obj = _object(data)
    items = obj.get("data") or []
    batches = tuple(parse_batch(b) for b in items if isinstance(b, dict))
    last = _str(obj.get("last_id")) or (batches[-1].id if batches else None)
    return BatchPage(batches, obj.get("has_more") is True, last)


# ----------------------------------------------------------------- result lines


@dataclass(frozen=True, slots=True)
class LineResult:
    """What became of one request line: an answer, or a failure and whether to send it again.

    `resubmit` is True for lines that got no verdict (batch_expired, batch_cancelled, 429, 5xx)
    and False for a 4xx the request itself earned (sending it again would fail again)."""

    custom_id: str
    completion: Completion | None = None
    status_code: int | None = None
    code: str | None = None
    message: str = ""
    resubmit: bool = False
    request_id: str | None = None
    usage: Usage | None = None  # of a 200 whose body could not be read: it was billed all the same

    @property
    def ok(self) -> bool:
        return self.completion is not None


def _should_resubmit(status: int | None, code: str | None) -> bool:
    """No verdict on the request itself: its batch ended first, it was throttled, timed out,
    conflicted, hit a server error, or the account was refused (sending it again may work)."""
    if code in (LINE_EXPIRED, LINE_CANCELLED):
        return True
    return status is None or status in (401, 403, 408, 409, 429) or status >= 500


def parse_result_line(line: bytes | str | dict[str, Any]) -> LineResult:
    """Read one line of an output or error file. Raises MalformedResponse."""
    obj = _object(line)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str | int) or isinstance(custom_id, bool):
        msg = "result line has no custom_id"
        raise MalformedResponse(msg)
    cid = str(custom_id)
    response = obj.get("response") if isinstance(obj.get("response"), dict) else None
    error = obj.get("error") if isinstance(obj.get("error"), dict) else None
    status = _opt_int(response.get("status_code")) if response is not None else None
    body = response.get("body") if response is not None else None
    request_id = _str(response.get("request_id")) if response is not None else None
    if status == 200 and isinstance(body, dict) and error is None:
        try:
            completion = parse_chat_completion(body)
        except MalformedResponse as exc:  # answered (and billed), but not readable: never resent
            usage = Usage.from_wire(body.get("usage")) if isinstance(body.get("usage"), dict) else None
            return LineResult(cid, None, 200, "malformed_answer", str(exc), False, request_id, usage)
        if completion.request_id is None and request_id is not None:
            completion = Completion(completion.choices, request_id, completion.usage)
        return LineResult(cid, completion, 200, request_id=request_id)
    detail = (body.get("error") if isinstance(body, dict) else None) or error or {}
    if not isinstance(detail, dict):
        detail = {}
    code = _str(detail.get("code")) or (_str(error.get("code")) if error else None)
    message = str(detail.get("message") or (error.get("message") if error else "") or "")
    if status == 200:  # a 200 without a usable body
        status, code = None, code or "malformed_answer"
    return LineResult(cid, None, status, code, message, _should_resubmit(status, code), request_id)


def iter_result_lines(content: bytes | str) -> Iterator[LineResult]:
    """Every line of an output or error file, in file order (blank lines skipped)."""
    text = content.decode("utf-8") if isinstance(content, bytes) else content
    for raw in text.splitlines():
        if raw.strip():
            yield parse_result_line(raw)


def result_line(
    line_id: str, custom_id: str, status: int | None, body: dict[str, Any] | None, request_id: str | None = None
) -> dict[str, Any]:
    """An output / error line (the simulator writes these): an answer or error body with its
    status, or `status` None and `body` {"code","message"} for a line its batch never ran."""
    if status is None:
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": body}
    response = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
