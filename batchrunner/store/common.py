"""What every part of the store shares: its timestamps and the SQL of a row's total cost."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """A UTC timestamp as stored (ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# A row's own total: every paid attempt of its request, across runs (the row's cost when no
# attempt of it carries one: a store older than per-attempt costs).
TOTAL_SQL = (
    "UPDATE results SET (total_cost_pusd, total_cost_usd) = (SELECT t, t / 1e12 FROM (SELECT "
    "coalesce(sum(a.cost_pusd), results.cost_pusd) AS t FROM attempts a WHERE a.key = results.key)) WHERE key = ?"
)
