"""`report --by mode`: usage and cost by how it was bought (online, batch, batch-chat), over a
real store written by batchrunner's own Store. Costs in pico-USD, qwen-plus at 0.4 in / 1.2 out
per million online (implicit-cache hits at 0.08) and half that in batch:

    key  attempt  mode        outcome       in     cached  out   cost
    k1   1        online      ok            2000   1024    100   592_320_000  (976*0.4 + 1024*0.08 + 100*1.2)
    k2   1        batch       ok            3000   -       200   720_000_000  (3000*0.2 + 200*0.6)
    k3   1        batch-chat  ok            1000   -       50    230_000_000  (1000*0.2 + 50*0.6)
    k4   1        batch       invalid_json  500    -       40    124_000_000  (a batch answer not JSON,
    k4   2        online      ok            500    -       30    236_000_000   asked again online)
    k5   1        batch       gave_up       -      -       -     (expired in its batch: no usage)
    k6   1        NULL        ok            100    -       10    52_000_000   (mode not recorded)

Results: k1, k4 and k6 were answered online (k6's mode is NULL, as in a store written before the
column), k2 and k5 (failed) in batch, k3 in batch-chat.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from helpers import invoke_cli

from batchrunner.pricing import PriceTable
from batchrunner.records import Attempt, Result
from batchrunner.report import BY_KEYS, COLUMNS, build, render
from batchrunner.store import Store
from batchrunner.wire import Usage

ONLINE = PriceTable.load()
BATCH = ONLINE.for_batch()
DAY = "2026-11-05T09:00:00.000+00:00"


def priced(usage: Usage, batch: bool) -> dict[str, Any]:
    """The usage and cost columns of an answered attempt, at the price its mode pays."""
    cost = (BATCH if batch else ONLINE).cost("qwen-plus", usage)
    assert cost is not None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "cost_pusd": cost.total_pusd,
        "input_cost_pusd": cost.input_pusd,
        "cached_cost_pusd": cost.cached_pusd,
        "output_cost_pusd": cost.output_pusd,
        "saved_pusd": cost.saved_pusd,
        "price_version": (BATCH if batch else ONLINE).version,
    }


def attempt(key: str, n: int, mode: str, outcome: str, usage: Usage | None) -> Attempt:
    paid = priced(usage, mode != "online") if usage is not None else {}
    return Attempt(key, 1, n, DAY, 5, outcome, model="qwen-plus", mode=mode, **paid)


def result(key: str, mode: str, answer: Attempt) -> Result:
    ok = answer.outcome == "ok"
    fields = {
        name: getattr(answer, name)
        for name in ("input_tokens", "output_tokens", "cached_tokens", "cost_pusd", "input_cost_pusd")
        + ("cached_cost_pusd", "output_cost_pusd", "saved_pusd", "price_version")
    }
    return Result(
        key=key,
        row_id=key,
        row_index=0,
        status="ok" if ok else "failed",
        retryable=0,
        attempts=answer.attempt,
        possibly_billed_attempts=0,
        latency_ms=5,
        started_at=DAY,
        finished_at=DAY,
        model="qwen-plus",
        endpoint="/x",
        parameters=None,
        run_id=1,
        job="mixed",
        mode=mode,
        error_code=None if ok else "BatchExpired",
        **fields,
    )


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    k4_first = attempt("k4", 1, "batch", "invalid_json", Usage(500, 40))
    answers = {
        "k1": attempt("k1", 1, "online", "ok", Usage(2000, 100, cached_tokens=1024)),
        "k2": attempt("k2", 1, "batch", "ok", Usage(3000, 200)),
        "k3": attempt("k3", 1, "batch-chat", "ok", Usage(1000, 50)),
        "k4": attempt("k4", 2, "online", "ok", Usage(500, 30)),
        "k5": attempt("k5", 1, "batch", "gave_up", None),
        "k6": attempt("k6", 1, "online", "ok", Usage(100, 10)),
    }
    modes = {"k1": "online", "k2": "batch", "k3": "batch-chat", "k4": "online", "k5": "batch", "k6": "online"}
    path = tmp_path / "mixed.sqlite"
    with Store(path) as store:
        store.start_run(job="mixed", spec_digest="d", simulated=True, base_url="http://127.0.0.1", mode="auto")
        store.write([result(k, modes[k], a) for k, a in answers.items()], [k4_first, *answers.values()])
    with contextlib.closing(sqlite3.connect(path)) as conn:  # k6 as a row from before the mode column
        for table in ("results", "attempts"):  # a shape like k6's, without the mode
            conn.execute(
                "INSERT INTO shapes (job, mode, model, endpoint, parameters, seeded, price_version) SELECT job, NULL, "
                f"model, endpoint, parameters, seeded, price_version FROM shapes WHERE id = (SELECT shape FROM {table} "
                "WHERE key = 'k6')"
            )
            conn.execute(f"UPDATE {table} SET shape = last_insert_rowid() WHERE key = 'k6'")
        conn.commit()
    return path


def test_the_costs_recorded_are_the_hand_computed_ones(mixed: Path) -> None:
    with contextlib.closing(sqlite3.connect(mixed)) as conn:
        rows = conn.execute("SELECT key, attempt, mode, cost_pusd FROM attempts_view ORDER BY key, attempt").fetchall()
    assert rows == [
        ("k1", 1, "online", 592_320_000),
        ("k2", 1, "batch", 720_000_000),
        ("k3", 1, "batch-chat", 230_000_000),
        ("k4", 1, "batch", 124_000_000),
        ("k4", 2, "online", 236_000_000),
        ("k5", 1, "batch", None),
        ("k6", 1, None, 52_000_000),
    ]


def test_by_mode_sums_each_attempt_in_its_own_mode(mixed: Path) -> None:
    report = build([mixed], ["mode"])
    assert report.by == ("mode",) and "mode" in BY_KEYS
    rows = {r.group: r for r in report.rows}
    assert list(rows) == [("batch",), ("batch-chat",), ("online",)]
    online, batch, chat = rows[("online",)], rows[("batch",)], rows[("batch-chat",)]
    # requests by the mode of the answer kept: k4 (answered online after a batch re-ask) and k6
    # (no mode recorded) are online
    assert (online.requests, online.ok, online.failed) == (3, 3, 0)
    assert (batch.requests, batch.ok, batch.failed) == (2, 1, 1)
    assert (chat.requests, chat.ok, chat.failed) == (1, 1, 0)
    # tokens and money by the mode of each paid attempt: k4's first answer counts in batch
    assert (online.input_tokens, online.output_tokens, online.cached_tokens) == (2600, 140, 1024)
    assert (batch.input_tokens, batch.output_tokens) == (3500, 240)
    assert (chat.input_tokens, chat.output_tokens) == (1000, 50)
    assert online.cost_pusd == 592_320_000 + 236_000_000 + 52_000_000
    assert batch.cost_pusd == 720_000_000 + 124_000_000
    assert chat.cost_pusd == 230_000_000
    assert batch.cached_cost_pusd == 0 and online.cached_cost_pusd == 1024 * 80_000
    assert report.totals.cost_pusd == 1_954_320_000
    assert report.totals.requests == 6 and report.totals.unpriced_requests == 0
    assert report.price_versions == (ONLINE.version, BATCH.version)


def test_mode_combines_with_the_other_keys(mixed: Path) -> None:
    report = build([mixed], ["mode", "status", "job"])
    rows = {r.group: r for r in report.rows}
    assert list(rows) == [
        ("batch", "failed", "mixed"),
        ("batch", "ok", "mixed"),
        ("batch-chat", "ok", "mixed"),
        ("online", "ok", "mixed"),
    ]
    # k4's batch answer is under its row's status (ok) and its own mode (batch)
    assert rows[("batch", "ok", "mixed")].cost_pusd == 720_000_000 + 124_000_000
    assert rows[("batch", "failed", "mixed")].cost_pusd is None
    assert sum(r.cost_pusd or 0 for r in report.rows) == report.totals.cost_pusd


def test_every_format_carries_the_mode(mixed: Path) -> None:
    report = build([mixed], ["mode"])
    table = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert list(table[0]) == ["mode", *COLUMNS]
    assert [(r["mode"], r["requests"], r["cost_usd"]) for r in table] == [
        ("batch", "2", "0.000844000000"),
        ("batch-chat", "1", "0.000230000000"),
        ("online", "3", "0.000880320000"),
    ]
    doc = json.loads(render(report, "json"))
    assert doc["by"] == ["mode"]
    assert {r["mode"]: r["cost_usd"] for r in doc["rows"]} == {
        "batch": "0.000844000000",
        "batch-chat": "0.000230000000",
        "online": "0.000880320000",
    }
    assert doc["totals"]["mode"] is None and doc["totals"]["cost_usd"] == "0.001954320000"
    lines = render(report, "table").splitlines()
    assert lines[0].split()[:3] == ["mode", "requests", "ok"]
    assert [line.split()[0] for line in lines[2:5]] == ["batch", "batch-chat", "online"]
    assert "0.000844" in lines[2] and "0.001954" in lines[6]
    markdown = render(report, "markdown").splitlines()
    assert markdown[0].startswith("| mode | requests |")
    assert markdown[2].startswith("| batch | 2 | 1 | 1 | 3500 |")


def test_the_command_groups_by_mode(mixed: Path) -> None:
    result = invoke_cli("report", str(mixed), "--by", "mode", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {r["mode"]: r["requests"] for r in json.loads(result.output)["rows"]} == {
        "batch": 2,
        "batch-chat": 1,
        "online": 3,
    }
    bad = invoke_cli("report", str(mixed), "--by", "mode,region")
    assert bad.exit_code == 2 and "use model, job, day, status, mode" in bad.output


def test_a_store_without_the_mode_column_is_all_online(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    db = sqlite_utils.Database(old)
    rows = [
        {"key": "a", "status": "ok", "model": "qwen-plus", "finished_at": DAY, "input_tokens": 10, "cost_pusd": 7},
        {"key": "b", "status": "failed", "model": "qwen-plus", "finished_at": DAY},
    ]
    db["results"].insert_all(rows, pk="key")
    db.close()
    (row,) = build([old], ["mode"]).rows
    assert row.group == ("online",)
    assert (row.requests, row.ok, row.failed, row.input_tokens, row.cost_pusd) == (2, 1, 1, 10, 7)
