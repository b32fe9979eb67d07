"""Turning one input row into one request: template rendering, messages, and the request key.

A template holds literal text and `{column}` placeholders, nothing else: no attribute or
index access, no conversions or format specs (so a cell can never reach Python objects).
`{{` and `}}` stand for literal braces. A list or struct cell is rendered as JSON.

Rows become full requests (media, seeds, samples, request key) in `render`.
"""

from __future__ import annotations

import base64
import json
import string
from dataclasses import dataclass
from typing import Any

from .errors import SpecError

_FORMATTER = string.Formatter()
VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed prompt template: alternating literal text and column names."""

    parts: tuple[tuple[str, str | None], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for _, column in self.parts:
            if column is not None:
                seen.setdefault(column, None)
        return tuple(seen)

    def render(self, row: dict[str, Any]) -> str:
        out: list[str] = []
        for literal, column in self.parts:
            out.append(literal)
            if column is not None:
                out.append(_cell_text(row[column]))
        return "".join(out)


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    if isinstance(value, list | tuple | dict):  # a list or struct cell (Parquet, a JSONL object): JSON
        return cell_json(value)
    return str(value)


def cell_json(value: Any) -> str:
    """A nested cell as JSON text (bytes as base64, dates and the like as their text)."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def parse_template(template: str, *, where: str = "[prompt] template") -> Template:
    """Parse and check a template. Raises SpecError naming the offending placeholder."""
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError as exc:
        msg = f"{where}: {exc}; write {{{{ and }}}} for literal braces"
        raise SpecError(msg) from None
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in pieces:
        if field is None:
            parts.append((literal, None))
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if field == "" or field.isdigit():
            msg = f"{where}: placeholder {shown} must name a column, like {{text}}"
            raise SpecError(msg)
        if any(ch in field for ch in ".[]"):
            msg = (
                f"{where}: placeholder {shown} uses attribute or index access, which is not "
                f"allowed; name a column only, like {{{field.split('.')[0].split('[')[0]}}}"
            )
            raise SpecError(msg)
        if conversion or spec:
            msg = f"{where}: placeholder {shown} has a conversion or format spec; use {{{field}}}"
            raise SpecError(msg)
        parts.append((literal, field))
    return Template(tuple(parts))


def parse_messages_cell(raw: Any, system: str | None = None) -> list[dict[str, Any]]:
    """A messages cell: a JSON list of {role, content}. Raises ValueError saying what is wrong."""
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            msg = f"not valid JSON ({exc})"
            raise ValueError(msg) from None
    else:
        value = raw
    if not isinstance(value, list) or not value:
        msg = "must be a non-empty JSON list of {role, content} objects"
        raise ValueError(msg)
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            msg = f"item {i} must be an object with `role` and `content`"
            raise ValueError(msg)
        if item["role"] not in VALID_ROLES:
            msg = f"item {i} has role {item['role']!r}; use one of {sorted(VALID_ROLES)}"
            raise ValueError(msg)
        messages.append(dict(item))
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def mentions(messages: list[dict[str, Any]], word: str) -> bool:
    """Whether the text of some message holds `word`, in any case. The service refuses a
    json_object request whose messages do not mention JSON this way."""
    word = word.lower()
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(item.get("text", "")) for item in content if isinstance(item, dict))
        if isinstance(content, str) and word in content.lower():
            return True
    return False


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A cheap upper-leaning estimate of input tokens, for the tokens-per-minute limiter.

    About one token per 3 bytes of UTF-8 (Latin text runs near 4 bytes a token, CJK near 3),
    plus a few tokens of chat template per message.
    """
    size = 0
    for message in messages:
        content = message.get("content")
        items = [{"text": content}] if isinstance(content, str) else content or []
        for item in items:
            if not isinstance(item, dict):
                continue
            if "image" in item:
                size += MEDIA_ESTIMATE
            elif "video" in item:
                size += 2 * MEDIA_ESTIMATE
            else:
                size += len(str(item.get("text", "")).encode("utf-8")) // 3
        size += 4
    return size + 3


MEDIA_ESTIMATE = 1024  # tokens assumed per image (twice that per video) for the TPM limiter
