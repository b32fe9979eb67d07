"""What every part of the store shares: its timestamps and the SQL of a row's total cost."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second: tuple[int, str] = (-1, "")  # the last whole second `now` formatted, and its text


def now() -> str:
    """A UTC timestamp as stored (ISO 8601, milliseconds): what
    `datetime.now(UTC).isoformat(timespec="milliseconds")` gives, with the date and time of
    day formatted once a second (it is taken several times for every request)."""
    global _second
    ns = time.time_ns()
    second, ms = ns // 1_000_000_000, ns // 1_000_000 % 1000
    cached = _second
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{ms:03d}+00:00"


# A row's own total: every paid attempt of its request, across runs (the row's cost when no
# attempt of it carries one: a store older than per-attempt costs).
TOTAL_SQL = (
    "UPDATE results SET total_cost_pusd = (SELECT coalesce(sum(a.cost_pusd), results.cost_pusd) "
    "FROM attempts a WHERE a.key = results.key) WHERE key = ?"
)


# The typed usage columns of `results` and `attempts` (the same names as wire.Usage's fields).
USAGE_COLUMNS = (
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

# A cost and its parts, in exact integer pico-USD (1e-12 USD).
COST_COLUMNS = (
    "cost_pusd",
    "input_cost_pusd",
    "cached_cost_pusd",
    "cache_creation_cost_pusd",
    "output_cost_pusd",
    "saved_pusd",
)
