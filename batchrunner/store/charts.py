"""The small aggregates the HTML report draws, summed by SQLite (read-only, on a store's connection).

Every function returns a few hundred rows at most, whatever the size of the store: times are
grouped into buckets, token counts and latencies into bins, and row lists are limited. They read
the slim tables (`results`, `attempts`, `runs`: see slim.py) rather than the views, for speed;
a store older than the slim tables has no `shape` column and gets nothing (`has_slim_tables`).
Times are integer milliseconds since 1970 (UTC); a timestamp kept as text reads through julianday.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .packing import key_sql

MAX_BUCKETS = 300  # a run's timeline has at most this many points


def _ms(column: str) -> str:
    """A stored timestamp (integer ms, or ISO text in an older row) as integer ms, in SQL."""
    text = f"CAST(round((julianday({column}) - 2440587.5) * 86400000) AS INTEGER)"
    return f"CASE WHEN typeof({column}) = 'integer' THEN {column} ELSE {text} END"


def _rows(conn: sqlite3.Connection, sql: str, args: Any = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def has_slim_tables(conn: sqlite3.Connection) -> bool:
    """Whether the store has the slim tables these queries read (migration m008)."""
    return any(row[1] == "shape" for row in conn.execute("PRAGMA table_info(results)"))


def bucket_ms(span_ms: int, points: int = MAX_BUCKETS) -> int:
    """A round bucket length (1 s, 2 s, 5 s, 10 s, ... 1 day) giving at most `points` buckets over `span_ms`."""
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
    for seconds in steps:
        if span_ms / (seconds * 1000) <= points:
            return seconds * 1000
    days = 2
    while span_ms / (days * 86_400_000) > points:
        days *= 2
    return days * 86_400_000


def runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every run: id, job, mode, status, exit code, start and end in ms (end: the last attempt
    or result when the run recorded none), rows finished."""
    last = (
        f"max(coalesce((SELECT max({_ms('a.started_at')} + coalesce(a.latency_ms, 0)) FROM attempts a "
        f"WHERE a.run_id = runs.id), 0), coalesce((SELECT max({_ms('r.finished_at')}) FROM results r "
        "WHERE r.run_id = runs.id), 0))"
    )
    sql = (
        f"SELECT id, job, mode, status, exit_code, {_ms('started_at')} AS start_ms, "
        f"coalesce({_ms('ended_at')}, {last}) AS end_ms, ok, failed, rows_total FROM runs ORDER BY id"
    )
    return _rows(conn, sql)


