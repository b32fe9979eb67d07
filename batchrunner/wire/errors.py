"""Error answers: reading them (JSON, SSE frame, or anything) and deciding what they mean.

`classify` is the single place that turns an HTTP status and error code into what the runner
does next: retry, fail the row, or abort the run.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class Outcome(enum.Enum):
    """What the runner does with a failed attempt."""

    RETRY = "retry"  # throttling, server errors, timeouts, dropped connections
    ROW_FAILED = "failed"  # the request itself is wrong: mark the row failed, go on
    ABORT = "abort"  # key, permission, account or model problem: stop the whole run


# 4xx codes that mean the account or model cannot be used at all: no row can succeed.
ACCOUNT_CODES = frozenset(
    {
        "Arrearage",
        "PrepaidBillOverdue",
        "PostpaidBillOverdue",
        "CommodityNotPurchased",
        "ModelNotFound",
        "Model.NotExist",
        "InvalidApiKey",
        "AccessDenied",
        "AccessDenied.Unpurchased",
        "Model.AccessDenied",
        "Workspace.AccessDenied",
        "AllocationQuota.FreeTierOnly",
    }
)


@dataclass(frozen=True, slots=True)
class ServiceError:
    """A non-200 answer from the service: HTTP status plus the body's code and message."""

    status: int
    code: str
    message: str
    request_id: str | None = None
    retry_after: float | None = None

    @property
    def outcome(self) -> Outcome:
        return classify(self.status, self.code)


def classify(status: int, code: str) -> Outcome:
    """The single place that decides retry / row failure / abort for an HTTP error."""
    if status in (401, 403, 404) or code in ACCOUNT_CODES:
        return Outcome.ABORT
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.ROW_FAILED


def _retry_after(headers: dict[str, str] | None) -> float | None:
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    raw = lower.get("retry-after")
    try:
        if raw_ms is not None:
            return max(0.0, float(raw_ms) / 1000.0)
        if raw is not None:
            return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP-date; not worth honouring precisely
    return None


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    payload: Any = None
    for line in text.splitlines():  # an SSE-formatted error: the last data: line
        if line.startswith("data:"):
            try:
                payload = json.loads(line[5:])
            except ValueError:
                payload = None
    return payload


def parse_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> ServiceError:
    """Read an error answer: JSON {code, message, request_id}, an SSE error frame, or anything."""
    code, message, request_id = "", "", None
    text = body.decode("utf-8", errors="replace")
    payload = _payload(text)
    if isinstance(payload, dict):
        if isinstance(payload.get("error"), dict):  # OpenAI-compatible shape
            err = payload["error"]
            code = str(err.get("code") or err.get("type") or "")
            message = str(err.get("message") or "")
        else:
            code = str(payload.get("code") or "")
            message = str(payload.get("message") or payload.get("msg") or "")
        request_id = payload.get("request_id")
    if not code:
        code = f"HTTP{status}"
    if not message:
        message = text[:200].strip() or f"HTTP {status} with an empty body"
    if request_id is None and headers:
        request_id = {k.lower(): v for k, v in headers.items()}.get("x-request-id")
    return ServiceError(status, code, message, request_id, _retry_after(headers))


# When an error event in a stream carries no status, infer it from the code.
_STATUS_BY_CODE_PREFIX = (
    ("Throttling", 429),
    ("limit_", 429),
    ("insufficient_quota", 429),
    ("InvalidApiKey", 401),
    ("invalid_api_key", 401),
    ("AccessDenied", 403),
    ("access_denied", 403),
    ("ModelUnavailable", 503),
    ("ServiceUnavailable", 503),
    ("InternalError.Algo.InvalidParameter", 400),
    ("InternalError", 500),
    ("internal_error", 500),
    ("SystemError", 500),
    ("ModelServiceFailed", 500),
)


def status_for(code: str, given: int | None) -> int:
    """The HTTP status of an error event: the given one, or the one its code implies."""
    if given is not None:
        return given
    for prefix, status in _STATUS_BY_CODE_PREFIX:
        if code.startswith(prefix):
            return status
    return 400
