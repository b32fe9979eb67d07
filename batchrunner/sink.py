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
from .source import ROW_INDEX, Request, Source
from .spec import JobSpec
from .store import Store

# (output column, store column, dtype); the order here is the order in the output table.
RESULT_COLUMNS: tuple[tuple[str, str, type[pl.DataType]], ...] = (
    ("content", "content", pl.String),
    ("reasoning_content", "reasoning_content", pl.String),
    ("finish_reason", "finish_reason", pl.String),
    ("status", "status", pl.String),
    ("error_code", "error_code", pl.String),
    ("error_message", "error_message", pl.String),
    ("input_tokens", "input_tokens", pl.Int64),
    ("output_tokens", "output_tokens", pl.Int64),
    ("total_tokens", "total_tokens", pl.Int64),
    ("cached_tokens", "cached_tokens", pl.Int64),
    ("request_id", "request_id", pl.String),
    ("attempts", "attempts", pl.Int64),
    ("latency_ms", "latency_ms", pl.Int64),
)
_STATUS = [name for name, _, _ in RESULT_COLUMNS].index("status")
_MESSAGE = [name for name, _, _ in RESULT_COLUMNS].index("error_message")


def result_columns(prefix: str = "") -> list[str]:
    """The names of the columns the sink appends to the input columns."""
    return [prefix + name for name, _, _ in RESULT_COLUMNS]


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
    spec: JobSpec,
    store: Store,
    source: Source,
    path: Path | None = None,
    *,
    batch_rows: int = 20_000,
) -> tuple[Path, dict[str, int]]:
    """Write the output table for the job; returns its path and its rows by status."""
    out = path or spec.output.path
    check_writable(out)
    fmt = out.suffix.lower()
    prefix = spec.output.column_prefix
    store_cols = [col for _, col, _ in RESULT_COLUMNS]
    tally: dict[str, int] = {}
    parts = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.parent))
    try:
        for number, batch in enumerate(source.batches(batch_rows)):
            items = list(source.requests(batch))
            found = store.fetch([i.key for i in items if isinstance(i, Request)], store_cols)
            columns: list[list[object]] = [[] for _ in RESULT_COLUMNS]
            for item in items:
                if isinstance(item, Request):
                    values: tuple[object, ...] = found.get(item.key) or (None,) * len(RESULT_COLUMNS)
                    if values[_STATUS] is None:
                        values = _placeholder("pending", None)
                else:
                    values = _placeholder("skipped", item.reason)
                status = str(values[_STATUS])
                tally[status] = tally.get(status, 0) + 1
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
            frame = batch.drop(ROW_INDEX).with_columns(
                pl.Series(prefix + name, values, dtype=dtype)
                for (name, _, dtype), values in zip(RESULT_COLUMNS, columns, strict=True)
            )
            frame.write_parquet(parts / f"{number:09d}.parquet")
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


def _placeholder(status: str, message: str | None) -> tuple[object, ...]:
    values: list[object] = [None] * len(RESULT_COLUMNS)
    values[_STATUS] = status
    values[_MESSAGE] = message
    return tuple(values)
