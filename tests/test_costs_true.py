"""Costs are told truly: every paid attempt is counted, an unpriced model or region is never
shown as costing 0, the usage decides the cache price, and the attempt log says what happened."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import write_job

from batchrunner import run_job
from batchrunner.cli import cli
from batchrunner.report import build, render
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.simulator.cache import PrefixCache

FRUIT = ["kiwi", "plum", "pear", "fig", "lime", "date"]
ROWS = [{"id": f"r{i}", "text": name} for i, name in enumerate(FRUIT)]
MILLION = 10**6  # pico-USD per token for a price of 1 USD per million tokens


@pytest.fixture
def sim(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    config = getattr(request, "param", SimulatorConfig())
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-true-costs")
        yield handle


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def report_total(db: Path) -> Fraction:
    return Fraction(json.loads(render(build([db]), "json"))["totals"]["cost_usd"])


# ----------------------------------------------------------------- item 8: every paid attempt counts


def test_every_paid_attempt_is_counted_in_report_runs_and_the_row(tmp_path: Path, sim: ThreadHandle) -> None:
    # The simulator answers in sentences, never JSON: each row is asked 3 times, each answer paid.
    spec = write_job(tmp_path, ROWS[:3], {"output": {"parse_json": True, "json_retries": 2}})
    first = run_job(spec, handle_signals=False)
    db = first.db_path
    assert first.table == {"failed": 3}
    outcomes = query(db, "SELECT key, group_concat(outcome, ',') FROM attempts_view GROUP BY key")
    assert {o for _, o in outcomes} == {"invalid_json,invalid_json,failed"}
    paid = query(db, "SELECT sum(cost_pusd), count(cost_pusd) FROM attempts_view")[0]
    assert paid[1] == 9 and paid[0] == first.counts.cost_pusd
    for cost, total in query(db, "SELECT cost_pusd, total_cost_pusd FROM results_view"):
        assert total == 3 * cost  # the same answer, paid three times
    assert report_total(db) == Fraction(paid[0], 10**12)

    second = run_job(spec, handle_signals=False, retry_failed=True)  # sent and paid again
    all_paid = query(db, "SELECT sum(cost_pusd) FROM attempts_view")[0][0]
    assert all_paid == first.counts.cost_pusd + second.counts.cost_pusd
    assert report_total(db) == Fraction(all_paid, 10**12)
    for cost, total in query(db, "SELECT cost_pusd, total_cost_pusd FROM results_view"):
        assert total == 6 * cost  # its own total, across both runs
    runs = json.loads(CliRunner().invoke(cli, ["runs", str(spec), "--format", "json"]).output)
    assert [r["paid_pusd"] for r in runs] == [first.counts.cost_pusd, second.counts.cost_pusd]


# ----------------------------------------------------------------- item 11: unpriced is never 0


def test_an_unpriced_model_shows_unpriced_and_is_warned_about(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    spec = write_job(tmp_path, ROWS[:2], {"model": {"name": "qwen-plsu"}})
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        summary = run_job(spec, handle_signals=False)
    warning = next(r.getMessage() for r in caplog.records if "has no price" in r.getMessage())
    assert "'qwen-plsu'" in warning and "did you mean qwen-plus" in warning
    assert "cost unpriced" in summary.line() and "0.000000" not in summary.line()
    assert summary.fields()["cost_usd"] is None
    text = CliRunner().invoke(cli, ["runs", str(spec)]).output
    assert text.splitlines()[1].split()[-1] == "unpriced"
    assert query(summary.db_path, "SELECT cost_usd FROM runs") == [(None,)]


# ----------------------------------------------------------------- item 12: region and currency


def test_region_cn_is_not_costed_with_singapore_prices(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    spec = write_job(tmp_path, ROWS[:2], {"api": {"region": "cn"}})
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        summary = run_job(spec, handle_signals=False)
    assert any("region 'cn'" in r.getMessage() and "Singapore" in r.getMessage() for r in caplog.records)
    assert query(summary.db_path, "SELECT DISTINCT cost_pusd FROM attempts_view") == [(None,)]
    assert "cost unpriced" in summary.line()
    # Prices the user gives (in USD) are used, and the report says its currency.
    pricing = {"models": {"qwen-plus": {"tiers": [{"input": 1.0, "output": 2.0}]}}}
    priced = run_job(
        write_job(tmp_path / "b", ROWS[:2], {"api": {"region": "cn"}, "pricing": pricing}), handle_signals=False
    )
    for inp, out, cost, version in query(
        priced.db_path, "SELECT input_tokens, output_tokens, cost_pusd, price_version FROM results_view"
    ):
        assert cost == (inp + 2 * out) * MILLION and "region cn" in version
    report = build([priced.db_path])
    assert json.loads(render(report, "json"))["currency"] == "USD"
    assert "Money in USD" in render(report, "table")


# ----------------------------------------------------------------- item 13: the usage decides the cache price


def test_implicit_hits_on_an_explicitly_cached_job_are_priced_as_implicit(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service answers these from the implicit cache (usage without cache_type).
    def implicit(self: PrefixCache, model: str, messages: Any, counts: Any, input_tokens: int) -> dict[str, Any]:
        return {"cached_tokens": input_tokens // 2}

    monkeypatch.setattr(PrefixCache, "details", implicit)
    summary = run_job(write_job(tmp_path, ROWS[:3], {"prompt": {"cache": "system"}}), handle_signals=False)
    rows = query(summary.db_path, "SELECT cached_tokens, cached_cost_pusd FROM results_view")
    assert rows and all(cached > 0 for cached, _ in rows)
    for cached, cost in rows:
        assert cost == cached * Fraction("0.08") * MILLION  # 20% of 0.4, not the explicit 10%


# ----------------------------------------------------------------- item 16: the attempt log


FAULTS = SimulatorConfig(
    faults=(
        FaultRule("kiwi", ("always:500",)),
        FaultRule("plum", ("always:InvalidParameter",)),
        FaultRule("pear", ("drop",)),
    )
)


@pytest.mark.parametrize("sim", [FAULTS], indirect=True)
def test_the_attempt_log_says_what_happened(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:4], {"limits": {"max_retries": 1}})
    summary = run_job(spec, handle_signals=False)
    log = {
        row_id: outcomes
        for row_id, outcomes in query(
            summary.db_path,
            "SELECT r.row_id, group_concat(a.outcome || ':' || a.possibly_billed, ',') FROM attempts_view a "
            "JOIN results_view r ON r.key = a.key GROUP BY r.row_id ORDER BY r.row_id",
        )
    }
    assert log == {
        "r0": "retry:0,gave_up:0",  # 500 twice: the row failed, the last attempt says so
        "r1": "failed:0",  # a 4xx about this request
        "r2": "retry:1,ok:0",  # dropped after sending (maybe billed), then answered (billed exactly)
        "r3": "ok:0",
    }
    billed = query(summary.db_path, "SELECT row_id, possibly_billed_attempts FROM results_view ORDER BY row_id")
    assert billed == [("r0", 0), ("r1", 0), ("r2", 1), ("r3", 0)]
    answered = query(summary.db_path, "SELECT count(*) FROM attempts_view WHERE outcome = 'ok' AND cost_pusd IS NULL")
    assert answered == [(0,)]


def test_requests_refused_by_the_budget_are_not_counted_as_sent(tmp_path: Path, sim: ThreadHandle) -> None:
    limits = {"concurrency": 4, "max_requests": 3}
    summary = run_job(write_job(tmp_path, ROWS, {"limits": limits}), handle_signals=False)
    assert summary.exit_code == 4
    assert summary.counts.sent == summary.counts.attempts == 3
    assert query(summary.db_path, "SELECT sent FROM runs") == [(3,)]
    assert query(summary.db_path, "SELECT count(DISTINCT key) FROM attempts_view") == [(3,)]


# ----------------------------------------------------------------- stores written before per-attempt costs


def test_m005_moves_each_rows_cost_to_its_last_answer(tmp_path: Path) -> None:
    import sqlite_utils

    from batchrunner.store import Store
    from batchrunner.store.migrations import MIGRATIONS

    path = tmp_path / "old.sqlite"
    db = sqlite_utils.Database(path)
    for step in MIGRATIONS[:4]:  # the schema as it was before m005_attempt_costs
        step(db)
    done = [{"name": s.__name__, "applied_at": "2026-01-01"} for s in MIGRATIONS[:4]]
    db["_batchrunner_migrations"].insert_all(done, pk="name")
    usage = json.dumps({"input_tokens": 20, "output_tokens": 10})
    answered = {"key": "k", "run_id": 1, "usage": usage, "possibly_billed": 1, "http_status": 200}
    db["attempts"].insert_all(
        [
            {**answered, "attempt": 1, "outcome": "ok"},  # the old log of an answer re-asked for JSON
            {"key": "k", "run_id": 1, "attempt": 1, "outcome": "invalid_json", "possibly_billed": 0},
            {**answered, "attempt": 2, "outcome": "ok"},
        ]
    )
    db["results"].insert({"key": "k", "status": "ok", "run_id": 1, "model": "qwen-plus", "cost_pusd": 20_000_000})
    db["runs"].insert({"id": 1, "job": "old", "status": "finished", "cost_usd": 4e-5, "started_at": "2026-01-01"})
    db.close()
    Store(path).close()  # migrates
    rows = query(path, "SELECT attempt, outcome, possibly_billed, model, input_tokens, cost_pusd FROM attempts_view")
    assert rows == [
        (1, "ok", 0, "qwen-plus", 20, None),  # its tokens are known, its cost never was
        (1, "invalid_json", 0, "qwen-plus", None, None),
        (2, "ok", 0, "qwen-plus", 20, 20_000_000),  # the row's recorded cost
    ]
    assert query(path, "SELECT total_cost_pusd FROM results_view") == [(20_000_000,)]
    report = build([path])
    assert report.totals.cost_pusd == 20_000_000 and report.totals.unpriced_requests == 1
    with Store(path, readonly=True) as store:
        from batchrunner.status import run_cost

        assert run_cost(store.runs()[0]) == "0.000040"  # the old run's own tally counted both answers
