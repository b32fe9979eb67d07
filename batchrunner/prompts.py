"""Turning one input row into one request: template rendering, messages, and the request key.

A template holds literal text and `{column}` placeholders, nothing else: no attribute or
index access, no conversions or format specs (so a cell can never reach Python objects).
`{{` and `}}` stand for literal braces.

The request key is a hash of the exact request (model, endpoint, messages, parameters). The
store is keyed on it, so a rerun skips requests that already finished and a changed
template or parameter re-sends only the rows whose request changed.
"""

from __future__ import annotations

import hashlib
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


def messages_from_template(system: str | None, user_text: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_text})
    return messages


def parse_messages_cell(raw: Any, system: str | None) -> list[dict[str, Any]]:
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


def request_key(model: str, path: str, messages: list[dict[str, Any]], parameters: dict[str, Any]) -> str:
    """A stable 128-bit hex digest of the exact request."""
    canonical = json.dumps(
        [model, path, messages, parameters],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A cheap upper-leaning estimate of input tokens, for the tokens-per-minute limiter.

    About one token per 3 bytes of UTF-8 (Latin text runs near 4 bytes a token, CJK near 3),
    plus a few tokens of chat template per message.
    """
    size = 0
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        size += len(text.encode("utf-8")) // 3 + 4
    return size + 3
