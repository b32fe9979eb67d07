"""The checkpoint store: one plain SQLite file per job; this package is the only code that writes SQL.

Open it with sqlite3, sqlite-utils or datasette and read the views (the schema is in
migrations.py, the slim encoding in slim.py):

    results_view  one row per distinct request (keyed by its hash): status ok | failed, the
                  answer, full usage (typed columns plus the raw JSON), request_id, attempts,
                  latency, timestamps, job, mode, model, parameters and cost
    attempts_view every HTTP attempt, including retries that may have been billed

over the tables `results` and `attempts` (what repeats kept once, in `shapes` and
`usage_templates`), `runs` (one row per `batchrunner run`: start, end, counts, exit code, spec
digest) and `_batchrunner_migrations` (the schema steps applied to this file).

The file is created readable by its owner only and runs in WAL mode, so readers (status,
export, report, datasette) never block the run that writes it. Writes come from one thread
(the checkpoint writer); lookups made meanwhile use a second connection.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from . import files as storefile
from . import packing, slim
from .batches import Batches
from .common import TOTAL_SQL, now

__all__ = ["SETTLED_SQL", "TOTAL_SQL", "Store", "checked_before", "now"]
from .history import History
from .migrations import migrate
from .placed import Placed
from .shards import Shards

if TYPE_CHECKING:
    import sqlite_utils

    from ..records import Attempt, Result


# records.settled, in SQL: ok, or failed and not to be retried.
SETTLED_SQL = "(status = 'ok' OR (status = 'failed' AND NOT coalesce(retryable, 0)))"


BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another connection's write lock


def _connect(path: Path, *, readonly: bool, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


def checked_before(path: Path, spec_digest: str, input_signature: str) -> bool:
    """Whether the store at `path` has a run of the same spec over the same input file (by its
    signature). A bare read, without the checks of opening a Store: False when it cannot tell."""
    try:
        conn = _connect(path, readonly=True)
        try:
            sql = "SELECT 1 FROM runs WHERE spec_digest = ? AND input_signature = ? LIMIT 1"
            return conn.execute(sql, [spec_digest, input_signature]).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


class Store(History, Batches, Placed, Shards):
    """A job's SQLite checkpoint. One writer connection; reads may use a second one.

    Opening checks the file before anything is read or written (StoreError, exit 2): it must be
    a batchrunner store (a foreign SQLite file gets no tables added), not damaged (`PRAGMA
    quick_check`; of a big store, only the small tables whole, see files.damage), and, to write,
    writable with its folder. A missing store is created whole (in a temporary file renamed into
    place), so an empty file is never one of ours: a 0-byte file (or a database without tables)
    is refused unless `new_store` allows starting afresh there.
    """

    def __init__(
        self, path: Path, *, readonly: bool = False, busy_timeout_ms: int | None = None, new_store: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            msg = f"{self.path}: no store here yet; run the job first (or pass --db PATH)"
            raise StoreError(msg)
        if not readonly:
            storefile.prepare(self.path, new_store=new_store)
        self._db: sqlite_utils.Database | None = None
        try:
            timeout = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
            self.conn = _connect(self.path, readonly=readonly, busy_timeout_ms=timeout)
        except sqlite3.DatabaseError as exc:
            raise storefile.unusable(self.path, exc) from None
        try:
            self._check_contents(new_store)
            if not readonly:
                import sqlite_utils  # writing only: reads need no more than sqlite3

                self._db = sqlite_utils.Database(self.conn)
                self._db.enable_wal()
                self.conn.execute("PRAGMA synchronous = NORMAL")
                migrate(self._db)
        except BaseException as exc:
            self.conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise storefile.unusable(self.path, exc) from None
            raise
        self._encoder = slim.Encoder(self.conn)
        # A second connection for lookups made while the writer thread commits.
        self._reader = _connect(self.path, readonly=False) if not readonly else self.conn

    def _check_contents(self, new_store: bool) -> None:
        """A batchrunner store, and not damaged: before anything is read from it or added to it."""
        tables = {name for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not self.readonly and new_store:
            pass  # a database without tables, which the user lets us start a store in
        elif not tables:
            empty = self.path.stat().st_size == 0
            raise StoreError(storefile.empty_message(self.path, "is empty (0 bytes)" if empty else "has no tables"))
        elif self.readonly and "results" not in tables:
            msg = f"{self.path}: not a batchrunner store (no results table)"
            raise StoreError(msg)
        elif not self.readonly and "_batchrunner_migrations" not in tables:
            shown = ", ".join(sorted(tables)[:8]) + (" ..." if len(tables) > 8 else "")
            msg = (
                f"{self.path}: not a batchrunner store (it holds other tables: {shown}); batchrunner does not add "
                "its tables to another database. Point [job] db / --db at a new file or at this job's store"
            )
            raise StoreError(msg)
        found = storefile.damage(self.conn, self.path)
        if found:
            raise StoreError(storefile.damaged(self.path, "; ".join(found)))

    @property
    def db(self) -> sqlite_utils.Database:
        """The sqlite-utils view of a writable store."""
        if self._db is None:
            msg = f"{self.path}: opened read-only"
            raise StoreError(msg)
        return self._db

    def close(self) -> None:
        if self._reader is not self.conn:
            self._reader.close()
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        mode: str = "online",
        render_context: str | None = None,
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
                    "mode": mode,
                    "render_context": render_context,
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

    def mark_killed(self) -> int:
        """Mark the runs still `running` as `killed`: call it holding the job's lock, when no
        other run can be going. Returns how many there were."""
        with self.db.atomic():
            sql = "UPDATE runs SET status = 'killed', ended_at = coalesce(ended_at, ?) WHERE status = 'running'"
            return int(self.db.execute(sql, [now()]).rowcount)

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        """Every run (of `job`, when given), oldest first, with what its attempts cost (summed
        from `attempts`, so a run killed before it recorded its end is costed too): `paid_pusd`
        (NULL when none had a price), `unpriced_attempts` and `possibly_billed_attempts`."""
        sql = "SELECT * FROM runs"
        if "cost_pusd" in self._columns("attempts"):
            sql = (
                "SELECT runs.*, p.paid_pusd, coalesce(p.unpriced, 0) AS unpriced_attempts, "
                "coalesce(p.unknown, 0) AS possibly_billed_attempts FROM runs LEFT JOIN (SELECT run_id, "
                f"sum(cost_pusd) AS paid_pusd, sum(cost_pusd IS NULL AND {self._answered()}) AS unpriced, "
                "sum(possibly_billed) AS unknown FROM attempts GROUP BY run_id) p ON p.run_id = runs.id"
            )
        where, args = (" WHERE runs.job = ?", [job]) if job is not None else ("", [])
        cursor = self.conn.execute(sql + where + " ORDER BY runs.id", args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def last_run(self, job: str | None = None) -> dict[str, Any] | None:
        """The latest run (of `job`, when given) as `runs` gives it, but without its cost (the
        sums over `attempts` read every attempt: seconds at 10M rows)."""
        where, args = (" WHERE job = ?", [job]) if job is not None else ("", [])
        cursor = self.conn.execute(f"SELECT * FROM runs{where} ORDER BY id DESC LIMIT 1", args)
        row = cursor.fetchone()
        return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))

    def job_name(self) -> str:
        """The job name of the latest run, or the file's stem when it has none."""
        if "job" in self._columns("runs"):
            row = self.conn.execute("SELECT job FROM runs WHERE job IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
            if row:
                return str(row[0])
        return self.path.stem

    # ------------------------------------------------------------------ writing results

    def _put(self, results: Sequence[Result], attempts: Sequence[Attempt]) -> None:
        """Insert attempts and insert (or replace) results, inside the caller's transaction,
        as the slim tables keep them (slim.Encoder); then each written result's total cost."""
        conn, encoder = self.conn, self._encoder
        rows, answers = encoder.attempts(attempts) if attempts else ([], {})
        if rows:
            sql = f"INSERT INTO attempts ({', '.join(slim.ATTEMPT_COLUMNS)}) VALUES ({_marks(slim.ATTEMPT_COLUMNS)})"
            conn.executemany(sql, rows)
        if results:
            rows = [slim.totalled(encoder.result(r, answers.get(r.key, ()))) for r in results]
            conn.executemany(slim.RESULT_SQL, rows)

    def write(
        self,
        results: Sequence[Result],
        attempts: Sequence[Attempt],
        *,
        resume: tuple[int, int] | None = None,
    ) -> None:
        """Commit a group of finished requests and attempts (and the run's resume point) in one
        transaction. Prepared statements (executemany) rather than sqlite-utils' upsert_all:
        the columns are fixed by the schema, and this is the hot path of a run."""
        try:
            with self.db.atomic():
                self._put(results, attempts)
                if resume is not None:
                    run_id, offset = resume
                    self.conn.execute("UPDATE runs SET resume_offset = ? WHERE id = ?", [offset, run_id])
        except BaseException:
            self._forget_ids()
            raise

    def _forget_ids(self) -> None:
        """After a rollback: the shapes and templates the encoder added may be gone."""
        self._encoder.forget()

    def requeue(self, codes: list[str] | None, job: str | None = None) -> int:
        """Mark failed rows (of `job`; with these error codes, or all) to be sent again by the next run."""
        mine, args = self._of_job(job)
        sql = f"UPDATE results SET retryable = 1 WHERE status = 'failed' AND {mine}"
        if codes:
            sql += f" AND error_code IN ({','.join('?' * len(codes))})"
            args = [*args, *codes]
        with self.db.atomic():
            changed = self.db.execute(sql, args).rowcount
            self.db.execute("UPDATE runs SET resume_offset = NULL")
            # Lines that batches returned without a verdict start their count of tries again.
            self.db.execute(
                "UPDATE batch_lines SET outcome = 'retried' WHERE outcome = 'resubmit' AND key IN "
                f"(SELECT {packing.key_sql('key')} FROM results WHERE status = 'failed' AND retryable = 1)"
            )
        return int(changed)

    # ------------------------------------------------------------------ reading results

    def lookup(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        """For the keys already stored: (status, retryable)."""
        found: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(self._stored_keys(keys), 900):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, status, retryable FROM results WHERE key IN ({marks})"
            for key, status, retryable in self._reader.execute(sql, chunk):
                found[packing.key_text(key)] = (status, retryable or 0)
        return found

    def fetch(self, keys: list[str], columns: Iterable[str]) -> dict[str, tuple[Any, ...]]:
        """The named result columns (of `results_view`) for the keys that are stored."""
        if self._keys_packed():  # the view's key is text: ask the tables, by their own key
            exprs = slim.result_exprs()
            picked = ", ".join(exprs[c] for c in ("key", *columns))
            select, key = f"SELECT {picked} {slim.RESULTS_FROM}", "r.key"
        else:
            select, key = f"SELECT key, {', '.join(f'[{c}]' for c in columns)} FROM {self._view('results')}", "key"
        found: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(self._stored_keys(keys), 900):
            for row in self._reader.execute(f"{select} WHERE {key} IN ({','.join('?' * len(chunk))})", chunk):
                found[row[0]] = tuple(row[1:])
        return found

    def _of_job(self, job: str | None) -> tuple[str, list[str]]:
        """A WHERE condition for the results `job` made (rows of unknown job count for every job)."""
        if job is None:
            return "1", []
        if "shape" in self._columns("results"):
            return "shape IN (SELECT id FROM shapes WHERE job = ? OR job IS NULL)", [job]
        if "job" in self._columns("results"):  # a store older than the shapes (read-only)
            return "(job = ? OR job IS NULL)", [job]
        if "job" in self._columns("runs"):  # a store older than the results' job column (read-only)
            return "run_id IN (SELECT id FROM runs WHERE job = ?)", [job]
        return "1", []

    def any_settled(self, job: str | None = None) -> bool:
        """Whether any request (of `job`) is settled: a run that finds none has nothing to resume."""
        mine, args = self._of_job(job)
        sql = f"SELECT EXISTS (SELECT 1 FROM results WHERE {SETTLED_SQL} AND {mine})"
        return bool(self.conn.execute(sql, args).fetchone()[0])

    def counts(self, job: str | None = None) -> dict[str, int]:
        """Stored requests (of `job`) by status."""
        mine, args = self._of_job(job)
        sql = f"SELECT status, count(*) FROM results WHERE {mine} GROUP BY status"
        return {status: n for status, n in self.conn.execute(sql, args).fetchall()}

    def error_counts(self, job: str | None = None) -> list[tuple[str, int]]:
        """Failed requests (of `job`) by error code, the most frequent first."""
        mine, args = self._of_job(job)
        sql = (
            f"SELECT error_code, count(*) AS n FROM results WHERE status = 'failed' AND {mine} "
            "GROUP BY error_code ORDER BY n DESC"
        )
        return [(code, n) for code, n in self.conn.execute(sql, args).fetchall()]

    def queued_count(self, job: str | None = None) -> int:
        """Failed requests (of `job`) that the next run sends again (retryable, or re-queued)."""
        mine, args = self._of_job(job)
        sql = f"SELECT count(*) FROM results WHERE status = 'failed' AND NOT {SETTLED_SQL} AND {mine}"
        return int(self.conn.execute(sql, args).fetchone()[0])

    def run_tally(self, run_id: int) -> dict[str, int]:
        """The requests the run `run_id` finished so far, by status."""
        sql = "SELECT status, count(*) FROM results WHERE run_id = ? GROUP BY status"
        return {status: n for status, n in self.conn.execute(sql, [run_id]).fetchall()}

    def finished_in_run(self, run_id: int) -> int:
        """Requests the run `run_id` finished (ok or failed)."""
        return int(self.conn.execute("SELECT count(*) FROM results WHERE run_id = ?", [run_id]).fetchone()[0])


def _marks(columns: Sequence[str]) -> str:
    return ", ".join("?" * len(columns))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
