"""The output table: every input column, then each row's answer, status and usage.

Rows come out in input order, failed rows included (and `skipped` / `pending` rows, so the
table always has one line per input row). The table is streamed: polars' sink pulls the input
a slice at a time from a Python source (`register_io_source`), each slice joined with its
stored results (placing.py: found by row index, or by rendering the rows), and writes it into
a temporary file (parquet in row groups of `ROW_GROUP_ROWS`), which replaces the old table
atomically. So an export holds a few slices, never the table, whatever its size. Temporary
files (and the parts of older versions) carry the writer's pid: those an export killed midway
left behind (they hold answers) are removed by the next export. A CSV output holds list and
struct cells as JSON text and bytes as base64 (JSONL: bytes as base64); `conversion_note` says
so before a run sends.
"""

from __future__ import annotations

import base64
import glob
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from polars.io.plugins import register_io_source

from .cells import ROW_INDEX
from .errors import OutputError
from .placing import SAMPLE, Results
from .prompts import cell_json
from .source import Source
from .spec import JobSpec
from .store import Store

log = logging.getLogger("batchrunner")

ROW_GROUP_ROWS = 20_000  # rows per parquet row group of the output: what the sink buffers
SLICE_ROWS = 10_000  # input rows joined with their results at a time

# (output column, dtype); the order here is the order in the output table. Output columns
# are named as the store's columns, but for those in placing.STORE_COLUMN.
RESULT_COLUMNS: tuple[tuple[str, type[pl.DataType]], ...] = (
    ("content", pl.String),
    ("reasoning_content", pl.String),
    ("finish_reason", pl.String),
    ("status", pl.String),
    ("error_code", pl.String),
    ("error_message", pl.String),
    ("input_tokens", pl.Int64),
    ("output_tokens", pl.Int64),
    ("total_tokens", pl.Int64),
    ("cached_tokens", pl.Int64),
    ("reasoning_tokens", pl.Int64),
    ("tool_calls", pl.String),
    ("request_id", pl.String),
    ("attempts", pl.Int64),
    ("latency_ms", pl.Int64),
    ("cost_usd", pl.Float64),
)
# Columns that appear only when the job uses the feature they describe.
OPTIONAL_COLUMNS: tuple[tuple[str, type[pl.DataType]], ...] = (
    ("cache_creation_input_tokens", pl.Int64),
    ("image_tokens", pl.Int64),
    ("video_tokens", pl.Int64),
    ("parsed", pl.String),
    ("choices", pl.String),
    ("logprobs", pl.String),
)


def columns_for(spec: JobSpec) -> list[tuple[str, type[pl.DataType]]]:
    """The result columns of this job's output table, in order."""
    p = spec.parameters
    wanted = {
        "cache_creation_input_tokens": spec.prompt.cache != "none",
        "image_tokens": bool(spec.prompt.images),
        "video_tokens": bool(spec.prompt.videos),
        "parsed": spec.output.parse_json,
        "choices": (p.n or 1) > 1,
        "logprobs": bool(p.logprobs),
    }
    return [*RESULT_COLUMNS, *((name, dtype) for name, dtype in OPTIONAL_COLUMNS if wanted[name])]


def result_columns(spec: JobSpec) -> list[str]:
    """The names of the columns the sink appends to the input columns (with `sample` first
    when the job repeats rows)."""
    prefix = spec.output.column_prefix
    names = [prefix + name for name, _ in columns_for(spec)]
    return [prefix + "sample", *names] if spec.job.repeat > 1 else names


def check_writable(path: Path) -> None:
    """Fail now, before any request, if the output table cannot be written at `path`. Creates
    nothing: the folders are made when the table is written."""
    if path.is_dir():
        msg = f"{path}: [output] path is a folder; name a file ending in .csv, .parquet or .jsonl"
        raise OutputError(msg)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    problem = None
    if not folder.is_dir():
        problem = f"{folder} is a file, not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"{folder} is not writable"
    elif folder == path.parent:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
                pass
        except OSError as exc:
            problem = str(exc.strerror)
    if problem is not None:
        msg = f"{path}: cannot write the output table there ({problem}); fix [output] path or the folder's permissions"
        raise OutputError(msg)


def _nested(dtype: pl.DataType, binary: bool = False) -> bool:
    """Whether a column of `dtype` holds lists or structs (or, with `binary`, bytes anywhere)."""
    if isinstance(dtype, pl.List | pl.Array):
        return not binary or _nested(dtype.inner, binary)  # type: ignore[arg-type]
    if isinstance(dtype, pl.Struct):
        return not binary or any(_nested(f.dtype, binary) for f in dtype.fields)  # type: ignore[arg-type]
    return binary and dtype == pl.Binary


def converted_columns(out: Path, schema: dict[str, pl.DataType]) -> dict[str, str]:
    """Input columns the output format cannot hold as they are -> how they are written instead:
    in a CSV, list and struct cells as JSON text and bytes as base64; in JSONL, bytes as base64."""
    fmt = out.suffix.lower()
    found: dict[str, str] = {}
    for name, dtype in schema.items():
        if fmt == ".parquet":
            break
        if dtype == pl.Binary:
            found[name] = "base64 text"
        elif _nested(dtype, binary=fmt != ".csv"):
            found[name] = "JSON text"
    return found


def conversion_note(out: Path, schema: dict[str, pl.DataType]) -> str | None:
    """What `converted_columns` will do, for a warning before anything is sent."""
    found = converted_columns(out, schema)
    if not found:
        return None
    shown = ", ".join(f"{name!r} as {how}" for name, how in found.items())
    return (
        f"{out}: a {out.suffix.lower()[1:].upper()} table cannot hold nested or binary cells as they are: "
        f"input column(s) {shown} will be written that way (a .parquet output keeps them as they are)"
    )


