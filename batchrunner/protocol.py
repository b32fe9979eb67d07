"""The DashScope native wire format: the one module that knows paths, bodies and error codes.

The client builds requests and reads answers through this module; the simulator imports the
same constants and types so the two cannot drift apart. Nothing here does I/O.

Facts are from the DashScope text-generation reference (request body, usage fields, error
catalogue, SSE framing).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

TEXT_PATH = "/services/aigc/text-generation/generation"
MULTIMODAL_PATH = "/services/aigc/multimodal-generation/generation"
SSE_HEADER = "X-DashScope-SSE"

INTL_BASE_URL = "https://dashscope-intl.aliyuncs.com/api/v1"
CN_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
OPENAI_CHAT_PATH = "/chat/completions"
COMPATIBLE_SUFFIX = "/compatible-mode/v1"


def base_url_for(region: str, protocol: str = "dashscope") -> str:
    """The default base URL of a region (intl = Singapore, cn = Beijing) for a protocol."""
    native = CN_BASE_URL if region == "cn" else INTL_BASE_URL
    if protocol == "openai":
        return native.removesuffix("/api/v1") + COMPATIBLE_SUFFIX
    return native


# Models served by the multimodal-generation endpoint (vision models and the natively
# multimodal Qwen3.5+ plus/flash families). Matched by prefix; everything else is text.
MULTIMODAL_MODEL_PREFIXES: tuple[str, ...] = (
    "qwen3-vl",
    "qwen-vl",
    "qwen2.5-vl",
    "qvq",
    "qwen3.5-plus",
    "qwen3.5-flash",
    "qwen3.6-plus",
    "qwen3.6-flash",
    "qwen3.7-plus",
    "qwen3.8-max",
    "qwen3.8-flash",
)


def path_for_model(model: str) -> str:
    """The endpoint path (relative to the base URL) that serves `model`."""
    name = model.lower()
    if any(name.startswith(prefix) for prefix in MULTIMODAL_MODEL_PREFIXES):
        return MULTIMODAL_PATH
    return TEXT_PATH


def build_body(model: str, messages: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a generation call; result_format defaults to "message"."""
    params = {"result_format": "message", **parameters}
    return {"model": model, "input": {"messages": messages}, "parameters": params}


# --------------------------------------------------------------------------- usage


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one call, normalised over the text and multimodal response shapes."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    image_tokens: int = 0
    video_tokens: int = 0
    audio_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_wire(cls, usage: dict[str, Any] | None) -> Usage:
        """Read a `usage` object; cached tokens may sit in prompt_tokens_details or at top level."""
        u = usage or {}
        prompt = u.get("prompt_tokens_details") or {}
        out = u.get("output_tokens_details") or {}
        in_details = u.get("input_tokens_details") or {}
        inp = _int(u.get("input_tokens", u.get("prompt_tokens")))
        outp = _int(u.get("output_tokens", u.get("completion_tokens")))
        completion = u.get("completion_tokens_details") or {}
        return cls(
            input_tokens=inp,
            output_tokens=outp,
            total_tokens=_int(u.get("total_tokens")) or inp + outp,
            cached_tokens=_int(prompt.get("cached_tokens")) or _int(u.get("cached_tokens")),
            cache_creation_input_tokens=_int(prompt.get("cache_creation_input_tokens")),
            reasoning_tokens=_int(out.get("reasoning_tokens")) or _int(completion.get("reasoning_tokens")),
            image_tokens=_int(u.get("image_tokens")) or _int(in_details.get("image_tokens")),
            video_tokens=_int(u.get("video_tokens")) or _int(in_details.get("video_tokens")),
            audio_tokens=_int(u.get("audio_tokens")) or _int(in_details.get("audio_tokens")),
            raw=dict(u),
        )


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated choice (there are n of them when `n` > 1)."""

    content: str | None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: Any = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class Completion:
    """One successful answer: its choices (the first is the answer), usage and request id."""

    choices: tuple[Choice, ...]
    request_id: str | None
    usage: Usage

    @property
    def first(self) -> Choice:
        return self.choices[0] if self.choices else Choice(None)

    @property
    def content(self) -> str | None:
        return self.first.content

    @property
    def reasoning_content(self) -> str | None:
        return self.first.reasoning_content

    @property
    def finish_reason(self) -> str | None:
        return self.first.finish_reason

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        return self.first.tool_calls


class MalformedResponse(ValueError):
    """A 200 answer whose body is not the documented shape."""


def text_of(content: Any) -> str | None:
    """Message content is a string on the text endpoint, a list of {"text": ...} on multimodal."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    msg = f"message content has unexpected type {type(content).__name__}"
    raise MalformedResponse(msg)


def load_json(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A JSON object from a body, or MalformedResponse."""
    try:
        data = json.loads(body) if isinstance(body, bytes | str) else body
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"answer is not JSON: {exc}"
        raise MalformedResponse(msg) from exc
    if not isinstance(data, dict):
        msg = "answer is not a JSON object"
        raise MalformedResponse(msg)
    return data


def _choice(raw: dict[str, Any]) -> Choice:
    message = raw.get("message") or {}
    return Choice(
        content=text_of(message.get("content")),
        reasoning_content=message.get("reasoning_content") or None,
        finish_reason=raw.get("finish_reason"),
        tool_calls=message.get("tool_calls") or None,
        logprobs=raw.get("logprobs") or None,
    )


def parse_completion(body: bytes | str | dict[str, Any]) -> Completion:
    """Read a native 200 body (result_format message or text). Raises MalformedResponse."""
    data = load_json(body)
    output = data.get("output")
    if not isinstance(output, dict):
        msg = "answer has no 'output' object"
        raise MalformedResponse(msg)
    usage = Usage.from_wire(data.get("usage"))
    request_id = data.get("request_id")
    choices = output.get("choices")
    if choices:
        return Completion(tuple(_choice(c) for c in choices), request_id, usage)
    if "text" in output:
        return Completion((Choice(output.get("text"), None, output.get("finish_reason")),), request_id, usage)
    msg = "answer has neither output.choices nor output.text"
    raise MalformedResponse(msg)


# --------------------------------------------------------------------------- errors


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
    if status in (401, 403) or code in ACCOUNT_CODES:
        return Outcome.ABORT
    if status == 404:
        return Outcome.ABORT
    if status == 429 or status == 408 or status >= 500:
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


def parse_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> ServiceError:
    """Read an error answer: JSON {code, message, request_id}, an SSE error frame, or anything."""
    code, message, request_id = "", "", None
    text = body.decode("utf-8", errors="replace")
    payload: Any = None
    try:
        payload = json.loads(text)
    except ValueError:
        # An SSE-formatted error: take the last data: line.
        for line in text.splitlines():
            if line.startswith("data:"):
                try:
                    payload = json.loads(line[5:])
                except ValueError:
                    payload = None
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
