"""The input table: opened lazily with polars, checked as a whole, then turned into requests.

`Source.check()` runs before any request is sent and raises InputError for every problem a
user can fix in the file or the spec (missing file or column, empty table, null or duplicate
ids, empty prompt cells, broken messages JSON, bad encoding, rows the service would refuse
for lacking the word JSON under json_object output). `Source.batches()` then reads
the table a slice at a time, so a million-row file never sits in memory as a million
requests. CSV cells are read as text (no type guessing that could fail halfway through).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from . import prompts
from .errors import InputError
from .parameters import SEED_MAX, SeedColumn
from .render import URL_PREFIXES, Renderer, Request, Skipped
from .spec import JobSpec

ROW_INDEX = "__batchrunner_row__"
JSON_WORD = "json"


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
        self.renderer = Renderer(spec, self.template)
        self._lazy: pl.LazyFrame | None = None

    # ------------------------------------------------------------------ checks

    def check(self, reserved: Sequence[str] = ()) -> None:
        """Open the table and check it against the spec. Raises InputError.

        `reserved` names the columns the output table adds (an input column may not have one
        of those names)."""
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
        self._check_columns(reserved)
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

    def _check_columns(self, reserved: Sequence[str]) -> None:
        spec = self.spec
        if spec.input.id_column and spec.input.id_column not in self.columns:
            raise self._missing(spec.input.id_column, "[input] id_column")
        if self.template is not None:
            for column in self.template.columns:
                if column not in self.columns:
                    raise self._missing(column, f"[prompt] template placeholder {{{column}}}")
        if spec.prompt.messages_column and spec.prompt.messages_column not in self.columns:
            raise self._missing(spec.prompt.messages_column, "[prompt] messages_column")
        for key, names in (("images", spec.prompt.images), ("videos", spec.prompt.videos)):
            for column in names:
                if column not in self.columns:
                    raise self._missing(column, f"[prompt] {key}")
        seed = spec.parameters.seed
        if isinstance(seed, SeedColumn) and seed.column not in self.columns:
            raise self._missing(seed.column, "[parameters] seed column")
        clash = [c for c in reserved if c in self.columns]
        if clash:
            msg = (
                f"{spec.input.path}: input column(s) {clash} would collide with output columns; "
                f'set [output] column_prefix = "llm_" (or rename the input columns)'
            )
            raise InputError(msg)

    def _frame(self) -> pl.LazyFrame:
        """A fresh scan of the table, with the row index. Each query gets its own: on a large
        parquet file, a LazyFrame that already ran a query slices ~70x slower and holds on to
        far more memory (polars keeps state from earlier queries)."""
        assert self._lazy is not None, "call check() first"
        return _scan(self.spec).with_row_index(ROW_INDEX)

    def _rows_where(self, condition: pl.Expr, limit: int = 5) -> list[int]:
        assert self._lazy is not None
        hits = self._frame().filter(condition).select(ROW_INDEX).head(limit).collect(engine="streaming")
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
        assert self._lazy is not None
        repeated = (self._frame().group_by(id_column).agg(pl.len().alias("n")).filter(pl.col("n") > 1).head(1)).collect(
            engine="streaming"
        )
        dups = self._rows_where(pl.col(id_column) == repeated[id_column][0]) if repeated.height else []
        if dups:
            assert self._lazy is not None
            value = self._frame().select(pl.col(id_column)).slice(dups[0], 1).collect().item()
            msg = (
                f"{where}: id column {id_column!r} has duplicates (value {value!r} in row(s) "
                f"{_rows(dups)}); ids must be unique, or drop [input] id_column to use row numbers"
            )
            raise InputError(msg)

    def _empty_condition(self) -> pl.Expr | None:
        """True for rows with an empty prompt cell (None when empty cells are simply sent)."""
        if self.spec.prompt.on_empty == "send":
            return None
        cols = self.template.columns if self.template is not None else (self.spec.prompt.messages_column or "",)
        if not cols:
            return None
        return pl.any_horizontal([pl.col(c).is_null() | pl.col(c).cast(pl.String).str.contains(r"^\s*$") for c in cols])

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
            self._check_messages(column)
        self._check_seed_column()
        self._check_media()
        self._check_json_word()

    def _check_messages(self, column: str) -> None:
        assert self._lazy is not None
        where = self.spec.input.path
        cells = self._frame().select(ROW_INDEX, column).collect()
        for index, cell in cells.iter_rows():
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                continue
            try:
                prompts.parse_messages_cell(cell, None)
            except ValueError as exc:
                msg = f"{where}: row {index + 1}, column {column!r}: {exc}"
                raise InputError(msg) from None

    def _check_seed_column(self) -> None:
        seed = self.spec.parameters.seed
        if not isinstance(seed, SeedColumn):
            return
        where = self.spec.input.path
        value = pl.col(seed.column).cast(pl.Int64, strict=False)
        bad = self._rows_where(value.is_null() | (value < 0) | (value > SEED_MAX))
        if bad:
            msg = f"{where}: seed column {seed.column!r} must hold integers 0..{SEED_MAX}; row(s) {_rows(bad)} do not"
            raise InputError(msg)

    def _check_media(self) -> None:
        """Local media files must exist and fit inline, before anything is sent."""
        prompt = self.spec.prompt
        columns = [*prompt.images, *prompt.videos]
        if not columns:
            return
        assert self._lazy is not None
        base = self.spec.input.path.parent
        for column in columns:
            cells = self._frame().select(ROW_INDEX, column).collect()
            for index, cell in cells.iter_rows():
                for value in cell if isinstance(cell, list) else [cell]:
                    if not value or str(value).startswith(URL_PREFIXES):
                        continue
                    path = (base / str(value)).expanduser()
                    if not path.is_file():
                        msg = (
                            f"{self.spec.input.path}: row {index + 1}, column {column!r}: media file {str(value)!r} "
                            f"not found (local paths are relative to the input file's folder; URLs pass as they are)"
                        )
                        raise InputError(msg)
                    if path.stat().st_size * 4 / 3 > 10 * 1024 * 1024:
                        msg = (
                            f"{self.spec.input.path}: row {index + 1}, column {column!r}: {path} is too large to "
                            f"send inline (over 10 MB as base64); host it and put its URL in the cell"
                        )
                        raise InputError(msg)

    def _check_json_word(self, size: int = 5000) -> None:
        """json_object output needs the word JSON in the messages sent: the service refuses a
        request whose messages lack it (any case, in any message). So each row's messages are
        rendered (a slice at a time, media left out) and checked here, before anything is sent.
        Rows need no rendering when the template's fixed text says JSON (then every row does)
        or when one of their template cells does (its text is in the user message)."""
        fmt = self.spec.parameters.response_format
        if fmt is None or fmt.type != "json_object":
            return
        prompt, template = self.spec.prompt, self.template
        columns = template.columns if template is not None else (prompt.messages_column or "",)
        if template is not None:
            fixed = [prompt.system or "", self.renderer.context or "", *(text for text, _ in template.parts)]
            if any(JSON_WORD in text.lower() for text in fixed):
                return
            schema = self._frame().collect_schema()
            said = [pl.col(c).str.contains(f"(?i){JSON_WORD}") for c in columns if schema[c] == pl.String]
            unsure = ~pl.any_horizontal(said).fill_null(False) if said else pl.lit(True)
        else:
            unsure = pl.lit(True)
        empty = self._empty_condition() if prompt.on_empty == "skip" else None
        if empty is not None:  # rows left out are never sent
            unsure = unsure & ~empty
        if not self._frame().filter(unsure).select(pl.len()).collect(engine="streaming").item():
            return
        lacking: list[int] = []
        for offset in range(0, self.n_rows, size):
            frame = self._frame().slice(offset, size).filter(unsure).select(ROW_INDEX, *columns)
            lacking += self._without_word(frame.collect())
            if len(lacking) >= 5:
                break
        if lacking:
            where = (
                "[prompt] system or template"
                if template is not None
                else "those rows' messages (or to [prompt] system, if they have no system message)"
            )
            msg = (
                f"{self.spec.input.path}: row(s) {_rows(lacking[:5])}: response_format json_object needs the word "
                f"JSON in the messages sent, and these rows' messages lack it (the service would refuse them); "
                f'add it to {where} (e.g. "Reply in JSON.")'
            )
            raise InputError(msg)

    def _without_word(self, batch: pl.DataFrame) -> list[int]:
        """The row indexes of the rows whose rendered messages lack the word JSON."""
        lacking: list[int] = []
        for row in batch.iter_rows(named=True):
            try:
                messages = self.renderer.messages(row, media=False)
            except ValueError:
                continue  # an empty messages cell sent as it is: the service judges it
            if not prompts.mentions(messages, JSON_WORD):
                lacking.append(int(row[ROW_INDEX]))
        return lacking

    # ------------------------------------------------------------------ reading

    def batches(self, size: int = 5000) -> Iterator[pl.DataFrame]:
        """The table in input order, `size` rows at a time, with a row-index column."""
        for offset in range(0, self.n_rows, size):
            yield self.batch_at(offset, size)

    def batch_at(self, offset: int, size: int) -> pl.DataFrame:
        """Rows offset .. offset+size-1 (fewer at the end), with a row-index column."""
        assert self._lazy is not None, "call check() first"
        return self._frame().slice(offset, size).collect()

    def signature(self) -> str:
        """Identifies the input file's content cheaply: path, size and modification time."""
        stat = self.spec.input.path.stat()
        return f"{self.spec.input.path}:{stat.st_size}:{stat.st_mtime_ns}"

    def row_id(self, row: dict[str, Any]) -> str:
        id_column = self.spec.input.id_column
        return str(row[id_column]) if id_column else str(int(row[ROW_INDEX]) + 1)

    def requests(self, batch: pl.DataFrame) -> Iterator[Request | Skipped]:
        """Render every row of a batch into its Requests (one per sample), or Skipped ones."""
        empty = self._empty_condition()
        flags = batch.select(empty.alias("e"))["e"].to_list() if empty is not None else None
        for i, row in enumerate(batch.iter_rows(named=True)):
            index = int(row[ROW_INDEX])
            row_id = self.row_id(row)
            if flags is not None and flags[i]:
                for sample in range(self.spec.job.repeat):
                    yield Skipped(index, row_id, "empty prompt cell", sample)
                continue
            yield from self.renderer.requests(row, index, row_id)


def _rows(indexes: list[int]) -> str:
    """Row numbers as a user counts them (1 = first data row)."""
    return ", ".join(str(i + 1) for i in indexes)
