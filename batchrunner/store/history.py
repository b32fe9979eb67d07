"""What the store knows of money and tokens: the sums behind `report`, `estimate`, the job's
budget and the benchmarks. A part of `Store` (the only place, with its migrations, that
writes SQL), kept in its own file."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import packing


class History:
    """Reads over results and attempts; mixed into `Store`, which opens `conn`."""

    path: Path
    conn: sqlite3.Connection
    _reader: sqlite3.Connection  # for reads made while the writer thread commits
    _packed_keys: bool | None

    def tables(self) -> set[str]:
        """The tables of the file (a store older than a migration lacks its tables)."""
        return {name for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _columns(self, table: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f"PRAGMA table_info([{table}])")]

    def _keys_packed(self) -> bool:
        """Whether this file keeps request keys as bytes (m010; a store opened read-only may be
        older). Asked once."""
        packed = getattr(self, "_packed_keys", None)
        if packed is None:
            packed = False
            if "_batchrunner_migrations" in self.tables():
                sql = "SELECT 1 FROM _batchrunner_migrations WHERE name = 'm010_packed_keys'"
                packed = self.conn.execute(sql).fetchone() is not None
            self._packed_keys = packed
        return packed

    def _stored_keys(self, keys: Sequence[str]) -> list[Any]:
        """Request keys as this file keeps them (packing.packed_key)."""
        return [packing.packed_key(k) for k in keys] if self._keys_packed() else list(keys)

    def _table_key(self, view_key: str) -> str:
        """SQL for the key the tables keep, from a view's `view_key` (its text), so that a
        lookup in a table by key can use the table's index."""
        if not self._keys_packed():
            return view_key
        self.conn.create_function("batchrunner_packed_key", 1, packing.packed_key, deterministic=True)
        return f"batchrunner_packed_key({view_key})"

    def _view(self, table: str) -> str:
        """What to read `results` or `attempts` from under their old column names: the view
        (slim.py), or the table itself in a store older than the views (read-only)."""
        view = f"{table}_view"
        found = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?", [view]).fetchone()
        return view if found else table

    def _answered(self) -> str:
        """An attempt that was answered (it has a usage), as a condition on `attempts`."""
        if "usage_template" in self._columns("attempts"):
            return "(usage IS NOT NULL OR usage_template IS NOT NULL)"
        return "usage IS NOT NULL"

    def answered_averages(self) -> tuple[int, float | None, float | None]:
        """(answered requests, their mean output tokens, their mean latency in ms)."""
        results = self._view("results")
        row = self.conn.execute(
            f"SELECT count(*), avg(output_tokens), avg(latency_ms) FROM {results} WHERE status = 'ok'"
        )
        n, out, latency = row.fetchone()
        return int(n), out, latency

    def cache_history(self) -> tuple[int, int, int, int, int]:
        """The cache in the answered attempts on record (the rows, in a store older than
        per-attempt usage): (input tokens, explicit-cache hits, implicit-cache hits) of those
        that wrote nothing to the cache, then (tokens written, attempts that wrote)."""
        table = self._view("attempts") if "input_tokens" in self._columns("attempts") else "results"
        if "cache_creation_input_tokens" not in self._columns(table):
            return 0, 0, 0, 0, 0
        wrote = "coalesce(cache_creation_input_tokens, 0) > 0"
        explicit = "json_extract(usage, '$.prompt_tokens_details.cache_type') = 'ephemeral'"
        sums = [
            f"CASE WHEN NOT {wrote} THEN input_tokens END",
            f"CASE WHEN NOT {wrote} AND {explicit} THEN cached_tokens END",
        ]
        sums += [f"CASE WHEN NOT {wrote} AND NOT coalesce({explicit}, 0) THEN cached_tokens END"]
        sums += ["cache_creation_input_tokens", wrote]
        sql = f"SELECT {', '.join(f'coalesce(sum({s}), 0)' for s in sums)} FROM {table} WHERE input_tokens IS NOT NULL"
        inputs, explicit_hits, implicit_hits, written, writers = self.conn.execute(sql).fetchone()
        return int(inputs), int(explicit_hits), int(implicit_hits), int(written), int(writers)

    def price_versions(self) -> set[str]:
        """The price-table versions the stored costs were computed with."""
        results = self._view("results")
        if "price_version" not in self._columns(results):
            return set()
        sql = f"SELECT DISTINCT price_version FROM {results} WHERE price_version IS NOT NULL"
        if "shape" in self._columns("results"):  # the versions are in the shapes of the results
            sql = (
                "SELECT DISTINCT price_version FROM shapes WHERE id IN (SELECT shape FROM results) "
                "AND price_version IS NOT NULL"
            )
        return {str(v) for (v,) in self.conn.execute(sql)}

    def usage_sums(
        self, tokens: Sequence[str], money: Sequence[str], since: date | None, until: date | None
    ) -> list[tuple[Any, ...]]:
        """Sums per (model, status, day, job, mode), days in [since, until]: those five, requests,
        ok, failed, *tokens, unpriced answers, *money. Requests are the results, on the day they
        finished, in the mode their answer was bought in. Tokens and money add up every answered
        attempt (re-asks for JSON, answers of earlier runs sent again), on the day it was sent,
        in the mode it was sent in, under its row's status (`pending` while the row has no
        result); a row none of whose answered attempts is on record (an older store) adds its
        own. Job: the row's, else its run's. Mode: online, batch or batch-chat; online where it
        is not recorded (rows from before the column). Missing columns read as NULL; money sums
        are NULL when nothing in the group has a cost, never 0."""
        results = self._view("results")
        if results == "results_view" and "shape" in self._columns("results"):
            parts, keys = _slim_usage_parts(tokens, money), 5
        else:
            parts, keys = self._usage_parts(tokens, money)
        selects, args = [], []
        for columns, source, day in parts:
            bounds = [(f" AND {day} >= ?", since), (f" AND {day} <= ?", until)]
            named = ", ".join(f"{c} AS c{i}" for i, c in enumerate(columns))
            selects.append(f"SELECT {named} {source}" + "".join(sql for sql, v in bounds if v is not None))
            args += [v.isoformat() for _, v in bounds if v is not None]
        columns = parts[0][0]
        counts = range(keys, keys + 4 + len(tokens))
        sums = [*(f"coalesce(sum(c{i}), 0)" for i in counts), *(f"sum(c{i})" for i in range(counts.stop, len(columns)))]
        grouped = ", ".join(f"c{i}" for i in range(keys))
        sql = f"SELECT {grouped}, {', '.join(sums)} FROM ({' UNION ALL '.join(selects)}) GROUP BY {grouped}"
        try:
            return list(self.conn.execute(sql, args).fetchall())
        except sqlite3.DatabaseError as exc:
            msg = f"{self.path}: cannot read the store: {exc}"
            raise StoreError(msg) from None

    def _usage_parts(self, tokens: Sequence[str], money: Sequence[str]) -> tuple[list[tuple[list[str], str, str]], int]:
        """`usage_sums`' selects (columns, FROM ..., the day) over the views, or over the tables
        of a store older than them; and how many of the columns are group keys."""
        results, attempts = self._view("results"), self._view("attempts")
        have = {"r": self._columns(results), "a": self._columns(attempts)}

        def col(alias: str, name: str) -> str:
            return f"{alias}.[{name}]" if name in have[alias] else "NULL"

        def paid(a: str) -> list[str]:
            used = f"coalesce({col(a, 'input_tokens')}, 0) + coalesce({col(a, 'output_tokens')}, 0) > 0"
            return [
                *(col(a, t) for t in tokens),
                f"{col(a, 'cost_pusd')} IS NULL AND {used}",
                *(col(a, c) for c in money),
            ]

        def job_of(alias: str) -> str:  # the row's job, else (older stores) the job of its run
            run = "NULL"
            if "job" in self._columns("runs") and "run_id" in have[alias]:
                run = f"(SELECT runs.job FROM runs WHERE runs.id = {alias}.run_id)"
            return f"coalesce({col('r', 'job')}, {run})"

        def mode_of(alias: str) -> str:  # rows written before the mode column were all online
            return f"coalesce({col(alias, 'mode')}, 'online')"

        model, status, finished = col("r", "model"), col("r", "status"), f"date({col('r', 'finished_at')})"
        row_keys = [model, status, finished, job_of("r"), mode_of("r")]
        counted = ["1", f"{status} = 'ok'", f"{status} = 'failed'", *["0"] * (len(tokens) + 1), *["NULL"] * len(money)]
        parts = [([*row_keys, *counted], f"FROM {results} r WHERE 1", finished)]
        own = f"FROM {results} r WHERE 1"
        if "input_tokens" in have["a"]:
            columns = [f"coalesce(a.model, {model})", f"coalesce({status}, 'pending')", "date(a.started_at)"]
            columns += [job_of("a"), mode_of("a")]
            answered = f"FROM {attempts} a LEFT JOIN {results} r ON r.key = a.key WHERE a.input_tokens IS NOT NULL"
            parts.append(([*columns, "0", "0", "0", *paid("a")], answered, "date(a.started_at)"))
            own += f" AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.key = {self._table_key('r.key')} "
            own += "AND a.input_tokens IS NOT NULL)"
        parts.append(([*row_keys, "0", "0", "0", *paid("r")], own, finished))
        return parts, len(row_keys)

    def distinct_row_count(self) -> int:
        """Input row ids with a stored result (fewer than the results when a row was stored
        under more than one request key)."""
        return int(self.conn.execute("SELECT count(DISTINCT row_id) FROM results").fetchone()[0])

    def ok_row_ids(self) -> set[str]:
        """The input row ids with an answer on record."""
        return {str(r) for (r,) in self.conn.execute("SELECT row_id FROM results WHERE status = 'ok'")}

    def attempt_counts(self, outcome: str | None = None) -> dict[str, int]:
        """Stored attempts per request key (only those with `outcome`, e.g. 'ok', when given)."""
        sql = "SELECT key, count(*) FROM attempts"
        args: list[str] = []
        if outcome is not None:
            sql += " WHERE outcome = ?"
            args = [outcome]
        return {packing.key_text(key): n for key, n in self.conn.execute(sql + " GROUP BY key", args).fetchall()}

    def spent(self, job: str | None = None) -> int:
        """What the job (every job, when None) has spent in all its runs, in pico-USD: the
        recorded cost of every paid attempt, plus the worst case of each attempt that may have
        been billed an unknown amount (and, for rows no attempt of which carries a cost, the
        row's own cost). Specs may share a store: attempts count for the job of their run."""
        if "worst_cost_pusd" not in self._columns("attempts"):
            return 0
        runs = "1"
        rows = "1"
        args: list[str] = []
        if job is not None:
            runs = "run_id IN (SELECT id FROM runs WHERE job = ?)"
            rows = runs.replace("run_id", "r.run_id")
            if "shape" in self._columns("results"):
                rows = "r.shape IN (SELECT id FROM shapes WHERE job = ? OR job IS NULL)"
            elif "job" in self._columns("results"):
                rows = "(r.job = ? OR r.job IS NULL)"
            args = [job, job]
        sql = (
            "SELECT (SELECT coalesce(sum(coalesce(cost_pusd, CASE WHEN possibly_billed THEN worst_cost_pusd END)), 0) "
            f"FROM attempts WHERE {runs}) + (SELECT coalesce(sum(cost_pusd), 0) FROM results r WHERE {rows} AND "
            "NOT EXISTS (SELECT 1 FROM attempts a WHERE a.key = r.key AND a.cost_pusd IS NOT NULL))"
        )
        return int(self._reader.execute(sql, args).fetchone()[0])


