"""Displays that tell the truth: a resumed run starts its bar at the rows already done and says
so once, the postfix fits the terminal's width, and the rate counts only this run's answers."""

from __future__ import annotations

import io
import logging
import sqlite3
from pathlib import Path

import pytest
from helpers import Clock, read_table, write_job

from batchrunner import Progress, pending, run_job
from batchrunner.progress import BarProgress, LogProgress, fit
from batchrunner.records import Result, RunCounts
from batchrunner.simulator import ThreadHandle

FIELDS = [
    ("ETA 12m30s", "~12m30s"),
    ("cost=0.0123 USD", "$0.0123"),
    ("failed=3", "fail=3"),
    ("tokens=1,234,567", "tok=1.2M"),
    ("47.2 rows/s", "47/s"),
    ("ok=1,739", "ok=1.7k"),
    ("retries=12", "retry=12"),
]
FULL = ", ".join(full for full, _ in FIELDS)
ANSWER = Result("k", "r", 0, "ok", 0, 1, 0, 5, "", "", "qwen-plus", "generation", None, 1)


def test_fit_keeps_every_field_whole_when_there_is_room() -> None:
    assert fit(FIELDS, 120) == FULL
    assert fit(FIELDS, None) == FULL
    assert fit(FIELDS, len(FULL)) == FULL


def test_fit_abbreviates_the_least_important_first_then_drops_them() -> None:
    assert len(FULL) > 80
    at_80 = fit(FIELDS, 80)
    assert len(at_80) <= 80
    # the least important fields are abbreviated, the most important kept in full
    assert at_80.startswith("ETA 12m30s, cost=0.0123 USD, failed=3, ")
    assert at_80.endswith("47/s, ok=1.7k, retry=12")
    at_60 = fit(FIELDS, 60)
    assert at_60 == "~12m30s, $0.0123, fail=3, tok=1.2M, 47/s, ok=1.7k, retry=12"
    at_40 = fit(FIELDS, 40)
    assert at_40 == "~12m30s, $0.0123, fail=3, tok=1.2M, 47/s"  # then dropped from the end
    assert fit(FIELDS, 8) == "~12m30s"
    assert fit(FIELDS, 5) == ""  # never a piece of a field


@pytest.mark.parametrize("width", [20, 33, 47, 60, 80, 95, 120])
def test_fit_never_cuts_a_field(width: int) -> None:
    text = fit(FIELDS, width)
    assert len(text) <= width
    shown = text.split(", ") if text else []
    allowed = {form for field in FIELDS for form in field}
    assert all(part in allowed for part in shown)
    kinds = [next(i for i, field in enumerate(FIELDS) if part in field) for part in shown]
    assert kinds == list(range(len(kinds)))  # a prefix of the fields, in their order of importance


def counts_mid_run() -> RunCounts:
    c = RunCounts(ok=1_239, failed=3, retries=12, input_tokens=900_000, output_tokens=334_567)
    c.cost_pusd, c.priced = 12_300_000_000, 1_242  # 0.0123 USD
    return c


def lines_of(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().replace("\n", "\r").split("\r") if line.strip()]


@pytest.mark.parametrize("ncols", [60, 80, 120])
def test_the_bar_fits_the_terminal_and_shows_whole_fields(ncols: int) -> None:
    clock, out, counts = Clock(), io.StringIO(), RunCounts()
    bar = BarProgress("reviews-summary", file=out, ncols=ncols, clock=clock)
    bar.start(3000, counts, done=1739)
    clock.advance(10)
    finished = counts_mid_run()
    for name in ("ok", "failed", "retries", "input_tokens", "output_tokens", "cost_pusd", "priced"):
        setattr(counts, name, getattr(finished, name) - (1 if name == "ok" else 0))
    bar.row_finished(ANSWER)
    counts.ok += 1
    bar.close()
    lines = lines_of(out)
    assert lines[0].startswith("reviews-summary:  58%|") and "1739/3000" in lines[0]
    last = lines[-1]
    assert all(len(line) <= ncols for line in lines), lines
    assert "1740/3000" in last and "…" not in last
    postfix = last.split("[", 1)[1].rstrip("]").split(", ")[1:]  # after the elapsed time
    allowed = {form for field in bar.fields() for form in field}
    assert postfix and all(part in allowed for part in postfix), postfix
    if ncols >= 80:  # ETA, money and failures stay in sight on an 80-column terminal
        assert any(p.startswith(("ETA", "~")) for p in postfix)
        assert any("0.0123" in p for p in postfix)
        assert any(p.startswith("fail") for p in postfix)