def _converted(frame: pl.DataFrame, columns: dict[str, str]) -> pl.DataFrame:
    def text(value: object, how: str) -> str | None:
        if value is None:
            return None
        if how == "base64 text" and isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        return cell_json(value)

    return frame.with_columns(
        pl.Series(name, [text(v, how) for v in frame[name].to_list()], dtype=pl.String) for name, how in columns.items()
    )


def _remove_stale(out: Path) -> None:
    """Remove what an export killed midway left beside the table: its parts (which hold
    answers) and its temporary table. Those of an export still running are left alone."""
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*"):
        tag = leftover.name[len(out.name) + 2 :]
        kind, _, rest = tag.partition("-")
        if kind not in ("parts", "tmp") or _alive(rest.split("-")[0]):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def export(
    spec: JobSpec,
    store: Store,
    source: Source,
    path: Path | None = None,
    *,
    batch_rows: int = SLICE_ROWS,
    place: bool = True,
) -> tuple[Path, dict[str, int]]:
    """Write the output table for the job; returns its path and its rows by status. OutputError
    when it cannot be written (a full disk, say): the store keeps every answer. The rows'
    results are placed by row index where the store allows it, else found by rendering every
    row (placing.py); `place=False` renders every row."""
    out = path or spec.output.path
    check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
    except OSError as exc:
        raise _unwritable(out, exc) from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    table = _Table(spec, store, source, converted_columns(out, source.schema), batch_rows, place)
    try:
        lazy = register_io_source(io_source=table.frames, schema=table.schema, validate_schema=True)
        fmt = out.suffix.lower()
        if fmt == ".csv":
            lazy.sink_csv(tmp)
        elif fmt == ".parquet":
            lazy.sink_parquet(tmp, row_group_size=ROW_GROUP_ROWS)
        else:
            lazy.sink_ndjson(tmp)
        table.raise_failure()
        os.replace(tmp, out)
    except (OSError, pl.exceptions.PolarsError) as exc:
        table.raise_failure()  # a failure of the store or the input is itself, not the table's
        raise _unwritable(out, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return out, table.tally


def _unwritable(out: Path, exc: BaseException) -> OutputError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    reason = re.sub(r" \(os error \d+\)$", "", reason)
    msg = (
        f"{out}: cannot write the output table ({reason}). Every answer stays in the store: free the space "
        f"or fix the folder (or pick another --output), then `batchrunner export` writes the table without "
        f"sending anything"
    )
    return OutputError(msg)


class _Table:
    """The output table as a stream of frames, one input slice each, for polars' sink. It
    counts the rows by status as they go; an exception raised while making a frame (the
    store, the input) is kept, so that `export` raises it as itself."""

    def __init__(
        self, spec: JobSpec, store: Store, source: Source, convert: dict[str, str], batch_rows: int, place: bool
    ) -> None:
        self.spec, self.store, self.source, self.convert = spec, store, source, convert
        self.batch_rows = batch_rows
        self.columns = columns_for(spec)
        self.results = Results(source, store, self.columns, place=place)
        self.tally: dict[str, int] = {}
        self.failure: BaseException | None = None
        prefix = spec.output.column_prefix
        schema: dict[str, Any] = {n: pl.String if n in convert else t for n, t in source.schema.items()}
        if spec.job.repeat > 1:
            schema[prefix + "sample"] = pl.Int64
        schema.update((prefix + name, dtype) for name, dtype in self.columns)
        self.schema = pl.Schema(schema)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def frames(
        self, with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        """The io source: every slice of the input joined with its stored results, in order."""
        try:
            left = n_rows
            for offset in range(0, self.source.n_rows, self.batch_rows):
                frame = self._frame(self.source.batch_at(offset, self.batch_rows))
                if with_columns is not None:
                    frame = frame.select(with_columns)
                if predicate is not None:
                    frame = frame.filter(predicate)
                if left is not None:
                    frame, left = frame.head(left), left - min(left, frame.height)
                yield frame
                if left == 0:
                    return
        except BaseException as exc:
            self.failure = exc
            raise

    def _frame(self, batch: pl.DataFrame) -> pl.DataFrame:
        """One slice of the input joined with its stored results; counts its rows by status."""
        spec, tally = self.spec, self.tally
        found = self.results.of(batch)
        for status, count in found.group_by("status").len().iter_rows():
            tally[str(status)] = tally.get(str(status), 0) + count
        if found.height == batch.height and spec.job.repeat == 1:  # a line per row, in order
            frame = batch.drop(ROW_INDEX)
        else:
            positions = found[ROW_INDEX].cast(pl.Int64) - int(batch[ROW_INDEX][0])
            frame = batch[positions.to_list()].drop(ROW_INDEX)
        frame = _converted(frame, self.convert)
        prefix = spec.output.column_prefix
        if spec.job.repeat > 1:
            frame = frame.with_columns(found[SAMPLE].alias(prefix + "sample"))
        return frame.with_columns(found[name].alias(prefix + name) for name, _ in self.columns)


def export_job(spec: JobSpec, path: Path | None = None) -> tuple[Path, dict[str, int]]:
    """Check the input and write the job's output table from its store (read-only)."""
    source = Source(spec)
    source.check(reserved=result_columns(spec))
    out = path or spec.output.path
    note = conversion_note(out, source.schema)
    if note:
        log.warning(note)
    with Store(spec.db_path, readonly=True) as store:
        return export(spec, store, source, path)
