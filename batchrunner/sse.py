"""Server-sent events: framing, and assembling a streamed answer into one Completion.

DashScope frames events without a space after the colon (`data:{...}`) and carries the real
HTTP status of an error event in a comment line (`:HTTP_STATUS/429`); OpenAI-style servers
write `data: {...}` and end with `data: [DONE]`. `SSEParser` reads both, keeping that comment,
which generic SSE clients drop.

An assembler is fed every event of one answer and, at the end, returns the same Completion a
non-streamed call would have given. An error event raises StreamError; a stream that ends
before its last chunk raises protocol.MalformedResponse ("cut"), so nothing partial is ever
taken for an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol


@dataclass(slots=True)
class SSEEvent:
    event: str = "message"
    data: str = ""
    status: int | None = None  # from a ":HTTP_STATUS/nnn" comment


class SSEParser:
    """Feed lines (without their newline); complete events come back from `line`."""

    def __init__(self) -> None:
        self._event = SSEEvent()
        self._data: list[str] = []

    def line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = SSEEvent()
                return None
            event, self._event = self._event, SSEEvent()
            event.data, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            if line.startswith(":HTTP_STATUS/"):
                digits = line[len(":HTTP_STATUS/") :].strip()
                self._event.status = int(digits) if digits.isdigit() else None
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event.event = value
        return None


class StreamError(Exception):
    """An error event inside a stream."""

    def __init__(self, error: protocol.ServiceError) -> None:
        super().__init__(f"HTTP {error.status} {error.code}: {error.message}")
        self.error = error


# When an error event carries no status, infer it from the code (for classification).
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
    if given is not None:
        return given
    for prefix, status in _STATUS_BY_CODE_PREFIX:
        if code.startswith(prefix):
            return status
    return 400


def _error(event: SSEEvent) -> protocol.ServiceError:
    err = protocol.parse_error(event.status or 500, event.data.encode())
    return protocol.ServiceError(status_for(err.code, event.status), err.code, err.message, err.request_id)


class StreamAssembler(Protocol):
    def feed(self, event: SSEEvent) -> None: ...
    def result(self) -> protocol.Completion: ...


@dataclass(slots=True)
class _Acc:
    """A choice being assembled."""

    content: str = ""
    reasoning: str = ""
    finish: str | None = None
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] = field(default_factory=list)

    def add_calls(self, calls: list[dict[str, Any]], *, incremental: bool) -> None:
        if not incremental:
            self.calls = {}
        for n, call in enumerate(calls):
            index = call.get("index", n)
            into = self.calls.setdefault(index, {"index": index, "type": "function", "function": {}})
            for key in ("id", "type"):
                if call.get(key):
                    into[key] = call[key]
            fn = call.get("function") or {}
            if fn.get("name"):
                into["function"]["name"] = fn["name"]
            if "arguments" in fn:
                before = into["function"].get("arguments", "") if incremental else ""
                into["function"]["arguments"] = before + (fn["arguments"] or "")

    def choice(self) -> protocol.Choice:
        calls = [self.calls[i] for i in sorted(self.calls)] or None
        return protocol.Choice(
            content=self.content,
            reasoning_content=self.reasoning or None,
            finish_reason=self.finish,
            tool_calls=calls,
            logprobs={"content": self.logprobs} if self.logprobs else None,
        )


def _done(accs: dict[int, _Acc]) -> bool:
    return bool(accs) and all(a.finish not in (None, "null") for a in accs.values())


class NativeStream:
    """Assembles a DashScope SSE answer (usage is cumulative in every chunk)."""

    def __init__(self, *, incremental: bool) -> None:
        self.incremental = incremental
        self._accs: dict[int, _Acc] = {}
        self._usage: dict[str, Any] | None = None
        self._request_id: str | None = None

    def feed(self, event: SSEEvent) -> None:
        if event.event == "error":
            raise StreamError(_error(event))
        if not event.data:
            return
        data = protocol.load_json(event.data)
        if data.get("code") and not data.get("output"):
            raise StreamError(_error(event))
        self._request_id = data.get("request_id") or self._request_id
        self._usage = data.get("usage") or self._usage
        output = data.get("output") or {}
        if "choices" not in output and "text" in output:  # result_format text
            output = {
                "choices": [{"finish_reason": output.get("finish_reason"), "message": {"content": output["text"]}}]
            }
        for n, raw in enumerate(output.get("choices") or []):
            acc = self._accs.setdefault(raw.get("index", n), _Acc())
            message = raw.get("message") or {}
            content = protocol.text_of(message.get("content")) or ""
            reasoning = message.get("reasoning_content") or ""
            if self.incremental:
                acc.content += content
                acc.reasoning += reasoning
            else:
                acc.content = content or acc.content
                acc.reasoning = reasoning or acc.reasoning
            if message.get("tool_calls"):
                acc.add_calls(message["tool_calls"], incremental=self.incremental)
            logprobs = (raw.get("logprobs") or {}).get("content")
            if logprobs:
                acc.logprobs = acc.logprobs + logprobs if self.incremental else list(logprobs)
            if raw.get("finish_reason") not in (None, "null"):
                acc.finish = raw["finish_reason"]

    def result(self) -> protocol.Completion:
        if not _done(self._accs):
            msg = "stream ended before its last chunk (connection cut mid-answer)"
            raise protocol.MalformedResponse(msg)
        choices = tuple(self._accs[i].choice() for i in sorted(self._accs))
        return protocol.Completion(choices, self._request_id, protocol.Usage.from_wire(self._usage))


class OpenAIStream:
    """Assembles an OpenAI-style SSE answer (deltas; usage in a last chunk; `[DONE]`)."""

    def __init__(self) -> None:
        self._accs: dict[int, _Acc] = {}
        self._usage: dict[str, Any] | None = None
        self._request_id: str | None = None
        self._finished = False

    def feed(self, event: SSEEvent) -> None:
        if event.data.strip() == "[DONE]":
            self._finished = True
            return
        if not event.data:
            return
        data = protocol.load_json(event.data)
        if isinstance(data.get("error"), dict) or event.event == "error":
            raise StreamError(_error(event))
        self._request_id = data.get("request_id") or data.get("id") or self._request_id
        self._usage = data.get("usage") or self._usage
        for raw in data.get("choices") or []:
            acc = self._accs.setdefault(raw.get("index", 0), _Acc())
            delta = raw.get("delta") or {}
            acc.content += delta.get("content") or ""
            acc.reasoning += delta.get("reasoning_content") or ""
            if delta.get("tool_calls"):
                acc.add_calls(delta["tool_calls"], incremental=True)
            logprobs = (raw.get("logprobs") or {}).get("content")
            if logprobs:
                acc.logprobs.extend(logprobs)
            if raw.get("finish_reason"):
                acc.finish = raw["finish_reason"]

    def result(self) -> protocol.Completion:
        if not (self._finished and _done(self._accs)):
            msg = "stream ended before [DONE] (connection cut mid-answer)"
            raise protocol.MalformedResponse(msg)
        choices = tuple(self._accs[i].choice() for i in sorted(self._accs))
        return protocol.Completion(choices, self._request_id, protocol.Usage.from_wire(self._usage))
