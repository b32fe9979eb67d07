"""Mode batch survives crashes and lost answers without a duplicate batch or a row billed twice:
a crash after each committed step of the state machine (and between the create POST and its
commit), a create whose answer never arrives, a throttled create, a failed download, a batch
that fails validation, cancel with partial output, and mode auto crossing its deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchtools import JumpClock, batch_job
from helpers import invoke_cli, query, read_table

from batchrunner import batchstate as bs
from batchrunner.batchcancel import cancel_job
from batchrunner.errors import ExitCode
from batchrunner.runner import run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle
from batchrunner.spec import load
from batchrunner.store import Store

FAST = SimulatorConfig(batch_validate_s=30.0, batch_line_s=1.0)
pytestmark = pytest.mark.sim(FAST)
ROWS, PER_FILE = 14, 5  # three files


class Crash(BaseException):
    """The process dies here (nothing in batchrunner catches a BaseException of its own)."""


def answers(path: Path) -> list[tuple[Any, ...]]:
    table = read_table(path).sort("id")
    return list(zip(table["id"], table["status"], table["content"], strict=True))


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory, bsim: ThreadHandle, jump: JumpClock) -> list[tuple[Any, ...]]:
    """The output of the same job run without a crash."""
    spec = batch_job(tmp_path_factory.mktemp("clean"), ROWS, batch={"max_lines_per_file": PER_FILE})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0
    bsim.sim.reset()
    return answers(summary.output_path)  # type: ignore[arg-type]


STEPS = [
    (bs.UPLOADING, "after"),
    (bs.UPLOADED, "after"),
    (bs.CREATING, "after"),
    (bs.SUBMITTED, "before"),  # the batch exists at the service, the store does not know its id
    (bs.SUBMITTED, "after"),
    (bs.TERMINAL, "after"),
    ("ingest", "after"),  # the output file is in, the rest of the file is not
    (bs.INGESTED, "after"),
    (bs.CLEANED, "after"),
]


@pytest.mark.parametrize(("state", "when"), STEPS, ids=[f"{w}-{s}" for s, w in STEPS])
def test_a_crash_at_any_step_resumes_without_a_second_batch_or_bill(
    tmp_path: Path,
    bsim: ThreadHandle,
    jump: JumpClock,
    reference: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    state: str,
    when: str,
) -> None:
    spec = batch_job(tmp_path, ROWS, batch={"max_lines_per_file": PER_FILE})
    update, ingest = Store.update_file, Store.ingest
    fired = []

    def crashing_update(self: Store, file_id: int, **fields: Any) -> None:
        if fields.get("state") == state and not fired and file_id == 2:
            fired.append(file_id)
            if when == "after":
                update(self, file_id, **fields)
            raise Crash
        update(self, file_id, **fields)

    def crashing_ingest(self: Store, file_id: int, parts: Any, **fields: Any) -> int:
        written = ingest(self, file_id, parts, **fields)
        target = (state == "ingest" and not fields) or fields.get("state") == state
        if target and not fired and file_id == 2:
            fired.append(file_id)
            raise Crash
        return written

    monkeypatch.setattr(Store, "update_file", crashing_update)
    monkeypatch.setattr(Store, "ingest", crashing_ingest)
    with pytest.raises(Crash):
        run_job(spec, clock=jump.clock())
    assert fired == [2]
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    stats = bsim.sim.stats()
    assert stats["batches_created"] == 3, "a batch was created twice"
    assert stats["lines_billed"] == ROWS, "a row was billed twice"
    assert answers(summary.output_path) == reference  # type: ignore[arg-type]
    db = load(spec).db_path
    assert query(db, "SELECT count(*) FROM batch_files WHERE state = 'cleaned'") == [(3,)]
    assert query(db, "SELECT count(*), count(DISTINCT key) FROM attempts_view WHERE outcome = 'ok'") == [(ROWS, ROWS)]


@pytest.mark.sim(FAST, batch_drop_creates=1, batch_throttle_creates=2, batch_download_503=True, batch_cut_downloads=1)
def test_lost_and_refused_creates_and_broken_downloads_cost_nothing_twice(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, ROWS, batch={"max_lines_per_file": PER_FILE})
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    stats = bsim.sim.stats()
    assert stats["creates_dropped"] == 1 and stats["creates_throttled"] == 2
    assert stats["batches_created"] == 3 and stats["lines_billed"] == ROWS
    assert read_table(summary.output_path).height == ROWS  # type: ignore[arg-type]


def test_a_batch_that_fails_validation_fails_the_named_lines_and_resends_the_rest(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = batch_job(tmp_path, 6)
    real = Store.update_file

    def failing(self: Store, file_id: int, **fields: Any) -> None:
        if file_id == 1 and fields.get("state") == bs.TERMINAL:  # as if the service had refused line 2
            fields.update(remote_status="failed", output_file_id=None, error_file_id=None)
            fields["errors"] = '[{"code": "invalid_json_line", "message": "bad line", "param": null, "line": 2}]'
        real(self, file_id, **fields)

    monkeypatch.setattr(Store, "update_file", failing)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == ExitCode.FAILED_ROWS
    db = load(spec).db_path
    failed = query(db, "SELECT row_id, error_code, mode FROM results_view WHERE status = 'failed'")
    assert failed == [("r1", "invalid_json_line", "batch")]
    assert query(db, "SELECT id, lines, attempt FROM batch_files ORDER BY id") == [(1, 6, 1), (2, 5, 1)]
    assert query(db, "SELECT count(*) FROM results_view WHERE status = 'ok'") == [(5,)]


@pytest.mark.sim(FAST, batch_line_s=600.0)
def test_cancel_keeps_partial_output_and_the_next_run_sends_only_the_rest(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(tmp_path, 10)
    first = run_job(spec, clock=jump.clock(), detach=True)
    assert first.exit_code == ExitCode.BATCHES_RUNNING
    jump.now += 30 + 4 * 600 + 1  # validation, then 4 lines answered
    text = cancel_job(load(spec), clock=jump.clock(), poll=(1.0, 5.0))
    assert "4 answered line(s) kept" in text, text
    db = load(spec).db_path
    assert query(db, "SELECT count(*) FROM results_view WHERE status = 'ok'") == [(4,)]
    assert query(db, "SELECT remote_status FROM batch_files") == [("cancelled",)]
    listing = invoke_cli("batches", str(spec))
    assert listing.exit_code == 0 and "cancelled" in listing.output and "cleaned" in listing.output
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    assert query(db, "SELECT lines FROM batch_files ORDER BY id") == [(10,), (6,)]
    assert bsim.sim.stats()["lines_billed"] == 10


@pytest.mark.sim(FAST, batch_line_s=1800.0)
def test_auto_mode_crossing_its_deadline_sends_the_rest_online(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock
) -> None:
    spec = batch_job(
        tmp_path,
        12,
        api={"mode": "auto"},
        batch={"deadline": "2h", "poll_interval_s": 600, "poll_max_s": 600},
    )
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    db = load(spec).db_path
    modes = dict(query(db, "SELECT mode, count(*) FROM results_view GROUP BY mode"))
    assert modes["batch"] >= 3 and modes["batch"] + modes["online"] == 12, modes
    stats = bsim.sim.stats()
    assert stats["lines_billed"] == modes["batch"] and stats["batches_created"] == 1
    online_calls = query(db, "SELECT count(*) FROM attempts_view WHERE mode = 'online'")[0][0]
    assert online_calls == modes["online"]
    assert query(
        db, "SELECT count(*) FROM (SELECT key FROM attempts_view WHERE outcome = 'ok' GROUP BY key HAVING count(*) > 1)"
    ) == [(0,)]
    assert query(db, "SELECT remote_status FROM batch_files") == [("cancelled",)]


def test_unknown_and_repeated_custom_ids_are_logged_and_ignored(
    tmp_path: Path, bsim: ThreadHandle, jump: JumpClock, caplog: pytest.LogCaptureFixture
) -> None:
    spec = batch_job(tmp_path, 3)
    assert run_job(spec, clock=jump.clock(), detach=True).exit_code == ExitCode.BATCHES_RUNNING
    db = load(spec).db_path
    keys = [k for (k,) in query(db, "SELECT custom_id FROM batch_lines ORDER BY row_index")]

    def line(custom_id: str, content: str) -> str:
        body = {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        }
        return json.dumps({"id": "l", "custom_id": custom_id, "response": {"status_code": 200, "body": body}})

    crafted = "\n".join([line(keys[0], "first"), line(keys[0], "second"), line("not-ours", "stray")]) + "\n"
    remote = bsim.sim.batches.add_file("output.jsonl", "batch", crafted.encode())["id"]
    with Store(db) as store:  # as if the service had finished the batch with this output file
        store.update_file(1, state=bs.TERMINAL, remote_status="completed", output_file_id=remote)
    summary = run_job(spec, clock=jump.clock())
    assert summary.exit_code == 0, summary.message
    assert query(db, "SELECT content FROM results_view WHERE key = ?", keys[0]) == [("first",)]
    assert query(db, "SELECT lines FROM batch_files ORDER BY id") == [(3,), (2,)]  # the two missing went again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("not an open line" in w for w in warnings) == 2  # the repeat and the stranger
