"""The budget is a true upper bound: of the job over all its runs, and of each run.

Every job here is built to beat a weak bound: prompts dense in digits, punctuation or CJK text
(which a bytes/3 estimate undercounts against the Qwen tokenizer or the simulator's), outputs
that always run to max_tokens, the explicit cache's 125% creation price, and thinking output.
The money spent is read back from the store (the sum of every attempt's recorded cost) and must
never pass the limit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_job

from batchrunner import SpecError, load_spec, run_job
from batchrunner.attempts import Policy
from batchrunner.cli import cli
from batchrunner.pricing import PriceTable, usd_to_pusd
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread

NO_THINKING = {"enable_thinking": False, "max_tokens": 8}
TEXTS = {
    "digits": "1,514 2,332.55 99-88-77 3.14159265358979 0x1f2e3d; " * 12,
    "punctuation": '!!! ... --- *** ??? ((( ))) :// ``` == {"a": [1, 2]} ' * 10,
    "chinese": "我们今天讨论的是人工智能在医疗领域的应用，以及它对社会的影响。" * 8,
    "english": "The quick brown fox jumps over the lazy dog near the river bank. " * 10,
}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-budget")
        yield handle


def spent(db: Path, run_id: int | None = None) -> int:
    """Pico-USD the store's attempts cost (of one run, or of all)."""
    where = "" if run_id is None else f" WHERE run_id = {int(run_id)}"
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT coalesce(sum(cost_pusd), 0) FROM attempts_view{where}").fetchone()[0])


def rows_of(text: str, n: int = 40) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"{i}: {text}"} for i in range(n)]


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_dense_prompts_never_pass_the_budget(tmp_path: Path, sim: ThreadHandle, kind: str) -> None:
    limits = {"concurrency": 32, "max_cost_usd": 0.0004}
    spec = write_job(tmp_path, rows_of(TEXTS[kind]), {"parameters": NO_THINKING, "limits": limits})
    summary = run_job(spec, handle_signals=False)
    assert summary.exit_code == 4, summary.message
    assert 0 < spent(summary.db_path) <= usd_to_pusd(0.0004)
    assert summary.counts.cost_pusd == spent(summary.db_path)


def test_explicit_cache_creation_and_thinking_are_in_the_worst_case(tmp_path: Path, sim: ThreadHandle) -> None:
    # A system prompt long enough for the explicit cache: the first request pays 125% on it.
    system = "Answer as a careful, precise assistant. " * 200
    thinking = {"enable_thinking": True, "thinking_budget": 24, "max_tokens": 8, "stream": True}
    overrides = {
        "prompt": {"system": system, "cache": "system"},
        "parameters": thinking,
        "limits": {"concurrency": 8, "max_cost_usd": 0.004},
    }
    summary = run_job(write_job(tmp_path, rows_of("item", 30), overrides), handle_signals=False)
    assert summary.exit_code == 4, summary.message
    with sqlite3.connect(summary.db_path) as conn:
        created, reasoning = conn.execute(
            "SELECT sum(cache_creation_cost_pusd > 0), sum(reasoning_tokens) FROM attempts_view"
        ).fetchone()
    assert created >= 1 and reasoning > 0  # both dearer prices really applied
    assert spent(summary.db_path) <= usd_to_pusd(0.004)


