"""Request keys are kept as their 16 bytes in `results` and `attempts` (migration m010), and
shown as the text they are everywhere else: the views, every Store method, a batch line's
custom_id. A key that is not 32 hex digits is kept as it came. A store with text keys is read
as it is (read-only) and converted by the next run. Real SQLite files."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchrunner.records import Attempt, Result
from batchrunner.render import key_of
from batchrunner.store import Store, packing, slim
from batchrunner.store.batches import Line

KEYS = [key_of("/p", f"body {i}".encode()) for i in range(6)] + ["not-a-hex-key"]


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def result(key: str, i: int, status: str = "ok") -> Result:
    return Result(
        key=key, row_id=f"r{i}", row_index=i, status=status, retryable=int(status == "failed"), attempts=1,
        possibly_billed_attempts=0, latency_ms=5, started_at="2026-12-01T00:00:00.000+00:00",
        finished_at="2026-12-01T00:00:00.005+00:00", model="qwen-plus", endpoint="/p", parameters=None, run_id=1,
        content=f"answer {i}" if status == "ok" else None, input_tokens=10, output_tokens=2, cost_pusd=7,
        error_code="Throttling" if status == "failed" else None,
    )  # fmt: skip


def attempt(key: str) -> Attempt:
    return Attempt(
        key=key, run_id=1, attempt=1, started_at="2026-12-01T00:00:00.000+00:00", latency_ms=5, outcome="ok",
        input_tokens=10, output_tokens=2, cost_pusd=7, usage='{"input_tokens":10,"output_tokens":2}',
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "keys.sqlite"
    with Store(path) as s:
        s.start_run(job="t", spec_digest="d", simulated=True, base_url="http://x")
        s.write([result(k, i, "failed" if i == 5 else "ok") for i, k in enumerate(KEYS)], [attempt(k) for k in KEYS])
    return path


def test_keys_are_kept_as_bytes_and_read_as_their_text(store: Path) -> None:
    for table in ("results", "attempts"):
        kinds = dict(rows(store, f"SELECT {table}.key IS ?, typeof(key) FROM {table}", "not-a-hex-key"))
        assert kinds == {0: "blob", 1: "text"}  # 32 hex digits as 16 bytes, anything else as it came
        assert sorted(k for (k,) in rows(store, f"SELECT key FROM {table}_view")) == sorted(KEYS)
    assert rows(store, "SELECT content FROM results_view WHERE key = ?", KEYS[2]) == [("answer 2",)]
    with Store(store) as s:
        assert s.lookup([*KEYS, "f" * 32]) == {
            k: ("failed" if i == 5 else "ok", int(i == 5)) for i, k in enumerate(KEYS)
        }
        assert set(s.fetch(KEYS, ["content"])) == set(KEYS) and s.fetch([KEYS[1]], ["row_id"]) == {KEYS[1]: ("r1",)}
        assert s.attempt_counts() == dict.fromkeys(KEYS, 1)
        assert s.spent() == 7 * len(KEYS)  # each row's cost once: its attempts are found by key
        sums = s.usage_sums(["input_tokens"], ["cost_pusd"], None, None)  # 5 group columns, 3 counts, then:
        assert (sum(r[8] for r in sums), sum(r[10] or 0 for r in sums)) == (10 * len(KEYS), 7 * len(KEYS))


def test_a_batch_line_s_custom_id_is_the_key_s_text(store: Path) -> None:
    with Store(store) as s:
        file_id, _ = s.plan_file(
            job="t", purpose="job", model="qwen-plus", endpoint="/v1/chat/ds-test", attempt=1, spool="x", size=1,
            run_id=1, lines=[Line(k, k, i, f"r{i}", 0, None, 1) for i, k in enumerate(KEYS)],
        )  # fmt: skip
        s.conn.execute("UPDATE batch_lines SET outcome = 'resubmit'")
        assert s.requeue(None) == 1  # the failed row, and the line of its key starts its count again
        assert s.batch_tries(KEYS) == {k: 1 for k in KEYS if k != KEYS[5]}
    joined = "SELECT count(*) FROM batch_lines b JOIN results_view r ON r.key = b.custom_id"
    assert rows(store, joined) == [(len(KEYS),)]


def test_a_store_with_text_keys_is_read_then_converted(store: Path, tmp_path: Path) -> None:
    older = tmp_path / "older.sqlite"
    shutil.copyfile(store, older)
    with contextlib.closing(sqlite3.connect(older, isolation_level=None)) as conn:  # as m009 left it
        for table, view in (("results", slim.results_view_sql()), ("attempts", slim.attempts_view_sql())):
            conn.execute(f"UPDATE {table} SET key = lower(hex(key)) WHERE typeof(key) = 'blob'")
            conn.execute(f"DROP VIEW {table}_view")
            conn.execute(view.replace(packing.key_sql(f"{table[0]}.key"), f"{table[0]}.key"))
        conn.execute("DELETE FROM _batchrunner_migrations WHERE name = 'm010_packed_keys'")
    assert {kind for (kind,) in rows(older, "SELECT typeof(key) FROM results")} == {"text"}
    with Store(older, readonly=True) as s:  # not converted: read as it is
        assert s.lookup(KEYS[:2]) == {KEYS[0]: ("ok", 0), KEYS[1]: ("ok", 0)}
        assert s.fetch([KEYS[3]], ["content"]) == {KEYS[3]: ("answer 3",)} and s.attempt_counts()[KEYS[4]] == 1
        before = (s.spent(), sorted(s.usage_sums(["input_tokens"], ["cost_pusd"], None, None), key=repr))
    with Store(older) as s:  # converted
        assert s.lookup(KEYS[:2]) == {KEYS[0]: ("ok", 0), KEYS[1]: ("ok", 0)}
        assert (s.spent(), sorted(s.usage_sums(["input_tokens"], ["cost_pusd"], None, None), key=repr)) == before
    for table in ("results", "attempts"):
        assert rows(older, f"SELECT typeof(key), count(*) FROM {table} GROUP BY 1") == [("blob", 6), ("text", 1)]
    for sql in ("SELECT * FROM results_view ORDER BY key", "SELECT * FROM attempts_view ORDER BY id"):
        assert rows(older, sql) == rows(store, sql)