def test_the_rate_and_eta_count_only_this_runs_answers() -> None:
    """Rows that needed nothing (settled before, skipped, duplicates) are not throughput."""
    clock, out, counts = Clock(), io.StringIO(), RunCounts()
    bar = BarProgress("t", file=out, ncols=200, clock=clock)
    bar.start(1000, counts, done=500)
    bar.advance(300)  # duplicates and already-done rows of a slice: no time spent on them
    clock.advance(20)
    counts.ok, counts.failed = 95, 5  # 100 answers in 20 s
    for _ in range(100):
        bar.advance(1)
    fields = dict(bar.fields())
    assert "5.0 rows/s" in fields
    assert "ETA 0m20s" in fields  # 100 rows left at 5 rows/s
    lines = LogProgress("t")
    lines.start(1000, counts, done=500)
    lines.advance(400)
    assert lines.done == 900


class Recorder(Progress):
    """What a display is told: where it starts, and every row after."""

    def __init__(self) -> None:
        self.started_at = -1
        self.total = 0
        self.moved = 0

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        self.total, self.started_at = total_rows, done

    def advance(self, n: int) -> None:
        self.moved += n

    def row_finished(self, result: Result) -> None:
        self.moved += 1


@pytest.mark.parametrize(
    ("slice_rows", "survey_slices", "done_before", "line"),
    [
        (40, 100, 170, "170 of 300 rows already done, 130 to send"),  # several slices: a resume point at 120
        (5000, 2, 170, "170 of 300 rows already done, 130 to send"),  # one slice: no resume point
        # The survey stops two slices past the resume point (rows 120..199): rows 250..299, which
        # repeat rows 0..49, are counted when the run reads them.
        (40, 2, 120, "at least 120 of 300 rows already done, at most 180 to send"),
    ],
)
def test_a_resumed_run_starts_at_the_rows_already_done_and_says_so(
    tmp_path: Path,
    sim: ThreadHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    slice_rows: int,
    survey_slices: int,
    done_before: int,
    line: str,
) -> None:
    monkeypatch.setattr(pending, "BATCH_ROWS", slice_rows)
    monkeypatch.setattr(pending, "SURVEY_SLICES", survey_slices)
    rows = [{"id": f"r{i}", "text": f"item number {i % 250}"} for i in range(300)]  # 50 duplicates
    spec = write_job(tmp_path, rows)
    assert run_job(spec, limit=120).counts.ok == 120
    shown = Recorder()
    with caplog.at_level(logging.INFO, logger="batchrunner"):
        second = run_job(spec, progress=shown)
    assert second.exit_code == 0 and second.counts.ok == 130
    assert shown.total == 300 and shown.started_at == done_before
    assert shown.started_at + shown.moved == 300  # no row counted twice, none missed
    said = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert said == [f"t: resuming: {line}"]


def test_a_first_run_reads_nothing_twice_and_says_nothing_of_resuming(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    shown = Recorder()
    with caplog.at_level(logging.INFO, logger="batchrunner"):
        assert run_job(write_job(tmp_path), progress=shown).exit_code == 0
    assert shown.started_at == 0 and shown.moved == 20
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]


class FirstLine(LogProgress):
    """Plain progress lines; keeps the rows done when the first answer of the run came."""

    first_done = -1

    def row_finished(self, result: Result) -> None:
        super().row_finished(result)
        if self.first_done < 0:
            self.first_done = self.done


def test_log_lines_count_the_rows_done_before_the_run(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(200)]
    spec = write_job(tmp_path, rows, {"limits": {"concurrency": 2}})  # the rest is not read at once
    assert run_job(spec, limit=45).counts.ok == 45
    lines = FirstLine("t", every_s=3600)
    with caplog.at_level(logging.INFO, logger="batchrunner"):
        run_job(spec, progress=lines)
    assert lines.first_done == 46  # mid-run: the 45 rows of the first run, and this answer
    (last,) = [r for r in caplog.records if r.name == "batchrunner.progress"]  # the closing line
    assert last.getMessage().startswith("t: 200/200 rows done; this run ok 155, failed 0")


@pytest.mark.sim(fail_rate=0.3, rng_seed=7)
def test_the_output_table_has_each_rows_cost(tmp_path: Path, sim: ThreadHandle) -> None:
    """`cost_usd`: everything paid for the row (all its paid attempts), as the store has it."""
    summary = run_job(write_job(tmp_path))
    table = read_table(summary.output_path)
    assert "cost_usd" in table.columns and "currency" not in table.columns  # batchrunner counts in USD only
    with sqlite3.connect(summary.db_path) as db:
        paid = dict(db.execute("SELECT row_id, total_cost_pusd FROM results_view").fetchall())
        spent = db.execute("SELECT sum(cost_pusd) FROM attempts_view").fetchone()[0]
    costs = {r: float(c) for r, c in zip(table["id"].to_list(), table["cost_usd"].to_list(), strict=True)}  # CSV text
    assert costs.keys() == paid.keys() and all(costs[r] == pytest.approx(paid[r] / 1e12) for r in costs)
    assert all(c > 0 for c in costs.values()) and sum(costs.values()) == pytest.approx(spent / 1e12)
