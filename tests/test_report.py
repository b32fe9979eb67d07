"""Usage and cost reports over real store files, with sums worked out by hand.

Two stores: `alpha` (a.sqlite) and `beta` (nested/b.sqlite). Costs in pico-USD:

    key  store  model         status  finished (UTC day)  in     cached  out   cost
    r1   alpha  qwen-plus     ok      2026-11-01          2000   1024    100   592_320_000
    r2   alpha  qwen-plus     ok      2026-11-02          1000   0       50    460_000_000
    r3   alpha  qwen-plus     failed  2026-11-02          -      -       -     (none, no usage)
    r4   alpha  qwen3.6-plus  ok      2026-11-02          500    0       20    unpriced
    r5   beta   qwen-flash    ok      2026-11-01          10000  0       1000  900_000_000
    r6   beta   qwen-plus     ok      2026-11-02 (+05:00) 3010   3000x   10    136_000_000 (x explicit)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from helpers import merged, spec_text

from batchrunner.errors import StoreError
from batchrunner.pricing import PriceTable
from batchrunner.records import Result
from batchrunner.report import COLUMNS, MONEY, ReportRow, build, collect, render
from batchrunner.store import Store
from batchrunner.wire import Usage

COST_COLUMNS = {
    "cost_pusd": int,
    "cost_usd": float,
    "input_cost_pusd": int,
    "cached_cost_pusd": int,
    "cache_creation_cost_pusd": int,
    "output_cost_pusd": int,
    "saved_pusd": int,
    "price_version": str,
}
PRICES = PriceTable.load()


def result(key: str, model: str, status: str, finished_at: str, usage: Usage | None, explicit: bool = False) -> Result:
    row: dict[str, Any] = {"key": key, "model": model, "status": status, "finished_at": finished_at}
    if usage is None:
        return record(row)
    row.update(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
    )
    if explicit:  # the usage of an explicit-cache hit says so
        usage = dataclasses.replace(usage, raw={"prompt_tokens_details": {"cache_type": "ephemeral"}})
    cost = PRICES.cost(model, usage, thinking=False)
    if cost is not None:
        row.update(
            cost_pusd=cost.total_pusd,
            cost_usd=cost.total_pusd / 1e12,
            input_cost_pusd=cost.input_pusd,
            cached_cost_pusd=cost.cached_pusd,
            cache_creation_cost_pusd=cost.cache_creation_pusd,
            output_cost_pusd=cost.output_pusd,
            saved_pusd=cost.saved_pusd,
            price_version=PRICES.version,
        )
    return record(row)


def record(fields: dict[str, Any]) -> Result:
    """A stored result with the given fields (the rest blank)."""
    blank = dict(row_id=fields["key"], row_index=0, retryable=0, attempts=1, possibly_billed_attempts=0)
    blank.update(latency_ms=1, started_at=fields["finished_at"], endpoint="/x", parameters=None, run_id=1)
    return Result(**{**blank, **fields})


def make_store(path: Path, job: str | None, rows: list[Result]) -> Path:
    """A store made by batchrunner's own Store, with the cost columns added if it lacks them."""
    store = Store(path)
    results = store.db.table("results")
    have = {c.name for c in results.columns}
    for name, kind in COST_COLUMNS.items():
        if name not in have:
            results.add_column(name, kind)
    if job is not None:
        store.start_run(job=job, spec_digest="d", simulated=True, base_url="http://127.0.0.1")
    store.write(rows, [])
    store.close()
    return path


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    a = make_store(
        tmp_path / "a.sqlite",
        "alpha",
        [
            result("r1", "qwen-plus", "ok", "2026-11-01T10:00:00.000+00:00", Usage(2000, 100, cached_tokens=1024)),
            result("r2", "qwen-plus", "ok", "2026-11-02T23:30:00.000+00:00", Usage(1000, 50)),
            result("r3", "qwen-plus", "failed", "2026-11-02T23:31:00.000+00:00", None),
            result("r4", "qwen3.6-plus", "ok", "2026-11-02T08:00:00.000+00:00", Usage(500, 20)),
        ],
    )
    (tmp_path / "nested").mkdir()
    b = make_store(
        tmp_path / "nested" / "b.sqlite",
        "beta",
        [
            result("r5", "qwen-flash", "ok", "2026-11-01T12:00:00.000+00:00", Usage(10_000, 1000)),
            result("r6", "qwen-plus", "ok", "2026-11-03T01:00:00.000+05:00", Usage(3010, 10, cached_tokens=3000), True),
        ],
    )
    return a, b


def by_group(rows: tuple[ReportRow, ...]) -> dict[tuple[str | None, ...], ReportRow]:
    return {r.group: r for r in rows}


