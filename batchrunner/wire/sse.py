"""Server-sent events: framing, and the parts shared by both dialects' stream assemblers.

DashScope frames events without a space after the colon (`data:{...}`) and carries the real
HTTP status of an error event in a comment line (`:HTTP_STATUS/429`); OpenAI-style servers
write `data: {...}` and end with `data: [DONE]`. `SSEParser` reads both, keeping that comment,
which generic SSE clients drop.

An assembler (one per dialect, in native.py and openai.py) is fed every event of one answer
and, at the end, returns the same Completion a non-streamed call would have given. An error
event raises StreamError; a stream that ends before its last chunk raises MalformedResponse
("cut"), so nothing partial is ever taken for an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ServiceError, parse_error, status_for
from .types import Choice, Completion


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

    def __init__(self, error: ServiceError) -> None:
        super().__init__(f"HTTP {error.status} {error.code}: {error.message}")
        self.error = error


def event_error(event: SSEEvent) -> ServiceError:
    """The service error an error event carries (its status inferred when missing)."""
    err = parse_error(event.status or 500, event.data.encode())
    return ServiceError(status_for(err.code, event.status), err.code, err.message, err.request_id)


class StreamAssembler(Protocol):
    def feed(self, event: SSEEvent) -> None: ...
    def result(self) -> Completion: ...


@dataclass(slots=True)
class ChoiceBuilder:
    """A choice being assembled from chunks."""

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

    def choice(self) -> Choice:
        calls = [self.calls[i] for i in sorted(self.calls)] or None
        return Choice(
            content=self.content,
            reasoning_content=self.reasoning or None,
            finish_reason=self.finish,
            tool_calls=calls,
            logprobs={"content": self.logprobs} if self.logprobs else None,
        )


def all_finished(builders: dict[int, ChoiceBuilder]) -> bool:
    return bool(builders) and all(b.finish not in (None, "null") for b in builders.values())