def _params(runs_: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """A CTE `p(id, t0, b)`: each run's start and bucket length."""
    values = ", ".join("(?, ?, ?)" for _ in runs_) or "(NULL, NULL, NULL)"
    args: list[Any] = []
    for run in runs_:
        args += [run["id"], run["start_ms"], run["bucket_ms"]]
    return f"p(id, t0, b) AS (VALUES {values})", args


def run_timelines(conn: sqlite3.Connection, runs_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run (each with `start_ms` and `bucket_ms`) and bucket (0, 1, ...): rows finished,
    429 answers, retries (attempts after the first), and busy_ms, the summed time requests
    were in flight within the bucket (an attempt spanning buckets counts its overlap with each)."""
    if not runs_:
        return []
    cte, args = _params(runs_)
    s = f"({_ms('a.started_at')} - p.t0)"
    e = f"({s} + coalesce(a.latency_ms, 0))"
    spans = (
        f"spans AS MATERIALIZED (SELECT a.run_id AS id, p.b AS b, {s} AS s, {e} AS e, {s} / p.b AS fb, "
        f"{e} / p.b AS lb "
        f"FROM attempts a JOIN p ON p.id = a.run_id WHERE {s} >= 0)"
    )
    long = (
        "long AS (SELECT id, b, fb + 1 AS k, lb FROM spans WHERE lb > fb + 1 "
        "UNION ALL SELECT id, b, k + 1, lb FROM long WHERE k + 1 < lb)"
    )
    parts = [
        "SELECT id, fb AS k, 0 AS done, 0 AS throttled, 0 AS retries, e - s AS busy FROM spans WHERE lb = fb",
        "SELECT id, fb, 0, 0, 0, (fb + 1) * b - s FROM spans WHERE lb > fb",
        "SELECT id, lb, 0, 0, 0, e - lb * b FROM spans WHERE lb > fb",
        "SELECT id, k, 0, 0, 0, b FROM long",
        f"SELECT a.run_id, {s} / p.b, 0, a.http_status = 429, a.attempt > 1, 0 "
        f"FROM attempts a JOIN p ON p.id = a.run_id WHERE {s} >= 0",
        f"SELECT r.run_id, ({_ms('r.finished_at')} - p.t0) / p.b, 1, 0, 0, 0 FROM results r JOIN p ON p.id = r.run_id "
        f"WHERE {_ms('r.finished_at')} >= p.t0",
    ]
    sql = (
        f"WITH RECURSIVE {cte}, {spans}, {long} SELECT id AS run_id, k AS bucket, sum(done) AS done, "
        "sum(throttled) AS throttled, sum(retries) AS retries, sum(busy) AS busy_ms FROM ("
        + " UNION ALL ".join(parts)
        + f") WHERE k < {MAX_BUCKETS * 2} GROUP BY id, k ORDER BY id, k"
    )
    return _rows(conn, sql, args)


def latency_counts(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """(latency in ms, answered attempts) for each distinct latency (a few thousand values at most)."""
    sql = "SELECT latency_ms, count(*) FROM attempts WHERE outcome = 'ok' AND latency_ms IS NOT NULL GROUP BY 1"
    return [(int(ms), int(n)) for ms, n in conn.execute(sql)]


_ANSWER = "FROM results r LEFT JOIN attempts a ON a.id = r.answer WHERE r.status = 'ok'"


def token_range(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
    """The smallest and largest input, then output, token counts of an answered row."""
    tin, tout = "coalesce(r.input_tokens, a.input_tokens)", "coalesce(r.output_tokens, a.output_tokens)"
    sql = f"SELECT min({tin}), max({tin}), min({tout}), max({tout}) {_ANSWER}"
    return tuple(int(v or 0) for v in conn.execute(sql).fetchone())  # type: ignore[return-value]


def token_bins(conn: sqlite3.Connection, input_width: int, output_width: int) -> list[dict[str, Any]]:
    """Answered rows per bin of input tokens and of output tokens (kind, bin start, rows)."""
    sql = (
        "SELECT 'input' AS kind, coalesce(r.input_tokens, a.input_tokens) / ? * ? AS start, "
        f"count(*) AS rows {_ANSWER} AND coalesce(r.input_tokens, a.input_tokens) IS NOT NULL GROUP BY 2 UNION ALL "
        f"SELECT 'output', coalesce(r.output_tokens, a.output_tokens) / ? * ?, count(*) {_ANSWER} "
        "AND coalesce(r.output_tokens, a.output_tokens) IS NOT NULL GROUP BY 2 ORDER BY 1, 2"
    )
    return _rows(conn, sql, [input_width, input_width, output_width, output_width])


def time_span(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    """The first and last attempt's start, in ms (None without attempts)."""
    first, last = conn.execute(f"SELECT min({_ms('started_at')}), max({_ms('started_at')}) FROM attempts").fetchone()
    return first, last


def errors_over_time(conn: sqlite3.Connection, bucket: int) -> list[dict[str, Any]]:
    """Attempts that got an error, per bucket (its start in ms) and error code."""
    sql = (
        f"SELECT {_ms('started_at')} / ? * ? AS t, coalesce(error_code, 'HTTP ' || http_status) AS code, "
        "count(*) AS n FROM attempts WHERE outcome != 'ok' GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return _rows(conn, sql, [bucket, bucket])


def cache_over_time(conn: sqlite3.Connection, bucket: int) -> list[dict[str, Any]]:
    """Per bucket (start in ms): input and cached tokens of the answered attempts."""
    sql = (
        f"SELECT {_ms('started_at')} / ? * ? AS t, sum(input_tokens) AS input_tokens, "
        "coalesce(sum(cached_tokens), 0) AS cached_tokens FROM attempts WHERE input_tokens IS NOT NULL "
        "GROUP BY 1 ORDER BY 1"
    )
    return _rows(conn, sql, [bucket, bucket])


def failed_rows(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The failed rows with the most attempts: row id, key, error code and message, attempts."""
    sql = (
        f"SELECT row_id, {key_sql('key')} AS key, error_code AS code, error_message AS message, attempts FROM results "
        "WHERE status = 'failed' ORDER BY attempts DESC, finished_at DESC LIMIT ?"
    )
    return _rows(conn, sql, [limit])


def expensive_rows(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The rows that cost most over all their attempts: row id, key, model, mode, pico-USD, tokens."""
    sql = (
        f"SELECT r.row_id, {key_sql('r.key')} AS key, s.model, coalesce(s.mode, 'online') AS mode, "
        "r.total_cost_pusd AS cost_pusd, "
        "coalesce(r.input_tokens, a.input_tokens) AS input_tokens, "
        "coalesce(r.output_tokens, a.output_tokens) AS output_tokens FROM results r "
        "LEFT JOIN shapes s ON s.id = r.shape LEFT JOIN attempts a ON a.id = r.answer "
        "WHERE r.total_cost_pusd IS NOT NULL ORDER BY r.total_cost_pusd DESC LIMIT ?"
    )
    return _rows(conn, sql, [limit])


def latest_runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Each job's latest run: job, rows_total, skipped (for the pending / skipped cards)."""
    sql = (
        "SELECT job, coalesce(rows_total, 0) AS rows_total, coalesce(skipped, 0) AS skipped FROM runs "
        "WHERE id IN (SELECT max(id) FROM runs GROUP BY job)"
    )
    return _rows(conn, sql)


def settled_by_job(conn: sqlite3.Connection) -> dict[str | None, int]:
    """Results per job (ok or failed)."""
    sql = "SELECT s.job, count(*) FROM results r LEFT JOIN shapes s ON s.id = r.shape GROUP BY 1"
    return {job: int(n) for job, n in conn.execute(sql)}