def assert_reconciles(rows: tuple[ReportRow, ...], totals: ReportRow) -> None:
    for name in ("requests", "ok", "failed", "input_tokens", "output_tokens", "cached_tokens", "unpriced_requests"):
        assert getattr(totals, name) == sum(getattr(r, name) for r in rows), name
    for name in MONEY.values():
        assert getattr(totals, name) == sum(getattr(r, name) or 0 for r in rows), name


# --------------------------------------------------------------------------- the sums


def test_hand_computed_row_costs() -> None:
    costs = [
        result("r1", "qwen-plus", "ok", "", Usage(2000, 100, cached_tokens=1024)).cost_pusd,
        result("r2", "qwen-plus", "ok", "", Usage(1000, 50)).cost_pusd,
        result("r5", "qwen-flash", "ok", "", Usage(10_000, 1000)).cost_pusd,
        result("r6", "qwen-plus", "ok", "", Usage(3010, 10, cached_tokens=3000), True).cost_pusd,
    ]
    assert costs == [592_320_000, 1000 * 400_000 + 50 * 1_200_000, 10_000 * 50_000 + 1000 * 400_000, 136_000_000]


def test_by_model(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["model"])
    assert [r.group for r in report.rows] == [("qwen-flash",), ("qwen-plus",), ("qwen3.6-plus",)]
    rows = by_group(report.rows)
    plus = rows[("qwen-plus",)]
    assert (plus.requests, plus.ok, plus.failed, plus.unpriced_requests) == (4, 3, 1, 0)
    assert (plus.input_tokens, plus.cached_tokens, plus.output_tokens) == (6010, 4024, 160)
    assert plus.cost_pusd == 592_320_000 + 460_000_000 + 136_000_000
    assert plus.cached_cost_pusd == 81_920_000 + 120_000_000
    assert plus.saved_pusd == 327_680_000 + 1_080_000_000
    assert plus.cache_hit_rate == Decimal("0.6696")  # 4024 / 6010
    unpriced = rows[("qwen3.6-plus",)]
    assert (unpriced.requests, unpriced.unpriced_requests, unpriced.cost_pusd, unpriced.input_tokens) == (
        1,
        1,
        None,
        500,
    )
    totals = report.totals
    assert totals.cost_pusd == 1_188_320_000 + 900_000_000
    assert (totals.requests, totals.ok, totals.failed, totals.unpriced_requests) == (6, 5, 1, 1)
    assert_reconciles(report.rows, totals)


def test_by_job(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["job"])
    rows = by_group(report.rows)
    assert list(rows) == [("alpha",), ("beta",)]
    assert rows[("alpha",)].cost_pusd == 592_320_000 + 460_000_000
    assert rows[("alpha",)].requests == 4 and rows[("alpha",)].unpriced_requests == 1
    assert rows[("beta",)].cost_pusd == 900_000_000 + 136_000_000
    assert_reconciles(report.rows, report.totals)


def test_by_day_uses_the_utc_date(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["day"])
    rows = by_group(report.rows)
    assert list(rows) == [("2026-11-01",), ("2026-11-02",)]  # r6 finished 2026-11-02T20:00Z
    assert rows[("2026-11-01",)].requests == 2
    assert rows[("2026-11-01",)].cost_pusd == 592_320_000 + 900_000_000
    assert rows[("2026-11-02",)].requests == 4
    assert rows[("2026-11-02",)].cost_pusd == 460_000_000 + 136_000_000


def test_by_status(stores: tuple[Path, Path]) -> None:
    rows = by_group(build(list(stores), ["status"]).rows)
    assert (rows[("ok",)].requests, rows[("failed",)].requests) == (5, 1)
    assert rows[("failed",)].cost_pusd is None and rows[("failed",)].unpriced_requests == 0


def test_combined_keys_keep_their_order(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["job", "model"])
    assert report.by == ("job", "model")
    assert [r.group for r in report.rows] == [
        ("alpha", "qwen-plus"),
        ("alpha", "qwen3.6-plus"),
        ("beta", "qwen-flash"),
        ("beta", "qwen-plus"),
    ]
    swapped = build(list(stores), ["day", "status", "model"])
    rows = by_group(swapped.rows)
    assert rows[("2026-11-02", "ok", "qwen-plus")].requests == 2
    assert rows[("2026-11-02", "failed", "qwen-plus")].requests == 1
    assert_reconciles(swapped.rows, swapped.totals)


def test_no_grouping_gives_one_row(stores: tuple[Path, Path]) -> None:
    report = build(list(stores))
    assert [r.group for r in report.rows] == [()]
    assert report.rows[0] == report.totals