def _day(column: str) -> str:
    """The UTC day of a stored timestamp (milliseconds, or text as it came), as the views'
    text gives it, without making that text."""
    return f"CASE WHEN typeof({column}) = 'integer' THEN date({column} / 1000, 'unixepoch') ELSE date({column}) END"


def _slim_usage_parts(tokens: Sequence[str], money: Sequence[str]) -> list[tuple[list[str], str, str]]:
    """`usage_sums`' selects over the slim tables themselves, with what `_usage_parts` reads
    from the views. Not through the views: SQLite copies a view that is a join whole into a
    temporary table when it is the right side of a LEFT JOIN (the attempts' rows: gigabytes and
    minutes at 10M rows), and the views' timestamps are text made row by row. A row whose answer
    is an attempt (`answer` set) has that attempt's usage on record, so only the others are
    looked at for usage of their own."""
    run_job = "(SELECT runs.job FROM runs WHERE runs.id = {}.run_id)"

    def paid(alias: str) -> list[str]:
        used = f"coalesce({alias}.input_tokens, 0) + coalesce({alias}.output_tokens, 0) > 0"
        return [*(f"{alias}.[{t}]" for t in tokens), f"{alias}.cost_pusd IS NULL AND {used}"] + [
            f"{alias}.[{m}]" for m in money
        ]

    finished, started = _day("r.finished_at"), _day("a.started_at")
    row_keys = [
        "s.model",
        "r.status",
        finished,
        f"coalesce(s.job, {run_job.format('r')})",
        "coalesce(s.mode, 'online')",
    ]
    counted = ["1", "r.status = 'ok'", "r.status = 'failed'", *["0"] * (len(tokens) + 1), *["NULL"] * len(money)]
    rows = "FROM results r LEFT JOIN shapes s ON s.id = r.shape WHERE 1"
    attempt_keys = ["coalesce(sa.model, s.model)", "coalesce(r.status, 'pending')", started]
    attempt_keys += [f"coalesce(s.job, {run_job.format('a')})", "coalesce(sa.mode, 'online')"]
    answered = (
        "FROM attempts a LEFT JOIN shapes sa ON sa.id = a.shape LEFT JOIN results r ON r.key = a.key "
        "LEFT JOIN shapes s ON s.id = r.shape WHERE a.input_tokens IS NOT NULL"
    )
    own = f"{rows} AND r.answer IS NULL AND NOT EXISTS (SELECT 1 FROM attempts x WHERE x.key = r.key AND "
    own += "x.input_tokens IS NOT NULL)"
    return [
        ([*row_keys, *counted], rows, finished),
        ([*attempt_keys, "0", "0", "0", *paid("a")], answered, started),
        ([*row_keys, "0", "0", "0", *paid("r")], own, finished),
    ]
