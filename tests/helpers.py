"""Builders for job folders used across the tests: a spec file plus its input table."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

API_KEY = "sk-test-0123456789abcdef"  # what the `sim` fixture exports as DASHSCOPE_API_KEY
Launch = Callable[..., subprocess.Popen[Any]]  # the `launch` fixture: launch(*cli_args, **popen_kwargs)

BASE_SPEC: dict[str, dict[str, Any]] = {
    "job": {"name": "t"},
    "input": {"path": "data.csv", "id_column": "id"},
    "prompt": {"system": "Be brief.", "template": "Say something about {text}"},
    "model": {"name": "qwen-plus"},
    "parameters": {"temperature": 0.5, "max_tokens": 32, "seed": 1},
    "limits": {
        "requests_per_minute": 60_000,
        "concurrency": 16,
        "max_retries": 4,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 10,
        "commit_interval_ms": 20,
    },
    "output": {"path": "out/result.csv"},
}


class Clock:
    """A clock the test moves by hand (e.g. SimulatorConfig.clock): seconds, starting at 1000."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def spec_text(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        lines.append("")
    return "\n".join(lines)


def merged(overrides: dict[str, dict[str, Any] | None] | None) -> dict[str, dict[str, Any]]:
    """BASE_SPEC with per-section overrides; a value of None in a section deletes the key."""
    sections = {k: dict(v) for k, v in BASE_SPEC.items()}
    for section, keys in (overrides or {}).items():
        if keys is None:
            sections.pop(section, None)
            continue
        target = sections.setdefault(section, {})
        for key, value in keys.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return sections


def write_job(
    folder: Path,
    rows: list[dict[str, Any]] | pl.DataFrame | None = None,
    overrides: dict[str, dict[str, Any] | None] | None = None,
    *,
    data_name: str = "data.csv",
) -> Path:
    """Write data + spec into `folder`; returns the spec path."""
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(20)]
    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    data = folder / data_name
    if data_name.endswith(".csv"):
        frame.write_csv(data)
    elif data_name.endswith(".parquet"):
        frame.write_parquet(data)
    else:
        frame.write_ndjson(data)
    sections = merged({"input": {"path": data_name}, **(overrides or {})})
    spec = folder / "job.toml"
    spec.write_text(spec_text(sections), encoding="utf-8")
    return spec


def read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_ndjson(path)


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """The rows of one SQL query against a store (the connection is closed after)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def invoke_cli(*args: str):  # type: ignore[no-untyped-def]
    """The CLI in-process; a traceback (anything but SystemExit) fails the test."""
    from click.testing import CliRunner

    from batchrunner.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder` (a disk that fills up), unmounted at the end;
    the test is skipped where mounting is not allowed (it needs root)."""
    import pytest

    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def legacy_copy(src: Path, dst: Path, *, until: str) -> None:
    """A new store at `dst` holding what the store `src` holds, as an older batchrunner kept
    it: the schema steps up to `until` only, results and attempts copied from the views (whose
    columns are the old tables' columns), the other tables as they are."""
    import sqlite_utils

    from batchrunner.store.migrations import migrate

    with contextlib.closing(sqlite3.connect(dst, isolation_level=None)) as conn:
        migrate(sqlite_utils.Database(conn), until=until)
        conn.execute("ATTACH DATABASE ? AS src", [str(src)])
        sources = {"results": "results_view", "attempts": "attempts_view"}
        tables = [n for (n,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table == "_batchrunner_migrations":
                continue
            source = sources.get(table, table)
            theirs = {row[1] for row in conn.execute(f"PRAGMA src.table_info([{source}])")}
            columns = ", ".join(
                f"[{row[1]}]" for row in conn.execute(f"PRAGMA main.table_info([{table}])") if row[1] in theirs
            )
            conn.execute(f"DELETE FROM main.[{table}]")
            conn.execute(f"INSERT INTO main.[{table}] ({columns}) SELECT {columns} FROM src.[{source}]")