def test_since_and_until_are_inclusive(stores: tuple[Path, Path]) -> None:
    day2 = date(2026, 11, 2)
    report = build(list(stores), ["model"], since=day2, until=day2)
    assert report.totals.requests == 4
    assert report.totals.cost_pusd == 460_000_000 + 136_000_000
    assert build(list(stores), [], since=date(2026, 11, 3)).totals.requests == 0
    assert build(list(stores), [], until=date(2026, 11, 1)).totals.requests == 2


def test_totals_reconcile_exactly_across_two_stores(stores: tuple[Path, Path], tmp_path: Path) -> None:
    # Prices with many decimals, so every USD figure has all twelve decimal places in use.
    odd = PriceTable.load([{"models": {"odd": {"tiers": [{"input": "0.123457", "output": "0.987653"}]}}}])
    rows = []
    for i in range(50):
        usage = Usage(1000 + 37 * i, 13 * i + 1, cached_tokens=7 * i)
        cost = odd.cost("odd", usage, thinking=False)
        assert cost is not None
        rows.append(
            record(
                {"key": f"k{i}", "model": "odd", "status": "ok", "finished_at": f"2026-11-{1 + i % 20:02d}T00:00:00Z"}
                | {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
                | {
                    "cached_tokens": usage.cached_tokens,
                    "cost_pusd": cost.total_pusd,
                    "input_cost_pusd": cost.input_pusd,
                }
                | {
                    "cached_cost_pusd": cost.cached_pusd,
                    "output_cost_pusd": cost.output_pusd,
                    "saved_pusd": cost.saved_pusd,
                }
            )
        )
    extra = make_store(tmp_path / "odd.sqlite", "odd", rows)
    report = build([*stores, extra], ["day", "model"])
    assert_reconciles(report.rows, report.totals)
    parsed = json.loads(render(report, "json"))
    for column in MONEY:
        total = Decimal(parsed["totals"][column])
        assert total == sum(Decimal(r[column]) for r in parsed["rows"] if r[column] is not None), column
    table = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert sum(Decimal(r["cost_usd"]) for r in table if r["cost_usd"]) == Decimal(parsed["totals"]["cost_usd"])


# --------------------------------------------------------------------------- finding and opening stores


def test_collect_files_folders_and_specs(stores: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = stores
    spec = tmp_path / "alpha.toml"
    spec.write_text(spec_text(merged({"job": {"name": "alpha", "db": "a.sqlite"}})), encoding="utf-8")
    assert collect([tmp_path]) == [a, b]
    assert collect([spec, b, a]) == [a.resolve(), b]
    assert collect([tmp_path / "nested", b]) == [b]
    assert build([spec], ["job"]).totals.requests == 4


def test_collect_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        collect([tmp_path / "missing.sqlite"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no \\*.sqlite stores"):
        collect([tmp_path / "empty"])
    spec = tmp_path / "job.toml"
    spec.write_text(spec_text(merged({"job": {"name": "job", "db": "never.sqlite"}})), encoding="utf-8")
    with pytest.raises(StoreError, match="does not exist yet"):
        collect([spec])


def test_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    db = sqlite_utils.Database(other)
    db["t"].insert({"x": 1})
    db.close()
    with pytest.raises(StoreError, match="not a batchrunner store"):
        build([other])
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="junk.sqlite: cannot"):
        build([junk])


def test_an_old_store_without_cost_columns_or_runs(tmp_path: Path) -> None:
    old = tmp_path / "old-job.sqlite"
    db = sqlite_utils.Database(old)
    db["results"].insert_all(
        [
            {
                "key": "a",
                "status": "ok",
                "model": "qwen-plus",
                "finished_at": "2026-01-01T00:00:00Z",
                "input_tokens": 10,
            },
            {"key": "b", "status": "failed", "model": "qwen-plus", "finished_at": "2026-01-01T00:00:00Z"},
        ],
        pk="key",
    )
    db.close()
    report = build([old], ["job", "model"])
    (row,) = report.rows
    assert row.group == ("old-job", "qwen-plus")
    assert (row.requests, row.ok, row.failed, row.unpriced_requests, row.cost_pusd) == (2, 1, 1, 1, None)
    assert report.price_versions == ()
    (rendered,) = json.loads(render(report, "json"))["rows"]  # renders without cost columns
    assert (rendered["requests"], rendered["cost_usd"], rendered["unpriced_requests"]) == (2, None, 1)


def test_stores_are_opened_read_only(stores: tuple[Path, Path]) -> None:
    for path in stores:
        path.chmod(0o444)
    before = [p.read_bytes() for p in stores]
    assert build(list(stores), ["model"]).totals.requests == 6
    assert [p.read_bytes() for p in stores] == before


def test_unknown_group_key(stores: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="cannot group by region"):
        build(list(stores), ["region"])


# --------------------------------------------------------------------------- formats


def test_every_format_names_the_columns_alike(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["model"])
    csv_header = render(report, "csv").splitlines()[0].split(",")
    json_columns = list(json.loads(render(report, "json"))["rows"][0])
    markdown_header = [c.strip() for c in render(report, "markdown").splitlines()[0].strip("|").split("|")]
    table_header = render(report, "table").splitlines()[0].split()
    assert csv_header == json_columns == markdown_header
    assert table_header == [c for c in csv_header if c in table_header]  # the same names, zero columns left out
    assert "input_tokens" in table_header and "input_cost_usd" in table_header


def test_table(stores: tuple[Path, Path]) -> None:
    text = render(build(list(stores), ["model"]), "table")
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:6] == ["model", "requests", "ok", "failed", "input_tokens", "output_tokens"]
    assert "image_tokens" not in header and "reasoning_tokens" not in header  # zero everywhere: hidden
    assert {"cache_hit_rate", "cost_usd", "output_cost_usd", "unpriced_requests"} <= set(header)
    assert any(line.startswith("qwen-plus ") and "0.001188" in line for line in lines)
    assert any(line.startswith("qwen3.6-plus ") and " - " in line for line in lines)
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert "0.002088" in total and "16,510" in total  # thousands separators in the terminal
    assert "1 request(s) used tokens but have no recorded cost" in text
    table = lines[: lines.index("")]
    assert len({len(line) for line in table}) == 1  # every column padded, numbers right-aligned
    assert [line.startswith("-") for line in table] == [False, True, False, False, False, True, False]


def test_table_without_grouping_is_one_total_line(stores: tuple[Path, Path]) -> None:
    lines = render(build(list(stores)), "table").splitlines()
    assert lines[2].startswith("TOTAL") and lines[3] == ""


def test_csv(stores: tuple[Path, Path]) -> None:
    rows = list(csv.DictReader(io.StringIO(render(build(list(stores), ["job", "model"]), "csv"))))
    assert list(rows[0]) == ["job", "model", *COLUMNS]
    first = rows[0]
    assert (first["job"], first["model"], first["requests"]) == ("alpha", "qwen-plus", "3")
    assert first["cost_usd"] == "0.001052320000"
    assert first["cache_hit_rate"] == "0.3413"  # 1024 / 3000
    unpriced = rows[1]
    assert (unpriced["model"], unpriced["cost_usd"], unpriced["unpriced_requests"]) == ("qwen3.6-plus", "", "1")
    assert len(rows) == 4  # group rows only


def test_json(stores: tuple[Path, Path]) -> None:
    report = build(list(stores), ["model"], since=date(2026, 11, 1))
    doc = json.loads(render(report, "json"))
    assert doc["by"] == ["model"] and doc["since"] == "2026-11-01" and doc["until"] is None
    assert doc["price_versions"] == ["2026-11-27"]
    assert len(doc["stores"]) == 2
    plus = next(r for r in doc["rows"] if r["model"] == "qwen-plus")
    assert plus["cost_usd"] == "0.001188320000"
    assert plus["cache_saved_usd"] == "0.001407680000"
    assert plus["cache_hit_rate"] == 0.6696
    assert plus["requests"] == 4 and plus["input_tokens"] == 6010
    assert next(r for r in doc["rows"] if r["model"] == "qwen3.6-plus")["cost_usd"] is None
    assert doc["totals"]["cost_usd"] == "0.002088320000"
    assert doc["totals"]["model"] is None and doc["totals"]["unpriced_requests"] == 1


def test_markdown(stores: tuple[Path, Path]) -> None:
    lines = render(build(list(stores), ["status"]), "markdown").splitlines()
    assert lines[0].startswith("| status | requests | ok | failed | input_tokens |")
    assert lines[1].startswith("| --- | ---: | ---: |")
    assert lines[2].startswith("| failed | 1 | 0 | 1 | 0 |")
    assert lines[-1].startswith("| **TOTAL** | 6 | 5 | 1 | 16510 |")
    assert "0.002088" in lines[-1]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_empty_report_renders_in_every_format(tmp_path: Path) -> None:
    report = build([make_store(tmp_path / "none.sqlite", "none", [])], ["model"])
    assert report.rows == () and report.totals.cost_pusd is None
    assert render(report, "csv").splitlines() == [",".join(["model", *COLUMNS])]
    doc = json.loads(render(report, "json"))
    assert doc["rows"] == [] and doc["totals"]["requests"] == 0
    total = [line for line in render(report, "table").splitlines() if line.startswith("TOTAL")]
    assert [line.split()[:2] for line in total] == [["TOTAL", "0"]]
    assert any(line.startswith("| **TOTAL** | 0 |") for line in render(report, "markdown").splitlines())
    with pytest.raises(ValueError, match="unknown report format"):
        render(report, "xml")  # type: ignore[arg-type]
