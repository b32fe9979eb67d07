"""A job sharded over Ray: its manifest, shard stores' snapshots, and their merge. A part of
`Store`, in its own file.

The manifest (m011) is one `shard_plans` row per job (how many shards, over which input) and
one `shards` row per shard: its rows (first_row .. end_row-1 of the input), its state
(planned, running, done, merged, failed), where it ran and what it did. A shard's own store is
an ordinary store; `meta` there holds its epoch (which task's lineage its snapshots are) and,
per shard run, the driver run it belongs to.

`merge_shard` copies a shard store's results and attempts into the job's store in one
transaction. What is kept once (shapes, usage templates) is matched by value; an attempt gets
the id -(((shard + 1) << 40) + its id in the shard), so merging the same snapshot again adds
nothing and never collides with the ids the online path gives (max(id) + 1, positive); a
result replaces the store's own only when that one is not ok, or came from this shard.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from . import slim
from .common import now

SHARD_SPAN = 1 << 40  # attempt ids of one shard in the job's store: -(shard+1)*SPAN - id
SHARD_COLUMNS = (
    *("shard", "first_row", "end_row", "state", "tries", "node", "rows_done", "sent", "ok", "failed"),
    *("input_tokens", "output_tokens", "cost_pusd", "snapshot_at", "merged_at", "exit_code", "message"),
)


def backup(source: sqlite3.Connection, dest: Path) -> None:
    """A consistent copy of an open store (sqlite3's backup API), written to `dest`."""
    with sqlite3.connect(dest) as copy:
        source.backup(copy)
    copy.close()


def meta(path: Path, name: str) -> str | None:
    """A `meta` value of a store file (a shard's snapshot), or None."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


class Shards:
    """The manifest and the merge; mixed into `Store`, which opens `conn`."""

    conn: sqlite3.Connection

    def set_meta(self, name: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", [name, value])

    def get_meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()
        return None if row is None else str(row[0])

    def has_shards(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shards'").fetchone() is not None

    def shard_plan(self, job: str) -> dict[str, Any] | None:
        if not self.has_shards():
            return None
        cursor = self.conn.execute("SELECT * FROM shard_plans WHERE job = ?", [job])
        row = cursor.fetchone()
        return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))

    def sharded_jobs(self) -> list[str]:
        """The jobs of this store that have a shard plan, by name (none in an older store)."""
        if not self.has_shards():
            return []
        return [str(row[0]) for row in self.conn.execute("SELECT job FROM shard_plans ORDER BY job")]

    def save_shard_plan(
        self, job: str, *, rows: int, input_signature: str, shared_dir: str, ranges: list[tuple[int, int]]
    ) -> None:
        """A new manifest for the job (replacing any earlier one, whose shards must be merged)."""
        with self.conn:
            self.conn.execute("DELETE FROM shards WHERE job = ?", [job])
            self.conn.execute(
                "INSERT OR REPLACE INTO shard_plans (job, shards, rows, input_signature, shared_dir, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [job, len(ranges), rows, input_signature, shared_dir, now()],
            )
            self.conn.executemany(
                "INSERT INTO shards (job, shard, first_row, end_row) VALUES (?, ?, ?, ?)",
                [(job, n, first, end) for n, (first, end) in enumerate(ranges)],
            )

    def shards(self, job: str) -> list[dict[str, Any]]:
        """The job's shards, in order (none: the job was never sharded)."""
        if not self.has_shards():
            return []
        cursor = self.conn.execute(f"SELECT {', '.join(SHARD_COLUMNS)} FROM shards WHERE job = ? ORDER BY shard", [job])
        return [dict(zip(SHARD_COLUMNS, row, strict=True)) for row in cursor]

    def unsettled_shards(self, job: str) -> set[int]:
        """The shards holding a failed row that a plain rerun sends again (retryable)."""
        sql = (
            "SELECT DISTINCT (SELECT s.shard FROM shards s WHERE s.job = ? AND r.row_index >= s.first_row "
            "AND r.row_index < s.end_row) FROM results r WHERE r.status = 'failed' AND coalesce(r.retryable, 0) "
            "AND r.shape IN (SELECT id FROM shapes WHERE job = ? OR job IS NULL)"
        )
        return {int(row[0]) for row in self.conn.execute(sql, [job, job]) if row[0] is not None}

    def update_shard(self, job: str, shard: int, **fields: Any) -> None:
        unknown = set(fields) - set(SHARD_COLUMNS)
        assert not unknown, unknown
        assigned = ", ".join(f"[{name}] = ?" for name in fields)
        with self.conn:
            self.conn.execute(
                f"UPDATE shards SET {assigned} WHERE job = ? AND shard = ?", [*fields.values(), job, shard]
            )

    def merge_shard(self, job: str, shard: int, snapshot: Path, run_id: int) -> int:
        """Copy a shard store's results and attempts into this store (idempotent); the results
        it holds. Shard runs map to the driver run recorded for them in the shard's `meta`, or
        to `run_id`."""
        conn = self.conn
        conn.execute("ATTACH DATABASE ? AS s", [f"file:{snapshot}?mode=ro"])
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                merged = self._merge(shard, run_id)
                conn.execute("UPDATE shards SET merged_at = ? WHERE job = ? AND shard = ?", [now(), job, shard])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("DETACH DATABASE s")
        return merged

    def _merge(self, shard: int, run_id: int) -> int:
        conn = self.conn
        same = " AND ".join(f"m.[{c}] IS x.[{c}]" for c in slim.SHAPE_COLUMNS)
        cols = ", ".join(f"[{c}]" for c in slim.SHAPE_COLUMNS)
        conn.execute(
            f"INSERT INTO main.shapes ({cols}) SELECT {', '.join(f'x.[{c}]' for c in slim.SHAPE_COLUMNS)} "
            f"FROM s.shapes x WHERE NOT EXISTS (SELECT 1 FROM main.shapes m WHERE {same})"
        )
        for name in ("shape_map", "template_map", "run_map"):
            conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
        conn.execute(
            f"CREATE TEMP TABLE shape_map AS SELECT x.id AS old, "
            f"(SELECT min(m.id) FROM main.shapes m WHERE {same}) AS new FROM s.shapes x"
        )
        conn.execute("INSERT OR IGNORE INTO main.usage_templates (template) SELECT template FROM s.usage_templates")
        conn.execute(
            "CREATE TEMP TABLE template_map AS SELECT x.id AS old, m.id AS new "
            "FROM s.usage_templates x JOIN main.usage_templates m ON m.template = x.template"
        )
        floor = "CAST(substr(name, 11) AS INTEGER)"  # meta `run_floor:N` = D: shard runs after N are driver run D's
        conn.execute(
            f"CREATE TEMP TABLE run_map AS SELECT r.id AS old, coalesce((SELECT CAST(value AS INTEGER) FROM s.meta "
            f"WHERE substr(name, 1, 10) = 'run_floor:' AND {floor} < r.id ORDER BY {floor} DESC LIMIT 1), ?) "
            "AS new FROM s.runs r",
            [run_id],
        )
        base = (shard + 1) * SHARD_SPAN

        def picked(table: str, columns: tuple[str, ...]) -> str:
            moved = {
                "run_id": "(SELECT new FROM temp.run_map WHERE old = x.run_id)",
                "shape": "(SELECT new FROM temp.shape_map WHERE old = x.shape)",
                "usage_template": "(SELECT new FROM temp.template_map WHERE old = x.usage_template)",
                "id": f"-({base} + x.id)",
                "answer": f"CASE WHEN x.answer IS NULL THEN NULL ELSE -({base} + x.answer) END",
            }
            return ", ".join(moved.get(c, f"x.[{c}]") for c in columns)

        names = ", ".join(f"[{c}]" for c in slim.ATTEMPT_COLUMNS)
        conn.execute(
            f"INSERT OR IGNORE INTO main.attempts ({names}) SELECT {picked('attempts', slim.ATTEMPT_COLUMNS)} "
            "FROM s.attempts x"
        )
        names = ", ".join(f"[{c}]" for c in slim.RESULT_COLUMNS)
        updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in slim.RESULT_COLUMNS[1:])
        conn.execute(
            f"INSERT INTO main.results ({names}) SELECT {picked('results', slim.RESULT_COLUMNS)} FROM s.results x "
            f"WHERE true ON CONFLICT ([key]) DO UPDATE SET {updates} "
            f"WHERE results.status IS NOT 'ok' OR results.answer BETWEEN -({base} + {SHARD_SPAN - 1}) AND -{base}",
        )
        return int(conn.execute("SELECT count(*) FROM s.results").fetchone()[0])
