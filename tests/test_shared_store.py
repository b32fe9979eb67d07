"""Two specs sharing one store: rows belong to the job that made them (`results.job`), so
`status`, `runs`, `retry` and `report --by job` keep the jobs apart; stores made before the
column existed get it filled in from the run that made each row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import legacy_copy, write_job

from batchrunner.cli import cli
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.store import Store

KEY = "sk-test-shared-store-0123456789"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    config = SimulatorConfig(faults=(FaultRule("alpha 1", ("always:InvalidParameter",)),))
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
        yield handle


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def two_jobs(tmp_path: Path) -> tuple[Path, Path, Path]:
    db = tmp_path / "shared.sqlite"
    alpha = write_job(
        tmp_path / "alpha",
        [{"id": f"a{i}", "text": f"alpha {i}"} for i in range(4)],
        {"job": {"name": "alpha", "db": str(db)}},
    )
    beta = write_job(
        tmp_path / "beta",
        [{"id": f"b{i}", "text": f"beta {i}"} for i in range(6)],
        {"job": {"name": "beta", "db": str(db)}},
    )
    assert invoke("run", str(alpha), "-q").exit_code == 1  # one row fails for good
    assert invoke("run", str(beta), "-q").exit_code == 0
    return alpha, beta, db


def test_status_runs_and_report_keep_the_jobs_apart(tmp_path: Path, sim: ThreadHandle) -> None:
    alpha, beta, db = two_jobs(tmp_path)
    status = invoke("status", str(alpha)).output
    assert "results: failed 1, ok 3" in status and "failed with InvalidParameter: 1" in status
    assert "last run #1: finished, exit 1" in status
    status = invoke("status", str(beta)).output
    assert "results: ok 6" in status and "InvalidParameter" not in status and "last run #2" in status
    runs = json.loads(invoke("runs", str(beta), "--format", "json").output)
    assert [r["job"] for r in runs] == ["beta"]
    report = json.loads(invoke("report", str(db), "--by", "job", "--format", "json").output)
    assert {r["job"]: (r["requests"], r["ok"], r["failed"]) for r in report["rows"]} == {
        "alpha": (4, 3, 1),
        "beta": (6, 6, 0),
    }


def test_retry_requeues_only_the_jobs_own_rows(tmp_path: Path, sim: ThreadHandle) -> None:
    alpha, beta, db = two_jobs(tmp_path)
    assert "re-queued 0 failed row(s)" in invoke("retry", str(beta)).output
    assert "re-queued 1 failed row(s)" in invoke("retry", str(alpha)).output


def test_a_store_made_before_the_job_column_gets_it_from_its_runs(tmp_path: Path, sim: ThreadHandle) -> None:
    alpha, beta, db = two_jobs(tmp_path)
    older = tmp_path / "older.sqlite"
    legacy_copy(db, older, until="m005_attempt_costs")  # as an older batchrunner left it
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    older.rename(db)
    report = json.loads(invoke("report", str(db), "--by", "job", "--format", "json").output)  # read-only
    assert {r["job"]: r["requests"] for r in report["rows"]} == {"alpha": 4, "beta": 6}
    assert "results: ok 6" in invoke("status", str(beta)).output
    with Store(db) as store:  # migrates
        assert store.counts("alpha") == {"ok": 3, "failed": 1}
    with sqlite3.connect(db) as conn:
        jobs = dict(conn.execute("SELECT job, count(*) FROM results_view GROUP BY job").fetchall())
    conn.close()
    assert jobs == {"alpha": 4, "beta": 6}
