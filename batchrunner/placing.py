"""The results of one slice of the output table: a line per input row and sample, in input
order, with the row's stored result, or `skipped` / `pending`.

There are two ways to find a row's result. Rendering: make the row's requests (as a run does)
and look their keys up in the store; that was most of an export's time. Placing: a result
records the row index and sample it answered, and its run the render context it was made in
(render.Renderer.render_context: the rendering, the spec's parts that go into a request, the input
file). Under the export's own context, row i makes the same requests as it did then, so the
results with row_index i from runs of that context are row i's (`Store.placed`).

What is placed is checked: the stored row id must be the row's, a row and sample may have one
result only, a row must have all its samples placed, and in each slice the first and the last
row placed are rendered and must make the keys placed (a mismatch stops placing for the rest of
the export, with a warning). Every row not placed is rendered: rows without a result yet
(pending, skipped), rows whose request another row made first (identical requests share one
result), rows answered in another context (another input file or template, a batch file).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from .cells import ROW_INDEX
from .render import Request
from .source import Source
from .store import Store

log = logging.getLogger("batchrunner")

# Output column -> the results_view column it is read from. `cost_usd`: everything paid for
# the row (every paid attempt, across runs), not only the answer kept; USD is the only currency.
STORE_COLUMN = {"cost_usd": "total_cost_usd"}
SAMPLE = "__batchrunner_sample__"  # the sample number of each line of `Results.of`
_WANT = "__batchrunner_row_id__"


class Results:
    """Finds the results of input slices for one export. `place=False` renders every row (as
    exports did before rows could be placed)."""

    def __init__(
        self, source: Source, store: Store, columns: Sequence[tuple[str, type[pl.DataType]]], *, place: bool = True
    ) -> None:
        self.source, self.store, self.columns = source, store, list(columns)
        self.names = [name for name, _ in columns]
        self.stored = [STORE_COLUMN.get(name, name) for name in self.names]  # as results_view names them
        self.repeat = source.spec.job.repeat
        self.context = source.render_context() if place and store.placement_ready() else None
        self.placed_lines = 0  # what each way found, for tests and benchmarks
        self.rendered_lines = 0

    def of(self, batch: pl.DataFrame) -> pl.DataFrame:
        """ROW_INDEX, SAMPLE and the result columns for every row (and sample) of `batch`, a
        contiguous slice of the input, in input order."""
        placed = self._placed(batch) if self.context is not None else None
        rest = batch
        if placed is not None and placed.height:
            rest = batch.join(placed.select(ROW_INDEX).unique(), on=ROW_INDEX, how="anti")
        rendered = self._rendered(rest) if rest.height else None
        parts = [p for p in (placed, rendered) if p is not None and p.height]
        self.placed_lines += placed.height if placed is not None else 0
        self.rendered_lines += rendered.height if rendered is not None else 0
        if len(parts) == 1:
            return parts[0]
        return pl.concat(parts).sort(ROW_INDEX, SAMPLE)

    def _row_id(self) -> pl.Expr:
        """Each row's id as `Source.row_id` gives it (or, for an id of another type, a text
        that may differ from it: such rows are then rendered)."""
        id_column = self.source.spec.input.id_column
        if id_column:
            return pl.col(id_column).cast(pl.String, strict=False)
        return (pl.col(ROW_INDEX).cast(pl.Int64) + 1).cast(pl.String)

    def _placed(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """The rows of `batch` whose every sample has its result placed, checked (see above)."""
        assert self.context is not None
        first = int(batch[ROW_INDEX][0])
        stored = [(STORE_COLUMN.get(name, name), dtype) for name, dtype in self.columns]
        found = self.store.placed(self.context, first, first + batch.height, stored)
        found = found.rename({s: n for n, s in STORE_COLUMN.items() if s in found.columns})
        if not found.height:
            return None
        ids = batch.select(pl.col(ROW_INDEX).cast(pl.Int64).alias("row_index"), self._row_id().alias(_WANT))
        found = (
            found.filter(pl.col("sample").is_between(0, self.repeat - 1))
            .join(ids, on="row_index", how="inner")
            .filter(pl.col("row_id") == pl.col(_WANT))
            .filter(pl.len().over("row_index", "sample") == 1)
            .filter(pl.len().over("row_index") == self.repeat)
            .sort("row_index", "sample")
        )
        if found.height and not self._same_requests(batch, first, found):
            log.warning(
                "%s: the store's results do not line up with the rows of %s as it was when they were made; "
                "every row is rendered to find its result instead (slower)",
                self.store.path,
                self.source.spec.input.path,
            )
            self.context = None
            return None
        index = pl.col("row_index").cast(batch.schema[ROW_INDEX]).alias(ROW_INDEX)
        return found.select(index, pl.col("sample").alias(SAMPLE), *self.names)

    def _same_requests(self, batch: pl.DataFrame, first: int, found: pl.DataFrame) -> bool:
        """Whether the first and the last row placed make the very requests placed."""
        assert self.context is not None
        for at in sorted({0, found.height - 1}):
            row, row_id = int(found["row_index"][at]), str(found["row_id"][at])
            stored = self.store.placed_keys(self.context, row, row_id)
            requests = self.source.requests(batch.slice(row - first, 1))
            made = {i.sample: i.key for i in requests if isinstance(i, Request)}
            if len(made) != self.repeat or any(stored.get(sample) != key for sample, key in made.items()):
                return False
        return True

    def _rendered(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Every row of `batch` rendered, its requests' results looked up by key."""
        items = [
            (i.key, i.row_index, i.sample, None) if isinstance(i, Request) else ("", i.row_index, i.sample, i.reason)
            for i in self.source.requests(batch)
        ]
        names = self.names
        status_at, message_at = names.index("status"), names.index("error_message")
        found = self.store.fetch([key for key, _, _, reason in items if reason is None], self.stored)
        blank = (None,) * len(names)
        # Column by column (a transpose in C) rather than a Python loop over every cell.
        values = [list(column) for column in zip(*(found.get(key, blank) for key, _, _, _ in items), strict=True)]
        if not values:
            values = [[] for _ in names]
        status, message = values[status_at], values[message_at]
        for n, (_, _, _, reason) in enumerate(items):
            if reason is not None:
                status[n], message[n] = "skipped", reason
            elif status[n] is None:
                status[n] = "pending"
        return pl.DataFrame(
            [
                pl.Series(ROW_INDEX, [i[1] for i in items], dtype=batch.schema[ROW_INDEX]),
                pl.Series(SAMPLE, [i[2] for i in items], dtype=pl.Int64),
                *(pl.Series(name, v, dtype=dtype) for (name, dtype), v in zip(self.columns, values, strict=True)),
            ]
        )
