"""The batch state machine's tables (`batch_files`, `batch_lines`, see batchstate.py): a part of
`Store`, kept in its own file. Every method that changes them is one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import batchstate as bs
from .common import TOTAL_SQL, now

if TYPE_CHECKING:
    import sqlite_utils

    from ..records import Attempt, Result

DS_PREFIX = "batchrunner"

# One slice of a result file: its results, its attempts, and each line's (custom_id, outcome).
Part = tuple[Sequence["Result"], Sequence["Attempt"], Sequence[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Line:
    """One request line of a batch file, as planned."""

    custom_id: str
    key: str
    row_index: int
    row_id: str
    sample: int
    seed: int | None
    attempt: int
    worst_pusd: int | None = None


def _chunks(items: Sequence[Any], size: int = 900) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Batches:
    """Reads and writes of the batch tables; mixed into `Store`."""

    conn: sqlite3.Connection
    _reader: sqlite3.Connection

    if TYPE_CHECKING:  # provided by Store

        @property
        def db(self) -> sqlite_utils.Database: ...

        def _put(self, results: Sequence[Result], attempts: Sequence[Attempt]) -> None: ...

        def _forget_ids(self) -> None: ...

        def _stored_keys(self, keys: Sequence[str]) -> list[Any]: ...

    def _now(self) -> str:
        return now()

    def store_id(self) -> str:
        """A random id made with the store: it keeps two stores from adopting each other's batches."""
        row = self._reader.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()
        return str(row[0])

    def plan_file(
        self,
        *,
        job: str,
        purpose: str,
        model: str,
        endpoint: str,
        attempt: int,
        spool: str,
        size: int,
        run_id: int,
        lines: Sequence[Line],
    ) -> tuple[int, str]:
        """Record a planned file and its lines; (its id, its ds_name). The spool file must be
        written (and flushed) before: a planned file is one that can be uploaded."""
        stamp = self._now()
        with self.db.atomic():
            cursor = self.conn.execute(
                "INSERT INTO batch_files (job, purpose, attempt, model, endpoint, state, lines, bytes, spool, "
                "run_id, planned_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [job, purpose, attempt, model, endpoint, bs.PLANNED, len(lines), size, spool, run_id, stamp, stamp],
            )
            file_id = int(cursor.lastrowid or 0)
            ds_name = f"{DS_PREFIX}-{self.store_id()[:12]}-{job[:60]}-f{file_id}-a{attempt}"
            self.conn.execute("UPDATE batch_files SET ds_name = ? WHERE id = ?", [ds_name, file_id])
            self.conn.executemany(
                "INSERT INTO batch_lines (file, custom_id, key, row_index, row_id, sample, seed, attempt, worst_pusd) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (file_id, n.custom_id, n.key, n.row_index, n.row_id, n.sample, n.seed, n.attempt, n.worst_pusd)
                    for n in lines
                ],
            )
        return file_id, ds_name

    def update_file(self, file_id: int, **fields: Any) -> None:
        """Change a file's row (its `state` and what the step learned), in one transaction."""
        fields["updated_at"] = self._now()
        names = ", ".join(f"[{k}] = ?" for k in fields)
        with self.db.atomic():
            self.conn.execute(f"UPDATE batch_files SET {names} WHERE id = ?", [*fields.values(), file_id])

    def abandon_file(self, file_id: int, note: str) -> None:
        """A file that will never be sent: its unanswered lines go back to pending, not counted as tried."""
        with self.db.atomic():
            self.conn.execute(
                "UPDATE batch_lines SET outcome = ? WHERE file = ? AND outcome IS NULL", [bs.DROPPED, file_id]
            )
            self.conn.execute(
                "UPDATE batch_files SET state = ?, note = ?, updated_at = ? WHERE id = ?",
                [bs.ABANDONED, note, self._now(), file_id],
            )

    def batch_files(
        self, job: str | None = None, *, states: Sequence[str] = (), purpose: str | None = None
    ) -> list[dict[str, Any]]:
        """Batch files (of `job`, in these states, of this purpose), oldest first."""
        where, args = ["1"], []
        if job is not None:
            where.append("job = ?")
            args.append(job)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        cursor = self._reader.execute(f"SELECT * FROM batch_files WHERE {' AND '.join(where)} ORDER BY id", args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def batch_file(self, file_id: int) -> dict[str, Any]:
        cursor = self._reader.execute("SELECT * FROM batch_files WHERE id = ?", [file_id])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone(), strict=True))

    def live_keys(self, keys: Sequence[str]) -> set[str]:
        """The keys among these that a batch file may still answer (a line with no outcome yet)."""
        found: set[str] = set()
        for chunk in _chunks(keys):
            sql = f"SELECT key FROM batch_lines WHERE outcome IS NULL AND key IN ({','.join('?' * len(chunk))})"
            found.update(k for (k,) in self._reader.execute(sql, list(chunk)))
        return found

    def batch_tries(self, keys: Sequence[str]) -> dict[str, int]:
        """How many batches already came back without a verdict for each key (`resubmit` lines)."""
        found: dict[str, int] = {}
        for chunk in _chunks(keys):
            sql = (
                f"SELECT key, count(*) FROM batch_lines WHERE outcome = ? AND key IN ({','.join('?' * len(chunk))}) "
                "GROUP BY key"
            )
            found.update({k: int(n) for k, n in self._reader.execute(sql, [bs.RESUBMIT, *chunk])})
        return found

    def open_lines(self, file_id: int) -> dict[str, Line]:
        """The lines of a file that have no outcome yet, by custom_id."""
        sql = (
            "SELECT custom_id, key, row_index, row_id, sample, seed, attempt, worst_pusd FROM batch_lines "
            "WHERE file = ? AND outcome IS NULL"
        )
        return {row[0]: Line(*row) for row in self._reader.execute(sql, [file_id])}

    def live_worst_pusd(self, job: str) -> int:
        """The worst case of the job's lines that batches may still answer (for the budget)."""
        sql = (
            "SELECT coalesce(sum(l.worst_pusd), 0) FROM batch_lines l JOIN batch_files f ON f.id = l.file "
            "WHERE l.outcome IS NULL AND f.job = ?"
        )
        return int(self._reader.execute(sql, [job]).fetchone()[0])

    def first_submission_ts(self, job: str) -> float | None:
        """When the job's first batch was submitted (clock seconds), for mode auto's deadline."""
        sql = "SELECT min(submitted_ts) FROM batch_files WHERE job = ? AND purpose = ?"
        row = self._reader.execute(sql, [job, bs.JOB]).fetchone()
        return None if row[0] is None else float(row[0])

    def line_outcomes(self, job: str) -> dict[str, int]:
        """The job's batch lines by outcome ("live" for those still out)."""
        sql = (
            "SELECT coalesce(l.outcome, 'live'), count(*) FROM batch_lines l JOIN batch_files f ON f.id = l.file "
            "WHERE f.job = ? GROUP BY 1"
        )
        return {str(k): int(n) for k, n in self._reader.execute(sql, [job])}

    def meta(self, name: str) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self.db.atomic():
            self.conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", [name, value])

    def plan_marker(self, job: str) -> str:
        """What a full planning pass of the job depends on besides the input and the spec: the
        lines that came back to send again, and the failed rows re-queued. Equal markers mean a
        new pass would find nothing new to plan."""
        back = self._reader.execute(
            "SELECT count(*) FROM batch_lines l JOIN batch_files f ON f.id = l.file "
            "WHERE f.job = ? AND l.outcome IN (?, ?, ?)",
            [job, bs.RESUBMIT, bs.DROPPED, bs.RETRIED],
        ).fetchone()[0]
        requeued = self._reader.execute(
            "SELECT count(*) FROM results WHERE status = 'failed' AND retryable = 1 AND "
            "shape IN (SELECT id FROM shapes WHERE job = ? OR job IS NULL)",
            [job],
        ).fetchone()[0]
        return f"{back}:{requeued}"

    def line_outcomes_of(self, file_id: int) -> dict[str, int]:
        """One file's lines by outcome ("live" for those still out)."""
        sql = "SELECT coalesce(outcome, 'live'), count(*) FROM batch_lines WHERE file = ? GROUP BY 1"
        return {str(k): int(n) for k, n in self._reader.execute(sql, [file_id])}

    def ingest(self, file_id: int, parts: Iterable[Part], **file_fields: Any) -> int:
        """Record what one result file said, in one transaction: for each part (a slice of the
        file), its attempts, its results (a stored ok answer is never replaced) and each line's
        outcome (custom_id, outcome); then the file's fields. Returns the results written.
        A file ingested again (a crash before the commit) finds the same lines still open."""
        conn = self.conn
        written = 0
        try:
            with self.db.atomic():
                for results, attempts, outcomes in parts:
                    keys = self._stored_keys([r.key for r in results])
                    kept: set[Any] = set()
                    for chunk in _chunks(keys):
                        sql = f"SELECT key FROM results WHERE status = 'ok' AND key IN ({','.join('?' * len(chunk))})"
                        kept.update(k for (k,) in conn.execute(sql, list(chunk)))
                    fresh = [r for r, k in zip(results, keys, strict=True) if k not in kept]
                    self._put(fresh, attempts)
                    conn.executemany(TOTAL_SQL, [[k] for k in kept])
                    conn.executemany(
                        "UPDATE batch_lines SET outcome = ? WHERE file = ? AND custom_id = ?",
                        [(outcome, file_id, cid) for cid, outcome in outcomes],
                    )
                    written += len(fresh)
                if file_fields:
                    file_fields["updated_at"] = self._now()
                    names = ", ".join(f"[{k}] = ?" for k in file_fields)
                    conn.execute(f"UPDATE batch_files SET {names} WHERE id = ?", [*file_fields.values(), file_id])
        except BaseException:
            self._forget_ids()
            raise
        return written
