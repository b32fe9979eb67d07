"""JSON text for the store's TEXT columns: compact, non-ASCII kept as it is.

`dumps(value)` is `json.dumps(value, ensure_ascii=False, separators=(",", ":"))` with the
encoder made once (json.dumps builds a new one for every call with these options), and
`usage_json` encodes an answer's raw usage once for its attempt and its result.
"""

from __future__ import annotations

import json
from typing import Any

from .wire import Usage

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)  # (never circular)
_last: tuple[Usage | None, str | None] = (None, None)  # the last usage encoded, and its text


def dumps(value: Any) -> str | None:
    """JSON for a TEXT column (None stays NULL)."""
    return None if value is None else _ENCODER.encode(value)


def usage_json(usage: Usage) -> str | None:
    """`dumps(usage.raw)`; the same answer's usage is encoded once (the tuple is read and
    replaced whole, so another thread can never pair one usage with another's text)."""
    global _last
    last = _last
    if last[0] is not usage:
        last = _last = (usage, dumps(usage.raw))
    return last[1]
