"""Batch mode at its edges (each test is a defect found in review): --limit, --retry-failed, a
200 whose body cannot be read, a create still in doubt at the deadline or at cancel, a refused
key, a result file gone at the service, a check that never finished, an online run over rows
that batches still hold, and the budget settling as answers come in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchtools import JumpClock, batch_job
from helpers import query

from batchrunner import batchstate as bs
from batchrunner.batchcancel import cancel_job
from batchrunner.errors import ExitCode
from batchrunner.runner import run_job
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle
from batchrunner.spec import load
from batchrunner.store import Store

FAST = SimulatorConfig(batch_validate_s=30.0, batch_line_s=1.0)
pytestmark = pytest.mark.sim(FAST)


def test_limit_plans_only_that_many_rows_in_the_run(tmp_path: Path, bsim: ThreadHandle, jump: JumpClock) -> None:
    spec = batch_job(tmp_path, 30, batch={"max_lines_per_file": 4})
    summary = run_job(spec, clock=jump.clock(), limit=5)
    assert summary.exit_code == 0, summary.message
    assert bsim.sim.stats()["lines_billed"] == 5 and summary.counts.sent == 5
    assert query(load(spec).db_path, "SELECT count(*) FROM results_view WHERE status = 'ok'") == [(5,)]


@pytest.mark.sim(FAST, faults=(FaultRule("item number 2", ("always:400",)),))
def test_retry_failed_sends_a_failed_row_once_per_run(tmp_path: Path, bsim: ThreadHandle, jump: JumpClock) -> None:
    spec = batch_job(tmp_path, 6)
    assert run_job(spec, clock=jump.clock()).exit_code == ExitCode.FAILED_ROWS
    again = run_job(spec, clock=jump.clock(), retry_failed=True)
    assert again.exit_code == ExitCode.FAILED_ROWS and again.counts.sent == 1
    assert bsim.sim.stats()["batches_created"] == 2


def test_a_200_that_cannot_be_read_is_kept_as_billed_and_not_bought_again(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 2)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    db = load(spec).db_path
    first, second = [k for (k,) in query(db, "SELECT custom_id FROM batch_lines ORDER BY row_index")]
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    broken = {"id": "c", "object": "chat.completion", "choices": [], "usage": usage}
    good = {**broken, "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}]}
    lines = [
        {"id": "a", "custom_id": first, "response": {"status_code": 200, "body": broken}, "error": None},
        {"id": "b", "custom_id": second, "response": {"status_code": 200, "body": good}, "error": None},
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    remote = bsim.sim.batches.add_file("output.jsonl", "batch", data)["id"]
    with Store(db) as store:
        store.update_file(1, state=bs.TERMINAL, remote_status="completed", output_file_id=remote)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert query(db, "SELECT status, error_code FROM results_view WHERE key = ?", first) == [
        ("failed", "malformed_answer")
    ]
    paid = query(db, "SELECT input_tokens, cost_pusd > 0 FROM attempts_view WHERE key = ?", first)
    assert paid == [(100, 1)]  # what it was billed is on record
    assert query(db, "SELECT count(*) FROM batch_files") == [(1,)]  # nothing went again


@pytest.mark.sim(FAST, batch_throttle_creates=10_000)
def test_a_create_still_refused_at_the_deadline_is_given_up_and_the_rows_go_online(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 5, api={"mode": "auto"}, batch={"deadline": "1h"})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    db = load(spec).db_path
    assert query(db, "SELECT state FROM batch_files") == [("abandoned",)]
    assert query(db, "SELECT mode, count(*) FROM results_view GROUP BY mode") == [("online", 5)]
    assert bsim.sim.stats()["batches_created"] == 0
    assert jump.now - 1_800_000_000.0 < 2 * 3600  # bounded by the deadline, not by the service


@pytest.mark.sim(FAST, batch_drop_creates=1, batch_line_s=600.0)
def test_cancel_adopts_a_batch_whose_create_answer_was_lost_and_cancels_it(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrunner import batchrun

    monkeypatch.setattr(batchrun, "LOOKUP_WAITS_S", ())  # the create stays in doubt after the run
    spec = batch_job(tmp_path, 4)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    db = load(spec).db_path
    assert query(db, "SELECT state FROM batch_files") == [("creating",)]
    text = cancel_job(load(spec), clock=jump.clock(), poll=(1.0, 5.0))
    assert "cancelled 1 batch(es)" in text, text
    assert bsim.sim.stats()["batches_created"] == 1  # adopted, not created again
    assert query(db, "SELECT remote_status FROM batch_files") == [("cancelled",)]


@pytest.mark.sim(FAST, valid_keys=frozenset({"sk-test-key"}))
def test_a_refused_key_ends_the_run_with_exit_3_and_no_traceback(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-wrong-key")
    spec = batch_job(tmp_path, 3)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.AUTH and "refused" in summary.message
    assert "sk-wrong-key" not in summary.message
    db = load(spec).db_path
    assert query(db, "SELECT status FROM runs") == [("aborted",)]


def test_a_result_file_gone_at_the_service_sends_its_lines_again(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 3)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    jump.now += 3600
    db = load(spec).db_path
    (batch_id,) = query(db, "SELECT batch_id FROM batch_files")[0]
    output = bsim.sim.batches.get(batch_id)["output_file_id"]
    bsim.sim.batches.delete_file(output)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    assert query(db, "SELECT lines, attempt FROM batch_files ORDER BY id") == [(3, 1), (3, 2)]


@pytest.mark.sim(FAST, batch_line_s=3600.0)
def test_a_check_that_did_not_finish_is_cancelled_and_does_not_block_the_next(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 3)
    first = run_job(spec, clock=jump.clock(), batch_check=True)
    assert first.exit_code == ExitCode.FAILED_ROWS and "did not finish" in first.message
    db = load(spec).db_path
    ((state, remote),) = query(db, "SELECT state, remote_status FROM batch_files")
    assert state == "abandoned" and remote in ("cancelling", "cancelled")
    second = run_job(spec, clock=jump.clock(), batch_check=True)
    assert "3 line(s)" in second.message  # planned again, not held by the first check's lines


def test_an_online_run_leaves_rows_out_in_batches_alone_and_says_so(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 4)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    online = batch_job(tmp_path, 4, api={"mode": "online"})
    summary = run_job(online)
    assert summary.exit_code == ExitCode.FAILED_ROWS and "4 row(s) are out in batches" in summary.message
    assert summary.counts.sent == 0


def test_the_budget_settles_booked_worst_cases_as_answers_come_in(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    # Each line books its worst case; answers cost far less. Had nothing been settled, the
    # budget would stop after the first file; settled, the whole job fits.
    spec = batch_job(tmp_path, 12, limits={"max_cost_usd": 0.0003})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    assert bsim.sim.stats()["lines_billed"] == 12
    files = [n for (n,) in query(load(spec).db_path, "SELECT lines FROM batch_files ORDER BY id")]
    assert len(files) > 1 and files[0] < 12  # the first file was cut by the worst cases booked


def test_the_budget_is_a_hard_ceiling_in_batch_mode(tmp_path: Path, bsim: ThreadHandle, jump: JumpClock) -> None:
    spec = batch_job(tmp_path, 12, limits={"max_cost_usd": 0.00025})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.BUDGET, summary.message
    db = load(spec).db_path
    (spent,) = query(db, "SELECT sum(cost_pusd) FROM attempts_view")[0]
    assert 0 < spent <= 250_000_000  # pico-USD: never past the limit
    done = query(db, "SELECT count(*) FROM results_view WHERE status = 'ok'")[0][0]
    assert 0 < done < 12
    more = run_job(spec, clock=jump.clock(), max_cost_usd=0.001)
    assert more.exit_code == 0 and bsim.sim.stats()["lines_billed"] == 12


@pytest.mark.sim(FAST, batch_validate_s=600.0)
def test_a_batch_cancelled_before_any_line_has_only_an_error_file(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 3)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    text = cancel_job(load(spec), clock=jump.clock(), poll=(1.0, 5.0))
    assert "0 answered line(s) kept" in text, text
    db = load(spec).db_path
    shape = query(db, "SELECT remote_status, output_file_id IS NULL, error_file_id IS NOT NULL FROM batch_files")
    assert shape == [("cancelled", 1, 1)]
    assert query(db, "SELECT count(*) FROM attempts_view WHERE error_code = 'batch_cancelled'") == [(3,)]
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0 and bsim.sim.stats()["lines_billed"] == 3
