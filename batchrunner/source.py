"""The input table: opened lazily with polars, checked as a whole, then turned into requests.

`Source.check()` runs before any request is sent and raises InputError for every problem a
user can fix in the file or the spec (missing file or column, empty table, null or duplicate
ids, empty prompt cells, broken messages JSON, bad encoding, rows the service would refuse
for lacking the word JSON under json_object output). `Source.batches()` then reads
the table a slice at a time, so a million-row file never sits in memory as a million
requests. CSV cells are read as text (no type guessing that could fail halfway through).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import polars as pl

from . import cells, inputfile, prompts, store
from .cells import ROW_INDEX, row_numbers
from .errors import InputError
from .parameters import SEED_MAX, SeedColumn
from .render import Renderer, Request, Skipped
from .spec import JobSpec

log = logging.getLogger("batchrunner")

ID_PASS_ROWS = 500_000  # ids grouped at once by the duplicate-id check
ID_HASH_SEED = 20_260_101
CHECK_SLICE_ROWS = 50_000  # rows of a parquet table searched at once by a check


def _scan(spec: JobSpec, readable: inputfile.Readable | None = None) -> pl.LazyFrame:
    src = spec.input
    fmt = src.table_format
    path = readable.path if readable is not None else src.path
    if fmt == "csv":
        # other encodings are read from a UTF-8 copy
        encoding: Literal["utf8", "utf8-lossy"] = "utf8-lossy" if src.encoding == "utf8-lossy" else "utf8"
        return pl.scan_csv(path, separator=src.separator, infer_schema=False, encoding=encoding)
    if fmt == "parquet":
        return pl.scan_parquet(path)
    return pl.scan_ndjson(path, infer_schema_length=None)


def _explain(spec: JobSpec, exc: Exception, readable: inputfile.Readable | None = None) -> InputError:
    """What polars' refusal means, naming the line when it can be found."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where, fmt = spec.input.path, spec.input.table_format
    path = readable.path if readable is not None else where
    if "utf-8" in text.lower() or "utf8" in text.lower():
        found = inputfile.bad_byte_text(path, "utf8") or text
        msg = (
            f"{where}: the file is not valid UTF-8 ({found}). If it comes from Excel or Windows, set "
            f'[input] encoding = "cp1252" (or encoding = "latin1"); encoding = "utf8-lossy" replaces the bad '
            f"bytes instead (and reports how many cells it changed). Or convert it: "
            f"`iconv -f cp1252 -t utf-8 in.csv > out.csv`."
        )
        return InputError(msg)
    if fmt == "jsonl":
        bad = inputfile.bad_json_line(path)
        if bad is not None:
            msg = f"{where}: line {bad[0]} is {bad[1]}; fix or remove that line (one JSON object a line)"
            return InputError(msg)
    if fmt == "csv" and "more fields" in text:
        ragged = inputfile.ragged_record(path, spec.input.separator)
        if ragged is not None:
            line, fields, width = ragged
            msg = (
                f"{where}: line {line} has {fields} fields but the header has {width} (a {spec.input.separator!r} "
                f"inside a cell that is not quoted?); quote that cell or remove the extra field"
            )
            return InputError(msg)
    return InputError(f"{where}: cannot read the {fmt} table: {text}")


