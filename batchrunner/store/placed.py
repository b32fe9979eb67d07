"""Results by the input row they answer, for the export: a part of `Store`, in its own file.

A result records the row index and sample of the request that made it, and its run records
the render context it was made in (render.Renderer.render_context: the rendering, the parts
that go into a request, the input file). Under the same context, row i makes the same
requests, so its results are those with row_index i from runs of that context: the export
reads them a slice of rows at a time (an index on row_index), without rendering the rows. The
export still checks what it reads (placing.py) and renders every row it cannot place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import slim

if TYPE_CHECKING:
    import polars as pl

# The results a run of render context ? made, but not through a batch file (their lines were
# planned by another run), over slim.RESULTS_FROM.
_MINE = "r.run_id IN (SELECT id FROM runs WHERE render_context = ?) AND coalesce(s.mode, 'online') <> 'batch'"
_PACKED = "__packed_request_id__"


class Placed:
    """Results by row index; mixed into `Store`, which opens `conn`."""

    conn: sqlite3.Connection

    if TYPE_CHECKING:  # provided by History

        def _columns(self, table: str) -> list[str]: ...

    def placement_ready(self) -> bool:
        """Whether this store records render contexts and indexes results by row (a store
        older than m009, opened read-only, does not: every row is rendered)."""
        if "render_context" not in self._columns("runs"):
            return False
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'idx_results_row_index'"
        return self.conn.execute(sql).fetchone() is not None

    def placed(self, context: str, first: int, end: int, columns: Sequence[tuple[str, Any]]) -> pl.DataFrame:
        """The results of rows first..end-1 that runs of render context `context` made (not
        through a batch file), in no particular order: row_index, sample, row_id, then the
        (name, dtype) `columns` of `results_view`, with its values. The tables are read
        directly: what the view computes row by row (a request id's text) is done here, a
        column at a time."""
        import polars as pl  # here: a store opened for status or runs need not load polars

        exprs = slim.result_exprs()
        stored = "coalesce(r.request_id, a.request_id)"
        picked: dict[str, tuple[str, Any]] = {
            "row_index": ("r.row_index", pl.Int64),
            "sample": ("r.sample", pl.Int64),
            "row_id": ("r.row_id", pl.String),
        }
        for name, dtype in columns:
            if name == "request_id":
                picked[name] = (f"CASE WHEN typeof({stored}) <> 'blob' THEN {stored} END", dtype)
                picked[_PACKED] = (f"CASE WHEN typeof({stored}) = 'blob' THEN {stored} END", pl.Binary)
            else:
                picked[name] = (exprs[name], dtype)
        sql = (
            f"SELECT {', '.join(sql for sql, _ in picked.values())} {slim.RESULTS_FROM} "
            f"WHERE r.row_index >= ? AND r.row_index < ? AND {_MINE}"
        )
        rows = self.conn.execute(sql, [first, end, context]).fetchall()
        values = zip(*rows, strict=True) if rows else ([] for _ in picked)
        frame = pl.DataFrame(
            [pl.Series(name, v, dtype=dtype) for (name, (_, dtype)), v in zip(picked.items(), values, strict=True)]
        )
        if _PACKED in picked:
            frame = frame.with_columns(_request_id(_PACKED, "request_id")).drop(_PACKED)
        return frame

    def placed_keys(self, context: str, row_index: int, row_id: str) -> dict[int, str]:
        """The request keys, by sample, of the results of row `row_index` (with id `row_id`)
        that `placed` reads."""
        sql = (
            "SELECT r.sample, r.key FROM results r LEFT JOIN shapes s ON s.id = r.shape "
            f"WHERE r.row_index = ? AND r.row_id = ? AND {_MINE}"
        )
        rows = self.conn.execute(sql, [row_index, row_id, context]).fetchall()
        return {int(sample): key.hex() if isinstance(key, bytes) else str(key) for sample, key in rows}


def _request_id(packed: str, text: str) -> pl.Expr:
    """packing.request_id_sql for a column of polars: the UUID form of the 16 bytes in `packed`,
    else the text in `text` (named `text`)."""
    import polars as pl

    h = pl.col(packed).bin.encode("hex")
    parts = [h.str.slice(0, 8), h.str.slice(8, 4), h.str.slice(12, 4), h.str.slice(16, 4), h.str.slice(20, 12)]
    return pl.coalesce(pl.concat_str(parts, separator="-"), pl.col(text)).alias(text)
