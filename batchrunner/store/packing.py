"""How single values are packed into the slim store, and the SQL that gives their text back.

A timestamp is kept as integer milliseconds since 1970 (UTC), a request key of 32 hex digits as
its 16 bytes and a request id in the UUID form as its 16 bytes, each only when the text comes
back byte for byte; anything else is kept as it came. The `*_sql` functions give the views'
text for a column.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> its milliseconds, for the texts iso_of writes
_ISO_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]+00:00"


def ms_of(text: str | None) -> int | str | None:
    """A stored timestamp: integer milliseconds since 1970 (UTC) when `iso_of` gives back the
    same text, else the text itself."""
    if text is None or len(text) != 29 or not text.endswith("+00:00"):
        return text
    # The usual case: a second seen before, and three digits of milliseconds after it.
    base = _seconds.get(text[:19])
    if base is not None and text[19] == "." and text[20:23].isdigit() and text[20:23].isascii():
        return base + int(text[20:23])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    delta = moment - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if ms < 0 or iso_of(ms) != text:
        return text
    if len(_seconds) >= 4096:
        _seconds.clear()
    _seconds[text[:19]] = ms - ms % 1000
    return ms


def iso_of(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def iso_sql(column: str) -> str:
    """A stored timestamp as its text (what `iso_of` does, in SQL)."""
    text = f"strftime('%Y-%m-%dT%H:%M:%S', {column} / 1000, 'unixepoch') || '.' || printf('%03d', {column} % 1000)"
    return f"CASE WHEN typeof({column}) = 'integer' THEN {text} || '+00:00' ELSE {column} END"


def ms_sql(column: str) -> str:
    """`ms_of` in SQL, for the migration of a store's text timestamps."""
    ms = f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000 + CAST(substr({column}, 21, 3) AS INTEGER))"
    exact = f"{column} GLOB '{_ISO_GLOB}' AND {ms} >= 0 AND ({iso_sql(ms)}) = {column}"
    return f"CASE WHEN {exact} THEN {ms} ELSE {column} END"


# ---------------------------------------------------------------------------- request keys

_HEX_KEY = re.compile("[0-9a-f]{32}")


def packed_key(key: Any) -> Any:
    """A request key as stored: the 16 bytes of the 32 lower-case hex digits render.key_of
    writes (`key_sql` gives back the very same text), else as it came."""
    if isinstance(key, str) and len(key) == 32 and _HEX_KEY.fullmatch(key):
        return bytes.fromhex(key)
    return key


def key_text(stored: Any) -> Any:
    """A stored request key as its text (what `key_sql` does, in Python)."""
    return stored.hex() if isinstance(stored, bytes) else stored


def key_sql(column: str) -> str:
    """A stored request key as its text."""
    return f"CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) ELSE {column} END"


# ---------------------------------------------------------------------------- request ids

_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def packed_id(request_id: Any) -> Any:
    """A request id as stored: the 16 bytes of a UUID written in its usual lower-case form
    (what `request_id_sql` gives back, exactly), else as it came."""
    if isinstance(request_id, str) and len(request_id) == 36 and _UUID.fullmatch(request_id):
        return bytes.fromhex(request_id.replace("-", ""))
    return request_id


def request_id_sql(column: str) -> str:
    """A stored request id as its text (the UUID form of 16 bytes)."""
    h = f"lower(hex({column}))"
    parts = " || '-' || ".join(f"substr({h}, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))
    return f"CASE WHEN typeof({column}) = 'blob' THEN {parts} ELSE {column} END"


# ---------------------------------------------------------------------------- parameters