class Source:
    """The input table of one job."""

    def __init__(self, spec: JobSpec, rows: tuple[int, int] | None = None) -> None:
        """`rows` = (first, end): only that slice of the table (a shard's), with the row
        indexes of the whole table; checks still read the whole table."""
        self.spec = spec
        self.rows = rows
        template, where = spec.prompt.template, f"{spec.source_path}: [prompt] template"
        self.template = prompts.parse_template(template, where=where) if template is not None else None
        self.columns: list[str] = []
        self.schema: dict[str, pl.DataType] = {}
        self.n_rows = 0
        self.file: inputfile.Readable | None = None
        self.renderer = Renderer(spec, self.template)
        self._lazy: pl.LazyFrame | None = None

    # ------------------------------------------------------------------ checks

    def check(self, reserved: Sequence[str] = (), *, rows_checked: bool = False) -> None:
        """Open the table and check it against the spec. Raises InputError.

        `reserved` names the columns the output table adds (an input column may not have one
        of those names). `rows_checked`: this spec's checks of every row (ids, cells) passed
        on this very file before (see `checked_before`), so they are not made again, but for
        those that read other files (media, a context file), which may have changed apart."""
        spec = self.spec
        where = spec.input.path
        if not where.is_file():
            msg = f"{where}: input file not found (set [input] path, relative to the spec file)"
            raise InputError(msg)
        self.file = inputfile.Readable(where, spec.input.table_format, spec.input.encoding)
        try:
            lazy = _scan(spec, self.file)
            self.schema = dict(lazy.collect_schema())
            self.columns = list(self.schema)
            self.n_rows = int(lazy.select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            raise _explain(spec, exc, self.file) from None
        if self.n_rows == 0:
            msg = f"{where}: the table has no rows; there is nothing to run"
            raise InputError(msg)
        self._check_names()
        self._check_columns(reserved)
        self._lazy = lazy.with_row_index(ROW_INDEX)
        if self.rows is not None:
            first, end = self.rows
            self.n_rows = max(0, min(end, self.n_rows) - first)
        try:
            if rows_checked:
                cells.check_media(self)
                cells.check_json_word(self)  # a context file may have changed apart from the table
            else:
                if spec.input.table_format == "csv":  # every field parsed once: a ragged line shows now
                    lazy.select(pl.all().null_count()).collect(engine="streaming")
                self._check_ids()
                self._check_cells()
            self._note_replaced()
        except pl.exceptions.PolarsError as exc:
            raise _explain(spec, exc, self.file) from None

    def _check_names(self) -> None:
        """A column name given twice is refused: polars would read only the first."""
        spec, file = self.spec, self.file
        assert file is not None
        where = spec.input.path
        if spec.input.table_format == "csv":
            twice = inputfile.duplicate_names(inputfile.csv_header(file.path, spec.input.separator))
            if twice:
                name, columns = next(iter(twice.items()))
                msg = (
                    f"{where}: column {name!r} appears {len(columns)} times in the header (columns "
                    f"{', '.join(map(str, columns))}); rename all but one: only the first would be read"
                )
                raise InputError(msg)
        elif spec.input.table_format == "jsonl":
            found = inputfile.duplicate_json_key(file.path)
            if found is not None:
                msg = f"{where}: line {found[0]} gives key {found[1]!r} twice; keep one (only the first would be read)"
                raise InputError(msg)

    def _note_replaced(self) -> None:
        """With encoding = "utf8-lossy": say how many cells had bytes replaced, and where."""
        spec = self.spec
        if spec.input.encoding != "utf8-lossy" or not inputfile.first_bad_byte(spec.input.path, "utf8"):
            return
        text = [c for c, dtype in self.schema.items() if dtype == pl.String]
        if not text:
            return
        hit = [pl.col(c).str.contains("\ufffd", literal=True).fill_null(False) for c in text]
        cells = int(self.frame().select(pl.sum_horizontal(hit).sum()).collect(engine="streaming").item() or 0)
        if not cells:
            return
        rows = self.frame().filter(pl.any_horizontal(hit))
        n_rows = int(rows.select(pl.len()).collect(engine="streaming").item())
        first = [self.row_id(r) for r in rows.head(5).collect().iter_rows(named=True)]
        log.warning(
            "%s: %d cell(s) in %d row(s) held bytes that are not UTF-8, replaced by U+FFFD (encoding = "
            '"utf8-lossy"); first row id(s): %s. If the file comes from Excel or Windows, set [input] encoding = '
            '"cp1252" (or "latin1") to read those characters as written',
            spec.input.path,
            cells,
            n_rows,
            ", ".join(first),
        )

    def _missing(self, wanted: str, key: str) -> InputError:
        shown = ", ".join(self.columns[:20]) + (" ..." if len(self.columns) > 20 else "")
        msg = (
            f"{self.spec.input.path}: {key} names column {wanted!r}, which the table lacks (columns: {shown}); "
            f"fix it in {self.spec.source_path}, or the table"
        )
        return InputError(msg)

    def _check_columns(self, reserved: Sequence[str]) -> None:
        spec = self.spec
        if spec.input.id_column and spec.input.id_column not in self.columns:
            raise self._missing(spec.input.id_column, "[input] id_column")
        if self.template is not None:
            for column in self.template.columns:
                if column not in self.columns:
                    raise self._missing(column, f"[prompt] template placeholder {{{column}}}")
                if self.schema[column] == pl.Binary:
                    msg = (
                        f"{spec.input.path}: [prompt] template placeholder {{{column}}} names a binary column; "
                        f"bytes cannot go into a text prompt. Store text in it (images: paths or URLs, with "
                        f"[prompt] images)"
                    )
                    raise InputError(msg)
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

    def frame(self) -> pl.LazyFrame:
        """A fresh scan of the table, with the row index. Each query gets its own: on a large
        parquet file, a LazyFrame that already ran a query slices ~70x slower and holds on to
        far more memory (polars keeps state from earlier queries)."""
        assert self._lazy is not None, "call check() first"
        frame = _scan(self.spec, self.file).with_row_index(ROW_INDEX)
        return frame if self.rows is None else frame.slice(self.rows[0], self.n_rows)

    def _rows_where(self, condition: pl.Expr, limit: int = 5) -> list[int]:
        """The row indexes of the first `limit` rows where `condition` holds. A parquet table
        is searched CHECK_SLICE_ROWS at a time: the streaming engine decodes whole row groups
        (262k rows each, as polars writes them), two at once: ~200 MB for a check of
        the prompt column of a million rows; a slice decodes only the pages it needs. Other
        formats stream (a slice of a CSV file would parse it from its start each time)."""
        assert self._lazy is not None
        if self.spec.input.table_format != "parquet":
            hits = self.frame().filter(condition).select(ROW_INDEX).head(limit).collect(engine="streaming")
            return [int(i) for i in hits[ROW_INDEX].to_list()]
        found: list[int] = []
        for offset in range(0, self.n_rows, CHECK_SLICE_ROWS):
            part = self.frame().slice(offset, CHECK_SLICE_ROWS).filter(condition).select(ROW_INDEX)
            found += [int(i) for i in part.head(limit - len(found)).collect()[ROW_INDEX].to_list()]
            if len(found) >= limit:
                break
        return found

    def _check_ids(self) -> None:
        id_column = self.spec.input.id_column
        if not id_column:
            return
        where = self.spec.input.path
        nulls = self._rows_where(pl.col(id_column).is_null())
        if nulls:
            msg = f"{where}: id column {id_column!r} is empty in row(s) {row_numbers(nulls)}; every row needs an id"
            raise InputError(msg)
        repeated = self._repeated_id(id_column)
        dups = self._rows_where(pl.col(id_column) == repeated) if repeated is not None else []
        if dups:
            assert self._lazy is not None
            value = self.frame().select(pl.col(id_column)).slice(dups[0], 1).collect().item()
            msg = (
                f"{where}: id column {id_column!r} has duplicates (value {value!r} in row(s) "
                f"{row_numbers(dups)}); ids must be unique, or drop [input] id_column to use row numbers"
            )
            raise InputError(msg)

    def _repeated_id(self, id_column: str) -> Any:
        """An id that more than one row has, or None. The ids are grouped in passes of about
        ID_PASS_ROWS (split by their hash), so that the check's memory does not grow with the
        table: one pass over a million ids grouped them all at once (~100 MB)."""
        passes = max(1, -(-self.n_rows // ID_PASS_ROWS))
        for part in range(passes):
            ids = self.frame().select(pl.col(id_column))
            if passes > 1:
                ids = ids.filter(pl.col(id_column).hash(seed=ID_HASH_SEED) % passes == part)
            counted = ids.group_by(id_column).agg(pl.len().alias("n")).filter(pl.col("n") > 1).head(1)
            repeated = counted.collect(engine="streaming")
            if repeated.height:
                return repeated[id_column][0]
        return None

    def empty_condition(self) -> pl.Expr | None:
        """True for rows with an empty prompt cell (None when empty cells are simply sent)."""
        if self.spec.prompt.on_empty == "send":
            return None
        cols = self.template.columns if self.template is not None else (self.spec.prompt.messages_column or "",)
        if not cols:
            return None
        return pl.any_horizontal([self._blank(c) for c in cols])

    def _blank(self, column: str) -> pl.Expr:
        """True for an empty cell: null, blank text, or an empty list."""
        cell, dtype = pl.col(column), self.schema.get(column)
        if isinstance(dtype, pl.List):
            return cell.is_null() | (cell.list.len() == 0)
        if dtype is not None and (dtype.is_nested() or dtype == pl.Binary):
            return cell.is_null()
        return cell.is_null() | cell.cast(pl.String).str.contains(r"^\s*$")

    def _check_cells(self) -> None:
        where = self.spec.input.path
        empty = self.empty_condition()
        if empty is not None and self.spec.prompt.on_empty == "error":
            rows = self._rows_where(empty)
            if rows:
                msg = (
                    f"{where}: prompt cell(s) empty in row(s) {row_numbers(rows)}; fill them, or set "
                    f'[prompt] on_empty = "skip" to leave those rows out'
                )
                raise InputError(msg)
        column = self.spec.prompt.messages_column
        if column:
            self._check_messages(column)
        self._check_seed_column()
        cells.check_media(self)
        cells.check_json_word(self)

    def _check_messages(self, column: str) -> None:
        assert self._lazy is not None
        where = self.spec.input.path
        cells = self.frame().select(ROW_INDEX, column).collect()
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
            rows = row_numbers(bad)
            msg = f"{where}: seed column {seed.column!r} must hold integers 0..{SEED_MAX}; row(s) {rows} do not"
            raise InputError(msg)

    # ------------------------------------------------------------------ reading

    def batches(self, size: int = 5000) -> Iterator[pl.DataFrame]:
        """The table in input order, `size` rows at a time, with a row-index column."""
        for offset in range(0, self.n_rows, size):
            yield self.batch_at(offset, size)

    def batch_at(self, offset: int, size: int) -> pl.DataFrame:
        """Rows offset .. offset+size-1 (fewer at the end), with a row-index column."""
        assert self._lazy is not None, "call check() first"
        return self.frame().slice(offset, size).collect()

    def signature(self) -> str:
        """Identifies the input file's content cheaply: path, size and modification time."""
        stat = self.spec.input.path.stat()
        return f"{self.spec.input.path}:{stat.st_size}:{stat.st_mtime_ns}"

    def checked_before(self) -> bool:
        """Whether a run of this very spec (its digest) over this very file (its signature) is
        in the job's store: runs start only once `check` passed, so its checks of every row
        hold (at 10M rows they take seconds, which a resume need not spend again)."""
        db, data = self.spec.db_path, self.spec.input.path
        return db.is_file() and data.is_file() and store.checked_before(db, self.spec.digest, self.signature())

    def render_context(self) -> str | None:
        """The digest of what turns this file's rows into requests (see `Renderer.render_context`)."""
        return self.renderer.render_context(self.signature())

    def row_id(self, row: dict[str, Any]) -> str:
        id_column = self.spec.input.id_column
        return str(row[id_column]) if id_column else str(int(row[ROW_INDEX]) + 1)

    def requests(self, batch: pl.DataFrame) -> Iterator[Request | Skipped]:
        """Render every row of a batch into its Requests (one per sample), or Skipped ones."""
        empty = self.empty_condition()
        flags = batch.select(empty.alias("e"))["e"].to_list() if empty is not None else None
        for i, row in enumerate(batch.iter_rows(named=True)):
            index = int(row[ROW_INDEX])
            row_id = self.row_id(row)
            if flags is not None and flags[i]:
                for sample in range(self.spec.job.repeat):
                    yield Skipped(index, row_id, "empty prompt cell", sample)
                continue
            yield from self.renderer.requests(row, index, row_id)
