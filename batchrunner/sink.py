"""The output table: every input column, then each row's answer, status and usage.

Rows come out in input order, failed rows included (and `skipped` / `pending` rows, so the
table always has one line per input row). The table is built a slice at a time: each slice
of the input is joined with its stored results and written as a parquet part, then polars
streams the parts into the final file, which replaces the old one atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from .errors import OutputError
from .render import Request
from .source import ROW_INDEX, Source
from .spec import JobSpec
from .store import Store

# (output column, dtype); the order here is the order in the output table. Output columns
# are named as the store's columns.
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
    """Fail now, before any request, if the output table cannot be written at `path`."""
    if path.is_dir():
        msg = f"{path}: [output] path is a folder; name a file ending in .csv, .parquet or .jsonl"
        raise OutputError(msg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        msg = (
            f"{path}: cannot write the output table there ({exc.strerror}); "
            "fix [output] path or the folder's permissions"
        )
        raise OutputError(msg) from None


def export(
    spec: JobSpec, store: Store, source: Source, path: Path | None = None, *, batch_rows: int = 5000
) -> tuple[Path, dict[str, int]]:
    """Write the output table for the job; returns its path and its rows by status."""
    out = path or spec.output.path
    check_writable(out)
    fmt = out.suffix.lower()
    prefix = spec.output.column_prefix
    columns = columns_for(spec)
    names = [name for name, _ in columns]
    status_at, message_at = names.index("status"), names.index("error_message")
    tally: dict[str, int] = {}
    parts = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.parent))
    try:
        for number, batch in enumerate(source.batches(batch_rows)):
            # Only what the table needs of each request: keeping whole requests (bodies and all)
            # for a slice was most of the export's memory.
            items = [
                (i.key, i.row_index, i.sample, None)
                if isinstance(i, Request)
                else ("", i.row_index, i.sample, i.reason)
                for i in source.requests(batch)
            ]
            found = store.fetch([key for key, _, _, reason in items if reason is None], names)
            values: list[list[object]] = [[] for _ in columns]
            first_index = int(batch[ROW_INDEX][0])
            positions = [row_index - first_index for _, row_index, _, _ in items]
            for key, _, _, reason in items:
                row: list[object] = [None] * len(columns)
                stored = found.get(key) if reason is None else None
                if stored is not None:
                    row = list(stored)
                elif reason is None:
                    row[status_at] = "pending"
                else:
                    row[status_at], row[message_at] = "skipped", reason
                tally[str(row[status_at])] = tally.get(str(row[status_at]), 0) + 1
                for column, value in zip(values, row, strict=True):
                    column.append(value)
            frame = batch[positions].drop(ROW_INDEX)
            if spec.job.repeat > 1:
                frame = frame.with_columns(pl.Series(prefix + "sample", [i[2] for i in items], dtype=pl.Int64))
            frame = frame.with_columns(
                pl.Series(prefix + name, column, dtype=dtype)
                for (name, dtype), column in zip(columns, values, strict=True)
            )
            frame.write_parquet(parts / f"{number:09d}.parquet")
            del items, found, values, frame
        tmp = out.with_name(f".{out.name}.tmp")
        lazy = pl.scan_parquet(parts / "*.parquet")
        if fmt == ".csv":
            lazy.sink_csv(tmp)
        elif fmt == ".parquet":
            lazy.sink_parquet(tmp)
        else:
            lazy.sink_ndjson(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return out, tally


def export_job(spec: JobSpec, path: Path | None = None) -> tuple[Path, dict[str, int]]:
    """Check the input and write the job's output table from its store (read-only)."""
    source = Source(spec)
    source.check(reserved=result_columns(spec))
    with Store(spec.db_path, readonly=True) as store:
        return export(spec, store, source, path)
