"""Mode batch end to end: plan, upload, submit, poll, ingest, clean, against the simulator's
Files + Batches API over loopback, on a clock that jumps instead of sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchtools import JumpClock, batch_job
from helpers import invoke_cli, query, read_table

from batchrunner.errors import ExitCode, SpecError
from batchrunner.pricing import PriceTable
from batchrunner.runner import run_job
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle
from batchrunner.spec import load
from batchrunner.wire import Usage

FAST = SimulatorConfig(batch_validate_s=30.0, batch_line_s=1.0)  # a 10-line file takes 40 s of the clock
pytestmark = pytest.mark.sim(FAST)


def test_a_job_in_several_files_comes_back_whole_at_the_batch_price(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 25, batch={"max_lines_per_file": 10})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.OK, summary.message
    table = read_table(summary.output_path)  # type: ignore[arg-type]
    assert table.height == 25 and set(table["status"]) == {"ok"}
    stats = bsim.sim.stats()
    assert stats["batches_created"] == 3 and stats["lines_billed"] == 25
    db = load(spec).db_path
    assert query(db, "SELECT lines, state FROM batch_files ORDER BY id") == [
        (10, "cleaned"),
        (10, "cleaned"),
        (5, "cleaned"),
    ]
    assert query(db, "SELECT DISTINCT mode FROM results_view") == [("batch",)]
    assert query(db, "SELECT count(*) FROM attempts_view WHERE mode = 'batch' AND outcome = 'ok'") == [(25,)]
    # Every row is priced at half the real-time price, with no cache discount.
    prices = PriceTable.load()
    for inp, out, cost in query(db, "SELECT input_tokens, output_tokens, cost_pusd FROM results_view"):
        usage = Usage.from_wire({"input_tokens": inp, "output_tokens": out})
        online = prices.cost("qwen-plus", usage)
        assert online is not None and cost == prices.for_batch().cost("qwen-plus", usage).total_pusd  # type: ignore[union-attr]
        assert abs(cost * 2 - online.total_pusd) <= 2
    # The remote files are deleted after ingestion, and nothing is left in the spool folder.
    assert bsim.sim.batches.list_files()["data"] == []
    assert list((db.parent / (db.name + ".batches")).glob("*")) == []
    # A second run finds everything done and sends nothing.
    again = run_job(spec, clock=jump.clock())
    assert again.exit_code == 0 and again.counts.sent == 0
    assert bsim.sim.stats()["batches_created"] == 3


def test_detach_is_driven_to_the_end_by_repeated_runs(tmp_path: Path, bsim: ThreadHandle, jump: JumpClock) -> None:
    spec = batch_job(tmp_path, 12, batch={"max_lines_per_file": 5})
    codes = []
    for _ in range(20):
        summary = run_job(spec, clock=jump.clock(), detach=True)
        codes.append(summary.exit_code)
        if summary.exit_code != ExitCode.BATCHES_RUNNING:
            break
        jump.now += 15 * 60  # cron, every 15 minutes
    assert codes[0] == ExitCode.BATCHES_RUNNING and codes[-1] == ExitCode.OK, codes
    assert summary.output_path is not None and read_table(summary.output_path).height == 12
    assert bsim.sim.stats()["batches_created"] == 3 and bsim.sim.stats()["lines_billed"] == 12
    assert jump.slept == []  # a detached run never waits


@pytest.mark.sim(FAST, batch_line_s=3 * 3600.0)  # 8 lines a day: a 24 h window expires part done
def test_expired_batches_keep_their_answers_and_only_the_missing_lines_go_again(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 20, batch={"poll_interval_s": 3600, "poll_max_s": 6 * 3600, "max_attempts": 3})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.OK, summary.message
    db = load(spec).db_path
    stats = bsim.sim.stats()
    assert stats["lines_billed"] == 20  # no row billed twice
    assert stats["batches_created"] == 3
    assert query(db, "SELECT attempt, lines FROM batch_files ORDER BY id") == [(1, 20), (2, 13), (3, 6)]
    retried = query(db, "SELECT count(*) FROM attempts_view WHERE outcome = 'retry' AND error_code = 'batch_expired'")
    assert retried == [(13 + 6,)]


@pytest.mark.sim(FAST, batch_line_s=3 * 3600.0)
def test_lines_without_an_answer_after_max_attempts_fail_and_retry_requeues_them(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 20, batch={"poll_interval_s": 3600, "poll_max_s": 6 * 3600, "max_attempts": 2})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.FAILED_ROWS
    db = load(spec).db_path
    failed = query(db, "SELECT error_code, retryable, attempts FROM results_view WHERE status = 'failed'")
    assert len(failed) == 6 and {f[0] for f in failed} == {"batch_expired"} and {f[2] for f in failed} == {2}
    assert invoke_cli("retry", str(spec)).exit_code == 0
    final = run_job(spec, clock=jump.clock())
    assert final.exit_code == ExitCode.OK, final.message
    assert bsim.sim.stats()["lines_billed"] == 20


@pytest.mark.sim(FAST, batch_none_id="")
def test_empty_string_file_ids_mean_no_file(tmp_path: Path, bsim: ThreadHandle, jump: JumpClock) -> None:
    spec = batch_job(tmp_path, 6)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.OK, summary.message
    assert bsim.sim.stats()["lines_billed"] == 6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"name": "qwen3-coder-plus"}}, "the Batch API .* does not serve"),
        ({"batch": {"max_lines_per_file": 50_001}}, "max_lines_per_file"),
        ({"parameters": {"stream": True, "enable_thinking": False, "max_tokens": 32}}, "does not stream"),
        ({"api": {"mode": "auto"}}, "needs a deadline"),
    ],
)
def test_bad_batch_specs_fail_before_anything_is_uploaded(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock, changes: dict[str, dict[str, object]], message: str
) -> None:
    spec = batch_job(tmp_path, 3, **{k: v for k, v in changes.items() if k != "batch"}, batch=changes.get("batch"))
    with pytest.raises(SpecError, match=message):
        run_job(spec, clock=jump.clock())
    assert bsim.sim.batches.list_files()["data"] == [] and bsim.sim.stats()["batches_created"] == 0


@pytest.mark.sim(FAST, faults=(FaultRule("item number 3", ("always:400",)), FaultRule("item number 5", (500,))))
def test_line_failures_a_4xx_fails_the_row_a_5xx_goes_again(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 8)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.FAILED_ROWS
    db = load(spec).db_path
    assert query(db, "SELECT row_id, http_status, retryable FROM results_view WHERE status = 'failed'") == [
        ("r3", 400, 0)
    ]
    assert query(db, "SELECT lines FROM batch_files ORDER BY id") == [(8,), (1,)]  # only r5 went again
    assert query(db, "SELECT row_id FROM batch_lines WHERE file = 2") == [("r5",)]
    assert bsim.sim.stats()["lines_billed"] == 7


@pytest.mark.sim(FAST, faults=(FaultRule("item number", ("always:400",)),))
def test_a_completed_batch_whose_only_file_is_the_error_file(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 3)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.FAILED_ROWS
    db = load(spec).db_path
    assert query(db, "SELECT remote_status, output_file_id IS NULL, error_file_id IS NOT NULL FROM batch_files") == [
        ("completed", 1, 1)
    ]
    assert query(db, "SELECT count(*) FROM results_view WHERE status = 'failed' AND mode = 'batch'") == [(3,)]


@pytest.mark.sim(FAST, batch_seconds=60.0)
def test_the_batch_check_sends_the_first_rows_free_and_keeps_them_apart(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 120)
    summary = run_job(spec, clock=jump.clock(), batch_check=True)
    assert summary.exit_code == 0, summary.message
    assert "100/100 line(s) came back answered" in summary.message and "round trip are right" in summary.message
    db = load(spec).db_path
    assert query(db, "SELECT count(*) FROM results_view") == [(0,)]  # the check's answers are not the job's
    assert query(db, "SELECT purpose, state, lines FROM batch_files") == [("check", "cleaned", 100)]
    assert bsim.sim.stats()["lines_billed"] == 0
    real = run_job(spec, clock=jump.clock())  # the job itself then sends all 120 rows
    assert real.exit_code == 0 and real.counts.sent == 120


def test_the_cli_detaches_with_exit_6_and_lists_the_batches(tmp_path: Path, bsim: ThreadHandle) -> None:
    spec = batch_job(tmp_path, 4)
    result = invoke_cli("run", str(spec), "--detach", "-q")
    assert result.exit_code == ExitCode.BATCHES_RUNNING, result.output
    listing = invoke_cli("batches", str(spec))
    assert listing.exit_code == 0 and "submitted" in listing.output and "batch_" in listing.output
    as_json = invoke_cli("batches", str(spec), "--format", "json")
    assert '"state": "submitted"' in as_json.output and "sk-" not in as_json.output
    status = invoke_cli("status", str(spec))
    assert "batches: 1 file(s): 1 submitted" in status.output and "lines out in batches: 4" in status.output
