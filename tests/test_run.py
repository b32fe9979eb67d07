"""Whole jobs against the simulator over loopback, with a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import API_KEY, query, read_table, write_job

from batchrunner import load_spec, run_job
from batchrunner.simulator import (
    FaultRule,
    SimulatorConfig,
    ThreadHandle,
    answer_for,
    serve_in_thread,
)

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(30)]


def prompts_sent(handle: ThreadHandle) -> list[str]:
    return [record.prompt for record in handle.sim.log]


def test_end_to_end_row_by_row(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS)
    summary = run_job(spec_path, handle_signals=False)
    assert summary.exit_code == 0 and summary.status == "finished"
    assert summary.counts.ok == 30 and summary.counts.sent == 30
    assert summary.table == {"ok": 30}
    out = read_table(summary.output_path)
    assert out.columns == [
        "id",
        "text",
        "content",
        "reasoning_content",
        "finish_reason",
        "status",
        "error_code",
        "error_message",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "tool_calls",
        "request_id",
        "attempts",
        "latency_ms",
        "cost_usd",
    ]
    assert out["id"].to_list() == [r["id"] for r in ROWS]  # input order
    for row in out.iter_rows(named=True):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Say something about {row['text']}"},
        ]
        content, output_tokens, finish = answer_for("qwen-plus", messages, 1, 32)
        assert row["content"] == content
        assert row["finish_reason"] == finish
        assert int(row["output_tokens"]) == output_tokens
        assert int(row["total_tokens"]) == int(row["input_tokens"]) + output_tokens
        assert row["status"] == "ok" and row["attempts"] == "1"
        assert row["request_id"]
    # the store holds the same, with the raw usage beside the columns
    stored = query(summary.db_path, "SELECT status, usage, model, parameters FROM results_view")
    assert len(stored) == 30
    assert all(s == "ok" and '"input_tokens"' in u and m == "qwen-plus" and '"seed":1' in p for s, u, m, p in stored)
    assert query(summary.db_path, "SELECT count(*) FROM attempts_view") == [(30,)]
    (run,) = query(summary.db_path, "SELECT status, exit_code, sent, ok, spec_digest, simulated FROM runs")
    assert run == ("finished", 0, 30, 30, load_spec(spec_path).digest, 0)


def test_rerun_sends_nothing(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS)
    run_job(spec_path, handle_signals=False)
    sim.sim.reset()
    summary = run_job(spec_path, handle_signals=False)
    assert sim.sim.stats()["requests"] == 0
    assert summary.already_done == 30 and summary.counts.sent == 0 and summary.exit_code == 0
    assert summary.table == {"ok": 30}


def test_changed_rows_and_template_resend_only_what_changed(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS)
    run_job(spec_path, handle_signals=False)
    # three edited cells: three requests
    edited = [dict(r, text=r["text"] + " (edited)") if i in (3, 7, 11) else r for i, r in enumerate(ROWS)]
    write_job(tmp_path, edited)
    sim.sim.reset()
    summary = run_job(spec_path, handle_signals=False)
    assert sorted(prompts_sent(sim)) == sorted(f"Say something about item number {i} (edited)" for i in (3, 7, 11))
    assert summary.counts.sent == 3 and summary.already_done == 27
    # a changed template: only the rows whose rendered request differs are sent
    noted = [dict(r, note=" (urgent)" if i < 2 else None) for i, r in enumerate(ROWS)]
    write_job(
        tmp_path,
        noted,
        {"prompt": {"template": "Say something about {text}{note}", "on_empty": "send"}},
    )
    sim.sim.reset()
    summary = run_job(spec_path, handle_signals=False)
    assert sorted(prompts_sent(sim)) == [
        "Say something about item number 0 (urgent)",
        "Say something about item number 1 (urgent)",
    ]
    assert summary.already_done == 28
    # a changed parameter changes every request
    write_job(tmp_path, ROWS, {"parameters": {"seed": 2}})
    sim.sim.reset()
    summary = run_job(spec_path, handle_signals=False)
    assert summary.counts.sent == 30


def test_identical_requests_are_sent_once(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": "same"} for i in range(5)] + [{"id": "x", "text": "other"}]
    summary = run_job(write_job(tmp_path, rows), handle_signals=False)
    assert sim.sim.stats()["requests"] == 2
    out = read_table(summary.output_path)
    assert out["status"].to_list() == ["ok"] * 6
    assert len(set(out["content"].to_list()[:5])) == 1


POISON = SimulatorConfig(faults=(FaultRule("item number 5", ("always:DataInspectionFailed",)),))


@pytest.mark.sim(POISON)
def test_a_400_row_fails_while_the_rest_succeed(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS)
    summary = run_job(spec_path, handle_signals=False)
    assert summary.exit_code == 1
    assert summary.table == {"ok": 29, "failed": 1}
    out = read_table(summary.output_path)
    failed = out.filter(out["status"] == "failed").row(0, named=True)
    assert failed["id"] == "r5" and failed["error_code"] == "DataInspectionFailed"
    assert "inappropriate content" in failed["error_message"]
    assert failed["attempts"] == "1" and failed["content"] is None
    # a rerun does not pay again for a request the service rejected ...
    sim.sim.reset()
    assert run_job(spec_path, handle_signals=False).exit_code == 1
    assert sim.sim.stats()["requests"] == 0
    # ... unless asked to
    summary = run_job(spec_path, handle_signals=False, retry_failed=True)
    assert prompts_sent(sim) == ["Say something about item number 5"]


@pytest.mark.sim(valid_keys=frozenset({"sk-the-right-one"}))
def test_401_aborts_with_exit_3_and_marks_no_row_failed(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS), handle_signals=False)
    assert summary.exit_code == 3 and summary.status == "aborted"
    assert "InvalidApiKey" in summary.message and "DASHSCOPE_API_KEY" in summary.message
    assert API_KEY not in summary.message
    assert query(summary.db_path, "SELECT count(*) FROM results_view") == [(0,)]
    outcomes = set(query(summary.db_path, "SELECT http_status, outcome FROM attempts_view"))
    # the 401 answers, plus any request that was in flight when the run stopped
    assert (401, "abort") in outcomes and outcomes <= {(401, "abort"), (None, "cancelled")}
    assert summary.counts.attempts <= 16  # stopped at once: at most one wave of workers
    assert summary.output_path is None
    assert query(summary.db_path, "SELECT status, exit_code FROM runs") == [("aborted", 3)]


RETRIED = SimulatorConfig(
    faults=(
        FaultRule("item number 12", (429, 500, "Throttling.AllocationQuota", 503)),
        FaultRule("item number 14", ("drop",)),
        FaultRule("item number 16", ("malformed",)),
    )
)


@pytest.mark.sim(RETRIED)
def test_429_5xx_drops_and_malformed_bodies_are_retried_to_success(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS), handle_signals=False)
    assert summary.exit_code == 0 and summary.table == {"ok": 30}
    out = read_table(summary.output_path)
    attempts = dict(zip(out["id"].to_list(), out["attempts"].to_list(), strict=True))
    assert attempts["r12"] == "5" and attempts["r14"] == "2" and attempts["r16"] == "2"
    assert {v for k, v in attempts.items() if k not in ("r12", "r14", "r16")} == {"1"}
    assert summary.counts.retries == 6 and summary.counts.throttled == 2
    seq = query(
        summary.db_path,
        "SELECT a.http_status, a.error_code, a.outcome FROM attempts_view a JOIN results_view r ON a.key = r.key "
        "WHERE r.row_id = 'r12' ORDER BY a.attempt",
    )
    assert seq == [
        (429, "Throttling.RateQuota", "retry"),
        (500, "InternalError", "retry"),
        (429, "Throttling.AllocationQuota", "retry"),
        (503, "ModelUnavailable", "retry"),
        (200, None, "ok"),
    ]
    billed = query(
        summary.db_path,
        "SELECT r.row_id, a.error_code, a.possibly_billed FROM attempts_view a JOIN results_view r ON a.key = r.key "
        "WHERE a.outcome = 'retry' AND r.row_id IN ('r14', 'r16') ORDER BY r.row_id",
    )
    assert billed == [("r14", "ConnectionDropped", 1), ("r16", "MalformedResponse", 1)]


SLOW = SimulatorConfig(slow_s=3.0, faults=(FaultRule("item number 1", ("slow",)),))


@pytest.mark.sim(SLOW)
def test_read_timeout_is_retried_and_recorded_as_possibly_billed(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS[:3], {"limits": {"timeout_s": 0.5}})
    summary = run_job(spec_path, handle_signals=False)
    assert summary.table == {"ok": 3}
    rows = query(
        summary.db_path,
        "SELECT a.error_code, a.possibly_billed FROM attempts_view a JOIN results_view r ON a.key = r.key "
        "WHERE r.row_id = 'r1' ORDER BY a.attempt",
    )
    # the timeout may have been billed an unknown amount; the answer was billed exactly its usage
    assert rows == [("ReadTimeout", 1), (None, 0)]
    assert query(summary.db_path, "SELECT possibly_billed_attempts FROM results_view WHERE row_id='r1'") == [(1,)]


@pytest.mark.sim(faults=(FaultRule("item number 0", ("always:500",)),))
def test_retries_run_out_and_the_row_is_retried_next_run(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS[:4], {"limits": {"max_retries": 2}})
    summary = run_job(spec_path, handle_signals=False)
    assert summary.exit_code == 1 and summary.table == {"ok": 3, "failed": 1}
    out = read_table(summary.output_path)
    row = out.filter(out["id"] == "r0").row(0, named=True)
    assert row["error_code"] == "InternalError" and row["attempts"] == "3"
    assert row["error_message"].startswith("gave up after 3 attempts")
    # a transient failure is sent again by a plain rerun (no --retry-failed needed)
    sim.sim.reset()
    run_job(spec_path, handle_signals=False)
    assert prompts_sent(sim) == ["Say something about item number 0"] * 3


def test_limit_sends_at_most_n_and_leaves_the_rest_pending(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS)
    summary = run_job(spec_path, handle_signals=False, limit=7)
    assert summary.counts.sent == 7 and summary.exit_code == 0
    assert summary.table == {"ok": 7, "pending": 23}
    summary = run_job(spec_path, handle_signals=False)
    assert summary.counts.sent == 23 and summary.table == {"ok": 30}


@pytest.mark.parametrize("data_name", ["data.parquet", "data.jsonl"])
@pytest.mark.parametrize("out_name", ["out.parquet", "out.jsonl", "out.csv"])
def test_formats_round_trip(tmp_path: Path, sim: ThreadHandle, data_name: str, out_name: str) -> None:
    rows = [{"id": "a", "text": 'quote " comma , newline \n end'}, {"id": "b", "text": "中文 café"}]
    spec_path = write_job(tmp_path, rows, {"output": {"path": f"out/{out_name}"}}, data_name=data_name)
    summary = run_job(spec_path, handle_signals=False)
    out = read_table(summary.output_path)
    assert out["text"].to_list() == [r["text"] for r in rows]
    assert out["status"].to_list() == ["ok", "ok"]


def test_store_is_private_and_wal(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS[:2]), handle_signals=False)
    assert summary.db_path.stat().st_mode & 0o777 == 0o600
    assert query(summary.db_path, "PRAGMA journal_mode") == [("wal",)]


def test_missing_key_is_an_error_before_anything_is_sent(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrunner import SpecError

    monkeypatch.delenv("DASHSCOPE_API_KEY")
    with pytest.raises(SpecError, match="DASHSCOPE_API_KEY is not set"):
        run_job(write_job(tmp_path, ROWS), handle_signals=False)
    assert sim.sim.stats()["requests"] == 0


def test_simulate_needs_no_key_and_marks_the_run(tmp_path: Path) -> None:
    # no DASHSCOPE_API_KEY: the autouse fixture in conftest.py removes it for every test
    summary = run_job(write_job(tmp_path, ROWS[:5]), simulate=True, handle_signals=False)
    assert summary.exit_code == 0 and summary.simulated
    assert query(summary.db_path, "SELECT simulated FROM runs") == [(1,)]


def test_requests_per_minute_paces_the_run(tmp_path: Path, sim: ThreadHandle) -> None:
    """The pacer is wired in: at 60 requests a minute (one start per 1.015 s) three rows
    cannot be sent in less than two windows. (The pacing itself is tested on a virtual clock
    in test_pacing.py; this bound only grows on a slower machine, so it cannot flake.)"""
    spec_path = write_job(tmp_path, ROWS[:3], {"limits": {"requests_per_minute": 60}})
    summary = run_job(spec_path, handle_signals=False)
    assert summary.table == {"ok": 3} and sim.sim.stats()["requests"] == 3
    assert summary.elapsed_s >= 2 * 1.015


@pytest.mark.sim(rpm=600)
def test_a_job_configured_above_the_service_limit_backs_off_and_finishes(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": f"over {i}"} for i in range(30)]
    limits = {
        "requests_per_minute": 6000,
        "concurrency": 30,
        "max_retries": 10,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
    }
    spec_path = write_job(tmp_path, rows, {"limits": limits})
    summary = run_job(spec_path, handle_signals=False)
    assert summary.table == {"ok": 30}
    assert summary.counts.throttled > 0 and summary.counts.throttled == sim.sim.stats()["throttled"]


def test_a_resume_starts_reading_where_the_last_run_left_off(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrunner import pending

    monkeypatch.setattr(pending, "BATCH_ROWS", 10)  # slices of 10 rows, so 30 rows make 3
    db = tmp_path / "out" / "t.sqlite"
    spec_path = write_job(tmp_path, ROWS)
    run_job(spec_path, handle_signals=False, limit=12)  # rows 0-11 done: the first slice is settled
    assert query(db, "SELECT resume_offset FROM runs") == [(10,)]
    run_job(spec_path, handle_signals=False, limit=5)  # starts reading at row 10: rows 12-16
    assert query(db, "SELECT already_done, sent, resume_offset FROM runs WHERE id = 2") == [(12, 5, 10)]
    summary = run_job(spec_path, handle_signals=False)
    assert summary.already_done == 17 and summary.counts.sent == 13 and summary.table == {"ok": 30}
    assert query(db, "SELECT resume_offset FROM runs WHERE id = 3") == [(30,)]  # all settled
    sim.sim.reset()
    run_job(spec_path, handle_signals=False)
    assert sim.sim.stats()["requests"] == 0
    # a changed input file is read from its first row again: an edited early row is re-sent
    edited = [dict(r, text="changed") if r["id"] == "r1" else r for r in ROWS]
    write_job(tmp_path, edited)
    run_job(spec_path, handle_signals=False)
    assert prompts_sent(sim) == ["Say something about changed"]
    # re-queued rows make every run read from the first row again
    from batchrunner.store import Store

    store = Store(db)
    store.requeue(None)
    store.close()
    assert query(db, "SELECT count(*) FROM runs WHERE resume_offset IS NOT NULL") == [(0,)]


def test_a_row_that_may_be_sent_again_holds_the_resume_point(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrunner import pending

    monkeypatch.setattr(pending, "BATCH_ROWS", 10)
    db = tmp_path / "out" / "t.sqlite"
    with serve_in_thread(SimulatorConfig(faults=(FaultRule("item number 15", ("always:500",)),)), "127.0.0.1", 0) as h:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", h.base_url)
        summary = run_job(write_job(tmp_path, ROWS, {"limits": {"max_retries": 1}}), handle_signals=False)
    assert summary.table == {"ok": 29, "failed": 1}
    assert query(db, "SELECT resume_offset FROM runs") == [(10,)]  # the slice of row 15
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim.base_url)
    summary = run_job(tmp_path / "job.toml", handle_signals=False)
    assert summary.table == {"ok": 30} and summary.counts.sent == 1
