"""The input table: opened lazily with polars, checked as a whole, then turned into requests.

`Source.check()` runs before any request is sent and raises InputError for every problem a
user can fix in the file or the spec (missing file or column, empty table, null or duplicate
ids, empty prompt cells, broken messages JSON, bad encoding). `Source.batches()` then reads
the table a slice at a time, so a million-row file never sits in memory as a million
requests. CSV cells are read as text (no type guessing that could fail halfway through).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from . import prompts, protocol
from .errors import InputError
from .spec import JobSpec

ROW_INDEX = "__batchrunner_row__"


@dataclass(frozen=True, slots=True)
class Request:
    """One unit of work: a rendered request and the input row it came from."""

    key: str
    row_index: int
    row_id: str
    path: str
    body: dict[str, Any]
    est_input_tokens: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """An input row that is not sent (empty prompt cell with `on_empty = "skip"`)."""

    row_index: int
    row_id: str
    reason: str


def _scan(spec: JobSpec) -> pl.LazyFrame:
    src = spec.input
    fmt = src.table_format
    if fmt == "csv":
        return pl.scan_csv(src.path, separator=src.separator, infer_schema=False, encoding=src.encoding)
    if fmt == "parquet":
        return pl.scan_parquet(src.path)
    return pl.scan_ndjson(src.path, infer_schema_length=None)


def _explain(spec: JobSpec, exc: Exception) -> InputError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = spec.input.path
    if "utf-8" in text.lower() or "utf8" in text.lower():
        msg = (
            f"{where}: the file is not valid UTF-8 ({text}). Convert it, e.g. "
            f'`iconv -f cp1252 -t utf-8 in.csv > out.csv`, or set [input] encoding = "utf8-lossy" '
            f"to replace the bad bytes."
        )
        return InputError(msg)
    return InputError(f"{where}: cannot read the {spec.input.table_format} table: {text}")


class Source:
    """The input table of one job."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.template = prompts.parse_template(spec.prompt.template) if spec.prompt.template is not None else None
        self.columns: list[str] = []
        self.n_rows = 0
        self.path = spec.model.path
        self.parameters = spec.parameters.wire()
        self._lazy: pl.LazyFrame | None = None

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Open the table and check it against the spec. Raises InputError."""
        spec = self.spec
        where = spec.input.path
        if not where.is_file():
            msg = f"{where}: input file not found (set [input] path, relative to the spec file)"
            raise InputError(msg)
        try:
            lazy = _scan(spec)
            self.columns = list(lazy.collect_schema().names())
            self.n_rows = int(lazy.select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            raise _explain(spec, exc) from None
        if self.n_rows == 0:
            msg = f"{where}: the table has no rows; there is nothing to run"
            raise InputError(msg)
        self._check_columns()
        self._lazy = lazy.with_row_index(ROW_INDEX)
        try:
            self._check_ids()
            self._check_cells()
        except pl.exceptions.PolarsError as exc:
            raise _explain(spec, exc) from None

    def _missing(self, wanted: str, key: str) -> InputError:
        shown = ", ".join(self.columns[:20]) + (" ..." if len(self.columns) > 20 else "")
        msg = f"{self.spec.input.path}: {key} names column {wanted!r}, which the table lacks (columns: {shown})"
        return InputError(msg)

    def _check_columns(self) -> None:
        spec = self.spec
        if spec.input.id_column and spec.input.id_column not in self.columns:
            raise self._missing(spec.input.id_column, "[input] id_column")
        if self.template is not None:
            for column in self.template.columns:
                if column not in self.columns:
                    raise self._missing(column, f"[prompt] template placeholder {{{column}}}")
        if spec.prompt.messages_column and spec.prompt.messages_column not in self.columns:
            raise self._missing(spec.prompt.messages_column, "[prompt] messages_column")
        from .sink import result_columns  # the sink owns the output column names

        clash = [c for c in result_columns(spec.output.column_prefix) if c in self.columns]
        if clash:
            msg = (
                f"{spec.input.path}: input column(s) {clash} would collide with output columns; "
                f'set [output] column_prefix = "llm_" (or rename the input columns)'
            )
            raise InputError(msg)

    def _rows_where(self, condition: pl.Expr, limit: int = 5) -> list[int]:
        assert self._lazy is not None
        hits = self._lazy.filter(condition).select(ROW_INDEX).head(limit).collect()
        return [int(i) for i in hits[ROW_INDEX].to_list()]

    def _check_ids(self) -> None:
        id_column = self.spec.input.id_column
        if not id_column:
            return
        where = self.spec.input.path
        nulls = self._rows_where(pl.col(id_column).is_null())
        if nulls:
            msg = f"{where}: id column {id_column!r} is empty in row(s) {_rows(nulls)}; every row needs an id"
            raise InputError(msg)
        dups = self._rows_where(pl.col(id_column).is_duplicated())
        if dups:
            assert self._lazy is not None
            value = self._lazy.select(pl.col(id_column)).slice(dups[0], 1).collect().item()
            msg = (
                f"{where}: id column {id_column!r} has duplicates (value {value!r} in row(s) "
                f"{_rows(dups)}); ids must be unique, or drop [input] id_column to use row numbers"
            )
            raise InputError(msg)

    def _empty_condition(self) -> pl.Expr | None:
        """True for rows with an empty prompt cell (None when empty cells are simply sent)."""
        if self.spec.prompt.on_empty == "send":
            return None
        if self.template is not None:
            cols = self.template.columns
        else:
            cols = (self.spec.prompt.messages_column or "",)
        if not cols:
            return None
        return pl.any_horizontal(
            [pl.col(c).is_null() | (pl.col(c).cast(pl.String).str.strip_chars() == "") for c in cols]
        )

    def _check_cells(self) -> None:
        where = self.spec.input.path
        empty = self._empty_condition()
        if empty is not None and self.spec.prompt.on_empty == "error":
            rows = self._rows_where(empty)
            if rows:
                msg = (
                    f"{where}: prompt cell(s) empty in row(s) {_rows(rows)}; fill them, or set "
                    f'[prompt] on_empty = "skip" to leave those rows out'
                )
                raise InputError(msg)
        column = self.spec.prompt.messages_column
        if column:
            assert self._lazy is not None
            cells = self._lazy.select(ROW_INDEX, column).collect()
            for index, cell in cells.iter_rows():
                if cell is None or (isinstance(cell, str) and not cell.strip()):
                    continue
                try:
                    prompts.parse_messages_cell(cell, None)
                except ValueError as exc:
                    msg = f"{where}: row {index + 1}, column {column!r}: {exc}"
                    raise InputError(msg) from None

    # ------------------------------------------------------------------ reading

    def batches(self, size: int = 5000) -> Iterator[pl.DataFrame]:
        """The table in input order, `size` rows at a time, with a row-index column."""
        for offset in range(0, self.n_rows, size):
            yield self.batch_at(offset, size)

    def batch_at(self, offset: int, size: int) -> pl.DataFrame:
        """Rows offset .. offset+size-1 (fewer at the end), with a row-index column."""
        assert self._lazy is not None, "call check() first"
        return self._lazy.slice(offset, size).collect()

    def row_id(self, row: dict[str, Any]) -> str:
        id_column = self.spec.input.id_column
        return str(row[id_column]) if id_column else str(int(row[ROW_INDEX]) + 1)

    def requests(self, batch: pl.DataFrame) -> Iterator[Request | Skipped]:
        """Render every row of a batch into a Request (or a Skipped)."""
        spec = self.spec
        empty = self._empty_condition()
        flags = batch.select(empty.alias("e"))["e"].to_list() if empty is not None else None
        for i, row in enumerate(batch.iter_rows(named=True)):
            index = int(row[ROW_INDEX])
            if flags is not None and flags[i]:
                yield Skipped(index, self.row_id(row), "empty prompt cell")
                continue
            if self.template is not None:
                messages = prompts.messages_from_template(spec.prompt.system, self.template.render(row))
            else:
                cell = row[spec.prompt.messages_column or ""]
                messages = prompts.parse_messages_cell(cell, spec.prompt.system)
            body = protocol.build_body(spec.model.name, messages, self.parameters)
            yield Request(
                key=prompts.request_key(spec.model.name, self.path, messages, body["parameters"]),
                row_index=index,
                row_id=self.row_id(row),
                path=self.path,
                body=body,
                est_input_tokens=prompts.estimate_tokens(messages),
            )


def _rows(indexes: list[int]) -> str:
    """Row numbers as a user counts them (1 = first data row)."""
    return ", ".join(str(i + 1) for i in indexes)
