"""What an answer is, whichever dialect carried it: usage, choices, a completion.

Both dialects (native and OpenAI-compatible) read their answers into these frozen values, so
everything past the client (records, pricing, the budget) is written once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class MalformedResponse(ValueError):
    """A 200 answer whose body is not the documented shape."""


def _int(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is int:  # the usual case, first
        return value
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one call, normalised over the text, multimodal and OpenAI shapes."""

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
        get = u.get
        prompt = get("prompt_tokens_details") or {}
        out = get("output_tokens_details") or {}
        in_details = get("input_tokens_details") or {}
        completion = get("completion_tokens_details") or {}
        inp = _int(get("input_tokens", get("prompt_tokens")))
        outp = _int(get("output_tokens", get("completion_tokens")))
        return cls(
            input_tokens=inp,
            output_tokens=outp,
            total_tokens=_int(get("total_tokens")) or inp + outp,
            cached_tokens=_int(prompt.get("cached_tokens")) or _int(get("cached_tokens")),
            cache_creation_input_tokens=_int(prompt.get("cache_creation_input_tokens")),
            reasoning_tokens=_int(out.get("reasoning_tokens")) or _int(completion.get("reasoning_tokens")),
            image_tokens=_int(get("image_tokens")) or _int(in_details.get("image_tokens")),
            video_tokens=_int(get("video_tokens")) or _int(in_details.get("video_tokens")),
            audio_tokens=_int(get("audio_tokens")) or _int(in_details.get("audio_tokens")),
            raw=dict(u),
        )


# The typed usage columns, in the order the store keeps them.
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
    "image_tokens",
    "video_tokens",
    "audio_tokens",
)


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
        if isinstance(body, bytes) and body[:1] == b"{" and body[1:2] != b"\x00":
            body = body.decode("utf-8", "surrogatepass")  # what json.loads detects for these bytes
        data = json.loads(body) if isinstance(body, bytes | str) else body
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"answer is not JSON: {exc}"
        raise MalformedResponse(msg) from exc
    if not isinstance(data, dict):
        msg = "answer is not a JSON object"
        raise MalformedResponse(msg)
    return data