def test_each_attempt_stays_under_its_reservation(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": kind, "text": text} for kind, text in TEXTS.items()]
    spec = write_job(tmp_path, rows, {"parameters": NO_THINKING, "limits": {"max_cost_usd": 1.0}})
    summary = run_job(spec, handle_signals=False)
    assert summary.exit_code == 0
    with sqlite3.connect(summary.db_path) as conn:
        pairs = conn.execute("SELECT cost_pusd, worst_cost_pusd FROM attempts_view").fetchall()
    assert len(pairs) == 4 and all(0 < cost <= worst for cost, worst in pairs)


# ----------------------------------------------------------------- the job's budget covers every run


def test_the_job_budget_holds_over_three_runs(tmp_path: Path, sim: ThreadHandle) -> None:
    limits = {"concurrency": 4, "max_cost_usd": 0.0003}
    spec = write_job(tmp_path, rows_of(TEXTS["english"], 60), {"parameters": NO_THINKING, "limits": limits})
    messages = []
    for _ in range(3):
        summary = run_job(spec, handle_signals=False)
        messages.append(summary.message)
    assert summary.exit_code == 4
    assert spent(summary.db_path) <= usd_to_pusd(0.0003)  # the whole store, not one run
    assert spent(summary.db_path, summary.run_id) < usd_to_pusd(0.0003) / 10  # the last run found little left
    last = messages[-1]
    assert "max_cost_usd (0.000300 USD for the job)" in last
    assert "USD for the job so far" in last and "USD this run" in last and "USD left of max_cost_usd" in last


def test_a_per_run_cap_is_its_own_option(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, rows_of(TEXTS["english"], 60), {"parameters": NO_THINKING})
    first = run_job(spec, handle_signals=False, max_cost_usd_per_run=0.0005)
    second = run_job(spec, handle_signals=False, max_cost_usd_per_run=0.0005)
    assert first.exit_code == second.exit_code == 4
    for summary in (first, second):
        assert 0 < spent(summary.db_path, summary.run_id) <= usd_to_pusd(0.0005)
        assert "max_cost_usd_per_run (0.000500 USD)" in summary.message
        assert "USD left of max_cost_usd_per_run" in summary.message
    assert spent(second.db_path) > usd_to_pusd(0.0005)  # each run had its own allowance


def test_cli_flags_map_to_the_job_and_the_run(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, rows_of(TEXTS["english"], 30), {"parameters": NO_THINKING})
    job = CliRunner().invoke(cli, ["run", str(spec), "--max-cost", "0.0005", "-q"])
    assert job.exit_code == 4 and "max_cost_usd (0.000500 USD for the job)" in job.output
    again = CliRunner().invoke(cli, ["run", str(spec), "--max-cost", "0.0005", "-q"])
    assert again.exit_code == 4 and "USD this run" in again.output
    assert spent(tmp_path / "out" / "t.sqlite") <= usd_to_pusd(0.0005)  # both runs, within the job's budget
    per_run = CliRunner().invoke(cli, ["run", str(spec), "--max-cost-per-run", "0.0005", "-q"])
    assert per_run.exit_code == 4 and "max_cost_usd_per_run (0.000500 USD)" in per_run.output


def test_a_budget_refuses_what_it_cannot_bound(tmp_path: Path) -> None:
    cases = {
        "enable_thinking set": {"parameters": {"max_tokens": 8}},
        "thinking_budget": {"parameters": {"max_tokens": 8, "enable_thinking": True, "stream": True}},
        "enable_search": {"parameters": {**NO_THINKING, "enable_search": True}},
    }
    for i, (problem, overrides) in enumerate(cases.items()):
        path = write_job(tmp_path / str(i), rows_of("x", 2), {**overrides, "limits": {"max_cost_usd_per_run": 1.0}})
        with pytest.raises(SpecError, match=problem):
            load_spec(path)


# ----------------------------------------------------------------- the context check


def test_the_context_check_counts_with_the_tokenizer(tmp_path: Path, sim: ThreadHandle) -> None:
    # 1,600 CJK characters: bytes / 3 says 1,600 tokens, the Qwen tokenizer far fewer
    text = "我们今天讨论的是人工智能在医疗领域的应用，以及它对社会的影响。" * 50
    spec = write_job(tmp_path, [{"id": "a", "text": text}], {"model": {"context_tokens": 1500}})
    summary = run_job(spec, handle_signals=False)
    assert summary.table == {"ok": 1}
    too_long = write_job(tmp_path / "b", [{"id": "a", "text": text * 2}], {"model": {"context_tokens": 1500}})
    summary = run_job(too_long, handle_signals=False)
    assert summary.table == {"failed": 1}


def test_the_real_context_limit_of_qwen3_max(tmp_path: Path) -> None:
    from batchrunner.tokens import count, count_over

    spec = load_spec(write_job(tmp_path, rows_of("x", 1), {"model": {"name": "qwen3-max"}}))
    assert Policy.of(spec, PriceTable.load()).context_limit == 258_048  # not the last price tier's 252,000
    assert PriceTable.load(region="cn").context_tokens("qwen3-max") == 258_048  # a limit, not a price
    words = "the market grew steadily this quarter while costs fell " * 19_700  # about 177k tokens
    messages = [{"role": "user", "content": words}]
    n = count(messages)
    assert n is not None and 170_000 < n < 258_048
    assert count_over(messages, 258_048) is None
    assert count_over(messages, 100_000) == n
