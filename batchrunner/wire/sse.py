"""Server-sent events: framing, and the parts shared by both dialects' stream assemblers.

DashScope frames events without a space after the colon (`data:{...}`) and carries the real
HTTP status of an error event in a comment line (`:HTTP_STATUS/429`); OpenAI-style servers
write `data: {...}` and end with `data: [DONE]`. `SSEParser` reads both, keeping that comment,
which generic SSE clients drop.

Events are read line by line, as the official DashScope SDK reads them: each `data:` line is
one complete event, carrying the `event:` name and `:HTTP_STATUS/` comment written before it.
So events separated by a blank line and events written straight after one another (some
real DashScope streams have no blank line between events) read the same. Lines end in LF,
CRLF or CR (only those: httpx's `aiter_lines` also splits on U+2028 and U+0085, which JSON
text may hold raw); a leading byte-order mark is dropped; the text must be UTF-8. A `data:`
payload written over several lines (legal SSE, sent by neither dialect) would be read as
several events.

An assembler (one per dialect, in native.py and openai.py) is fed every event of one answer
and, at the end, returns the same Completion a non-streamed call would have given. An error
event raises StreamError; a stream that ends before its last chunk raises MalformedResponse
("cut"), so nothing partial is ever taken for an answer.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ServiceError, parse_error, status_for
from .types import Choice, Completion, MalformedResponse

_LINE_END = re.compile(r"\r\n|\r|\n")
_STATUS_COMMENT = ":HTTP_STATUS/"


@dataclass(slots=True)
class SSEEvent:
    event: str = "message"
    data: str = ""
    status: int | None = None  # from a ":HTTP_STATUS/nnn" comment


class SSEParser:
    """Feed the body's bytes as they arrive (`feed`), then `close()`; each returns the events
    completed so far. `line` reads one line (without its line end)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self._rest = ""  # an unterminated line (and a CR that may be half of a CRLF)
        self._event = "message"
        self._status: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        try:
            text = self._rest + self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            msg = f"stream is not UTF-8 text: {exc}"
            raise MalformedResponse(msg) from None
        lines = _LINE_END.split(text[:-1] if text.endswith("\r") else text)
        self._rest = lines.pop() + ("\r" if text.endswith("\r") else "")
        return [e for e in map(self.line, lines) if e is not None]

    def close(self) -> list[SSEEvent]:
        """The events of a last line not followed by a line end."""
        events = self.feed(b"")
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            msg = f"stream ends inside a UTF-8 character: {exc}"
            raise MalformedResponse(msg) from None
        rest, self._rest = self._rest.removesuffix("\r"), ""
        event = self.line(rest) if rest else None
        return [*events, event] if event is not None else events

    def line(self, line: str) -> SSEEvent | None:
        if not line:  # a blank line ends an event: what was set for it is forgotten
            self._event, self._status = "message", None
            return None
        if line[0] == ":":
            if line.startswith(_STATUS_COMMENT):
                digits = line[len(_STATUS_COMMENT) :].strip()
                self._status = int(digits) if digits.isdigit() else None
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            event = SSEEvent(self._event, value, self._status)
            self._event, self._status = "message", None
            return event
        if name == "event":
            self._event = value
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
