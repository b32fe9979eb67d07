"""The checkpoint store: one plain SQLite file per job, and the only module that knows its schema.

Tables (open them with sqlite3, sqlite-utils or datasette):

    results   one row per distinct request (keyed by its hash): status ok | failed, the
              answer, full usage (normalised columns plus the raw JSON), request_id,
              attempts, latency, timestamps, model and parameters
    attempts  every HTTP attempt, including retries that may have been billed
    runs      one row per `batchrunner run`: start, end, counts, exit code, spec digest
    _batchrunner_migrations   the schema steps applied to this file

The file is created readable by its owner only and runs in WAL mode, so readers (status,
export, datasette) never block the run that writes it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import StoreError

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
migration = MIGRATIONS.append

RESULT_USAGE_COLUMNS = (
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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("results").create(
        {
            "key": str,
            "row_id": str,
            "row_index": int,
            "status": str,
            "retryable": int,
            "content": str,
            "reasoning_content": str,
            "finish_reason": str,
            "tool_calls": str,
            "error_code": str,
            "error_message": str,
            "http_status": int,
            **{c: int for c in RESULT_USAGE_COLUMNS},
            "usage": str,
            "request_id": str,
            "attempts": int,
            "possibly_billed_attempts": int,
            "latency_ms": int,
            "started_at": str,
            "finished_at": str,
            "model": str,
            "endpoint": str,
            "parameters": str,
            "run_id": int,
        },
        pk="key",
    )
    db.table("results").create_index(["status"])
    db.table("attempts").create(
        {
            "id": int,
            "key": str,
            "run_id": int,
            "attempt": int,
            "started_at": str,
            "latency_ms": int,
            "http_status": int,
            "outcome": str,
            "error_code": str,
            "error_message": str,
            "possibly_billed": int,
            "request_id": str,
            "usage": str,
        },
        pk="id",
    )
    db.table("attempts").create_index(["key"])
    db.table("runs").create(
        {
            "id": int,
            "job": str,
            "spec_digest": str,
            "simulated": int,
            "base_url": str,
            "pid": int,
            "host": str,
            "started_at": str,
            "ended_at": str,
            "status": str,
            "exit_code": int,
            "rows_total": int,
            "already_done": int,
            "sent": int,
            "ok": int,
            "failed": int,
            "skipped": int,
            "attempts": int,
            "retries": int,
            "input_tokens": int,
            "output_tokens": int,
        },
        pk="id",
    )


@migration
def m002_samples_choices_logprobs(db: sqlite_utils.Database) -> None:
    results = db.table("results")
    for column, kind in (("sample", int), ("seed", int), ("choices", str), ("logprobs", str), ("parsed", str)):
        results.add_column(column, kind)


COST_COLUMNS = (
    "cost_pusd",
    "input_cost_pusd",
    "cached_cost_pusd",
    "cache_creation_cost_pusd",
    "output_cost_pusd",
    "saved_pusd",
)


@migration
def m003_costs(db: sqlite_utils.Database) -> None:
    """Cost per row in exact integer pico-USD (1e-12 USD), plus cost_usd for people."""
    results = db.table("results")
    for column in COST_COLUMNS:
        results.add_column(column, int)
    results.add_column("cost_usd", float)
    results.add_column("price_version", str)
    db.table("runs").add_column("cost_usd", float)


@migration
def m004_resume_points(db: sqlite_utils.Database) -> None:
    """Where the next run of the same spec over the same input may start reading."""
    runs = db.table("runs")
    runs.add_column("input_signature", str)
    runs.add_column("resume_offset", int)


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class Store:
    """A job's SQLite checkpoint. One writer connection; reads may use a second one."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            msg = f"{self.path}: no store here yet; run the job first (or pass --db PATH)"
            raise StoreError(msg)
        if not readonly:
            self._create_private()
        try:
            self.db = sqlite_utils.Database(_connect(self.path, readonly=readonly))
            if not readonly:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            elif "results" not in self.db.table_names():
                msg = f"{self.path}: not a batchrunner store (no results table)"
                raise StoreError(msg)
        except sqlite3.DatabaseError as exc:
            msg = f"{self.path}: cannot open the store: {exc}"
            raise StoreError(msg) from None
        self._sql: dict[str, tuple[str, list[str]]] = {}
        # A second connection for lookups made while the writer thread commits.
        self._reader = _connect(self.path, readonly=False) if not readonly else self.db.conn

    def _create_private(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)

    def _migrate(self) -> None:
        table = self.db.table("_batchrunner_migrations")
        if not table.exists():
            table.create({"name": str, "applied_at": str}, pk="name")
        done = {row["name"] for row in table.rows}
        for step in MIGRATIONS:
            if step.__name__ not in done:
                with self.db.atomic():
                    step(self.db)
                    table.insert({"name": step.__name__, "applied_at": now()})

    def close(self) -> None:
        if self._reader is not self.db.conn:
            self._reader.close()
        self.db.close()

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        *,
        job: str,
        spec_digest: str,
        simulated: bool,
        base_url: str,
        rows_total: int = 0,
        input_signature: str | None = None,
    ) -> int:
        with self.db.atomic():
            row = self.db.table("runs").insert(
                {
                    "job": job,
                    "spec_digest": spec_digest,
                    "simulated": int(simulated),
                    "base_url": base_url,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started_at": now(),
                    "status": "running",
                    "rows_total": rows_total,
                    "input_signature": input_signature,
                }
            )
        assert row.last_pk is not None
        return int(row.last_pk)

    def finish_run(self, run_id: int, **fields: Any) -> None:
        with self.db.atomic():
            self.db.table("runs").update(run_id, {"ended_at": now(), **fields})

    def resume_point(self, spec_digest: str, input_signature: str) -> int:
        """The input row a run may start reading at: where the last run of the same spec over
        the same input file found its first row to send (0 when there is none)."""
        row = self._reader.execute(
            "SELECT resume_offset FROM runs WHERE spec_digest = ? AND input_signature = ? "
            "AND resume_offset IS NOT NULL ORDER BY id DESC LIMIT 1",
            [spec_digest, input_signature],
        ).fetchone()
        return int(row[0]) if row else 0

    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.table("runs").rows_where(order_by="id"))

    # ------------------------------------------------------------------ results

    def lookup(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        """For the keys already stored: (status, retryable)."""
        found: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(keys, 900):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, status, retryable FROM results WHERE key IN ({marks})"
            for key, status, retryable in self._reader.execute(sql, chunk):
                found[key] = (status, retryable or 0)
        return found

    def fetch(self, keys: list[str], columns: Iterable[str]) -> dict[str, tuple[Any, ...]]:
        """The named result columns for the keys that are stored."""
        cols = ", ".join(f"[{c}]" for c in columns)
        found: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(keys, 900):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, {cols} FROM results WHERE key IN ({marks})"
            for row in self._reader.execute(sql, chunk):
                found[row[0]] = tuple(row[1:])
        return found

    def _insert_sql(self, table: str, *, replace: bool) -> tuple[str, list[str]]:
        cached = self._sql.get(table)
        if cached is None:
            columns = [c for c in self.db.table(table).columns_dict if c != "id"]
            names = ", ".join(f"[{c}]" for c in columns)
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            sql = f"{verb} INTO [{table}] ({names}) VALUES ({', '.join('?' * len(columns))})"
            cached = self._sql[table] = (sql, columns)
        return cached

    def write(
        self,
        results: list[dict[str, Any]],
        attempts: list[dict[str, Any]],
        *,
        resume: tuple[int, int] | None = None,
    ) -> None:
        """Commit a group of finished rows and attempts in one transaction.

        A prepared statement per table (executemany) rather than sqlite-utils' upsert_all:
        the columns are fixed by the schema, and this is the hot path of a large run.
        """
        conn = self.db.conn
        with self.db.atomic():
            if attempts:
                sql, columns = self._insert_sql("attempts", replace=False)
                conn.executemany(sql, [[a.get(c) for c in columns] for a in attempts])
            if results:
                sql, columns = self._insert_sql("results", replace=True)
                conn.executemany(sql, [[r.get(c) for c in columns] for r in results])
            if resume is not None:
                run_id, offset = resume
                conn.execute("UPDATE runs SET resume_offset = ? WHERE id = ?", [offset, run_id])

    def requeue(self, codes: list[str] | None) -> int:
        """Mark failed rows (with these error codes, or all) to be sent again by the next run."""
        sql = "UPDATE results SET retryable = 1 WHERE status = 'failed'"
        args: list[str] = []
        if codes:
            sql += f" AND error_code IN ({','.join('?' * len(codes))})"
            args = codes
        with self.db.atomic():
            changed = self.db.execute(sql, args).rowcount
            self.db.execute("UPDATE runs SET resume_offset = NULL")
        return int(changed)

    def settled_count(self) -> int:
        """Requests that no run will send again (ok, or failed for good)."""
        sql = "SELECT count(*) FROM results WHERE status = 'ok' OR (status = 'failed' AND NOT retryable)"
        return int(self.db.execute(sql).fetchone()[0])

    def counts(self) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM results GROUP BY status"
        return {status: n for status, n in self.db.execute(sql).fetchall()}

    def error_counts(self) -> list[tuple[str, int]]:
        sql = (
            "SELECT error_code, count(*) AS n FROM results WHERE status = 'failed' GROUP BY error_code ORDER BY n DESC"
        )
        return [(code, n) for code, n in self.db.execute(sql).fetchall()]

    # --- reads for benchmarks

    def distinct_row_count(self) -> int:
        """How many distinct input row ids have a stored result. Equal to the number of
        results unless some row was stored under more than one request key."""
        return int(self.db.execute("SELECT count(DISTINCT row_id) FROM results").fetchone()[0])

    def attempt_counts(self, outcome: str | None = None) -> dict[str, int]:
        """The number of stored attempts per request key (only those with `outcome`, such as
        'ok', when given)."""
        sql = "SELECT key, count(*) FROM attempts"
        args: list[str] = []
        if outcome is not None:
            sql += " WHERE outcome = ?"
            args = [outcome]
        return {key: n for key, n in self.db.execute(sql + " GROUP BY key", args).fetchall()}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def dumps(value: Any) -> str | None:
    """JSON for a TEXT column (None stays NULL)."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
