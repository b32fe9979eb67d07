"""Cost per row, the budget guard and its resume, and `estimate`, against the simulator."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import query, write_job

from batchrunner import SpecError, load_spec, run_job
from batchrunner.cli import cli
from batchrunner.estimate import estimate
from batchrunner.runner import load_prices
from batchrunner.simulator import ThreadHandle

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(20)]
MILLION = 10**6  # pico-USD per token for a price of 1 USD per million tokens


def results(db: Path, columns: str) -> list[tuple]:
    return query(db, f"SELECT {columns} FROM results_view ORDER BY row_index")


def test_each_row_carries_its_cost(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS), handle_signals=False)
    rows = results(summary.db_path, "input_tokens, cached_tokens, output_tokens, cost_pusd, cost_usd, price_version")
    assert len(rows) == 20
    for inp, cached, out, pusd, usd, version in rows:
        assert cached == 0
        assert pusd == inp * Fraction("0.4") * MILLION + out * Fraction("1.2") * MILLION  # qwen-plus, first tier
        assert usd == pytest.approx(pusd / 1e12)
        assert version == "2026-11-27"
    assert summary.counts.cost_pusd == sum(r[3] for r in rows)
    ((run_cost,),) = query(summary.db_path, "SELECT cost_usd FROM runs")
    assert run_cost == pytest.approx(summary.counts.cost_pusd / 1e12)


def test_thinking_output_is_priced_at_the_thinking_price(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS[:3], {"parameters": {"enable_thinking": True}}), handle_signals=False)
    rows = results(summary.db_path, "input_tokens, output_tokens, reasoning_tokens, cost_pusd")
    assert len(rows) == 3
    for inp, out, reasoning, pusd in rows:
        assert reasoning > 0
        assert pusd == inp * Fraction("0.4") * MILLION + out * 4 * MILLION


def test_a_model_without_a_price_is_never_costed_at_zero(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS[:3], {"model": {"name": "qwen3.6-plus"}}), handle_signals=False)
    assert summary.exit_code == 0
    assert {r for r in results(summary.db_path, "cost_pusd, cost_usd")} == {(None, None)}
    with pytest.raises(SpecError, match="has no price in the price table .*; add it under"):
        no_thinking = {"enable_thinking": False}  # a budget needs thinking bounded
        spec = write_job(tmp_path / "b", ROWS[:3], {"model": {"name": "qwen3.6-plus"}, "parameters": no_thinking})
        run_job(spec, max_cost_usd=1.0)


def test_spec_pricing_overrides_the_shipped_table(tmp_path: Path, sim: ThreadHandle) -> None:
    pricing = {"models": {"qwen3.6-plus": {"tiers": [{"input": 1.0, "output": 2.0}]}}}
    spec = write_job(tmp_path, ROWS[:3], {"model": {"name": "qwen3.6-plus"}, "pricing": pricing})
    summary = run_job(spec, handle_signals=False)
    rows = results(summary.db_path, "input_tokens, output_tokens, cost_pusd, price_version")
    assert len(rows) == 3
    for inp, out, pusd, version in rows:
        assert pusd == (inp * 1 + out * 2) * MILLION and version.endswith("+overrides")


def test_budget_stop_exits_4_and_resumes(tmp_path: Path, sim: ThreadHandle) -> None:
    # each request: ~25 input tokens at 0.4 + up to 32 output at 1.2 per million, i.e. < 5e-5 USD
    spec = write_job(tmp_path, ROWS, {"limits": {"concurrency": 4}, "parameters": {"enable_thinking": False}})
    summary = run_job(spec, handle_signals=False, max_cost_usd=0.0002)
    assert summary.exit_code == 4 and summary.status == "budget"
    assert "budget stop: max_cost_usd (0.000200 USD for the job) could be exceeded" in summary.message
    assert "USD left" in summary.message
    done = summary.counts.ok
    assert 0 < done < 20
    assert summary.counts.cost_pusd <= 200 * MILLION  # never over the limit
    assert summary.table == {"ok": done, "pending": 20 - done}
    assert query(summary.db_path, "SELECT status, exit_code FROM runs") == [("budget", 4)]
    # a rerun without the limit sends only what is left
    sim.sim.reset()
    summary = run_job(spec, handle_signals=False)
    assert summary.exit_code == 0 and summary.counts.sent == 20 - done
    assert sim.sim.stats()["requests"] == 20 - done


def test_max_requests_and_max_tokens_per_run(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS, {"limits": {"max_requests": 5}}), handle_signals=False)
    assert summary.exit_code == 4 and summary.counts.attempts == 5 and "max_requests (5)" in summary.message
    summary = run_job(write_job(tmp_path / "t", ROWS, {"limits": {"max_tokens_total": 300}}), handle_signals=False)
    assert summary.exit_code == 4 and "max_tokens_total (300)" in summary.message
    assert summary.counts.input_tokens + summary.counts.output_tokens <= 300


def test_max_cost_needs_max_tokens(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="max_cost_usd needs \\[parameters\\] max_tokens"):
        load_spec(write_job(tmp_path, ROWS, {"limits": {"max_cost_usd": 1.0}, "parameters": {"max_tokens": None}}))


def test_cli_max_cost_exit_code(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS, {"parameters": {"enable_thinking": False}})
    result = CliRunner().invoke(cli, ["run", str(spec), "--max-cost", "0.0001"])
    assert result.exit_code == 4
    assert "budget stop" in result.output and "cost 0.0000" in result.output


def test_estimate_before_and_after_part_of_a_run(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS, {"limits": {"requests_per_minute": 600}})
    spec = load_spec(spec_path)
    before = estimate(spec, load_prices(spec))
    assert (before.requests_total, before.requests_remaining, before.requests_done) == (20, 20, 0)
    assert before.tokenizer.startswith("exact: Qwen tokenizer")
    assert before.output_tokens_worst == 32 * 20 and before.output_tokens_expected == 32 * 20
    # the worst case is what a budget reserves: the input bound, and (enable_thinking unset: the
    # model may think by default) the thinking output price
    assert before.input_tokens_bound is not None and before.input_tokens_bound > before.input_tokens
    worst = (before.input_tokens_bound * 0.4 + before.output_tokens_worst * 4.0) / 1e6
    assert before.cost_worst_usd == pytest.approx(worst)
    assert before.duration_s == pytest.approx(20 / (600 * 0.985 / 60))
    assert sim.sim.stats()["requests"] == 0  # sends nothing
    summary = run_job(spec_path, handle_signals=False, limit=8)
    after = estimate(spec, load_prices(spec))
    assert (after.requests_remaining, after.requests_done) == (12, 8)
    ((avg_out,),) = query(summary.db_path, "SELECT avg(output_tokens) FROM results_view")
    assert after.output_tokens_expected == int(avg_out * 12)
    assert after.cost_expected_usd < after.cost_worst_usd
    result = CliRunner().invoke(cli, ["estimate", str(spec_path), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)["requests_remaining"] == 12
    text = CliRunner().invoke(cli, ["estimate", str(spec_path)]).output
    assert "12 of 20 requests to send" in text and "worst case" in text


def test_estimate_exact_counts_match_a_hand_count(tmp_path: Path) -> None:
    from dashscope.tokenizers import get_tokenizer

    spec = load_spec(write_job(tmp_path, ROWS[:1], {"prompt": {"system": None}}))
    result = estimate(spec, load_prices(spec))
    tokens = len(get_tokenizer("qwen-plus").encode("Say something about item number 0"))
    assert result.input_tokens == tokens + 5 + 3  # one message's template, plus the reply's opening


def test_report_command_over_two_jobs(tmp_path: Path, sim: ThreadHandle) -> None:
    a = run_job(write_job(tmp_path / "a", ROWS[:5]), handle_signals=False)
    b = run_job(write_job(tmp_path / "b", ROWS[5:9], {"job": {"name": "other"}}), handle_signals=False)
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--by", "job", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_job = {row["job"]: row for row in data["rows"]}
    assert by_job["t"]["requests"] == 5 and by_job["other"]["requests"] == 4
    total = Fraction(data["totals"]["cost_usd"])
    assert total == Fraction(a.counts.cost_pusd + b.counts.cost_pusd, 10**12)
    assert total == sum(Fraction(r["cost_usd"]) for r in data["rows"])
    bad = CliRunner().invoke(cli, ["report", str(tmp_path), "--by", "colour"])
    assert bad.exit_code == 2 and "unknown group" in bad.output
