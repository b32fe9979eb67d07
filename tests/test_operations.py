"""Running unattended: the job lock, operations commands, logs, bad input, secrets, faults."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import Launch, read_table, write_job

from batchrunner import SpecError, load_spec, run_job
from batchrunner.cli import cli
from batchrunner.lock import JobLock
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread

KEY = "sk-live-4f9d2c7e1b8a6053deadbeef"
ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(30)]


@pytest.fixture
def api_key() -> str:
    """A key that looks live, for the tests that check it never leaks."""
    return KEY


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ----------------------------------------------------------------- one run at a time


def test_a_second_run_exits_75_naming_the_holder(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS)
    with JobLock(load_spec(spec).db_path):
        result = invoke("run", str(spec))
    assert result.exit_code == 75
    assert f"the job is already running (pid {os.getpid()} on " in result.output and "started 20" in result.output
    assert sim.sim.stats()["requests"] == 0
    assert invoke("run", str(spec)).exit_code == 0  # released: the next run goes ahead


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:3])
    db = load_spec(spec).db_path
    db.parent.mkdir(parents=True, exist_ok=True)
    # a killed holder leaves its note but no lock (the kernel drops flock locks with the process)
    Path(f"{db}.lock").write_text(json.dumps({"pid": 999999, "host": "old-host", "started_at": "2026-01-01"}))
    result = invoke("run", str(spec))
    assert result.exit_code == 0
    assert "took over the lock of pid 999999 on old-host" in result.output


def test_retry_holds_the_lock_too(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:3])
    invoke("run", str(spec))
    with JobLock(load_spec(spec).db_path):
        assert invoke("retry", str(spec)).exit_code == 75
        assert invoke("status", str(spec)).exit_code == 0  # readers need no lock


# ----------------------------------------------------------------- operations commands

POISON = SimulatorConfig(
    faults=(
        FaultRule("item number 3", ("always:DataInspectionFailed",)),
        FaultRule("item number 4", ("always:InvalidParameter",)),
    )
)


@pytest.mark.sim(POISON)
def test_status_runs_and_retry(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:10])
    assert invoke("run", str(spec)).exit_code == 1
    status = invoke("status", str(spec)).output
    assert "results: failed 2, ok 8" in status
    assert "failed with DataInspectionFailed: 1" in status and "failed with InvalidParameter: 1" in status
    assert "last run #1: finished, exit 1" in status and "rate " in status and "rows/s" in status
    retried = invoke("retry", str(spec), "--codes", "DataInspectionFailed")
    assert "re-queued 1 failed row(s)" in retried.output
    sim.sim.reset()
    assert invoke("run", str(spec)).exit_code == 1
    assert [r.prompt for r in sim.sim.log] == ["Say something about item number 3"]
    runs = json.loads(invoke("runs", str(spec), "--format", "json").output)
    assert [(r["id"], r["status"], r["exit_code"], r["sent"]) for r in runs] == [
        (1, "finished", 1, 10),
        (2, "finished", 1, 1),
    ]
    table = invoke("runs", str(spec)).output.splitlines()
    assert table[0].split()[:5] == ["run", "status", "exit", "started", "ended"] and len(table) == 3
    for run, line in zip(runs, table[1:], strict=True):  # each run's end time, as the store has it
        assert run["ended_at"] and line.split()[3:5] == [run["started_at"], run["ended_at"]]


def test_json_log_file_and_plain_lines_off_a_terminal(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:5])
    log_file = tmp_path / "logs" / "run.jsonl"
    result = invoke("run", str(spec), "--log-file", str(log_file), "--log-format", "json")
    assert result.exit_code == 0
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    progress = [e for e in lines if e["logger"] == "batchrunner.progress"]
    assert progress and progress[-1]["done"] == 5 and progress[-1]["ok"] == 5
    (summary,) = [e for e in lines if e.get("status") == "finished"]
    assert summary["exit_code"] == 0 and summary["sent"] == 5 and summary["level"] == "info"
    # CliRunner is not a terminal: the same progress shows as plain lines, no bar
    assert '"logger": "batchrunner.progress"' in result.output and "\r" not in result.output


def test_quiet_keeps_stderr_to_warnings(tmp_path: Path, sim: ThreadHandle) -> None:
    result = invoke("run", str(write_job(tmp_path, ROWS[:5])), "--quiet")
    assert result.exit_code == 0
    assert "rows done" not in result.output and "output table:" in result.output


@pytest.mark.sim(latency_ms=50)
def test_sigterm_with_write_partial(tmp_path: Path, sim: ThreadHandle, launch: Launch) -> None:
    rows = [{"id": f"r{i}", "text": f"row {i}"} for i in range(400)]
    spec = write_job(tmp_path, rows, {"limits": {"concurrency": 8, "grace_s": 10}})
    proc = launch("run", str(spec), "--write-partial", "-q", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sim.sim.wait_for_requests(30, timeout=60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    table = read_table(tmp_path / "out" / "result.csv")
    statuses = table["status"].to_list()
    assert table.height == 400 and "pending" in statuses and "ok" in statuses
    assert b"output table:" in out


# ----------------------------------------------------------------- bad input before money is spent


def test_a_prompt_over_the_context_fails_without_being_sent(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": "short", "text": "hi"}, {"id": "long", "text": "word " * 400}]
    summary = run_job(write_job(tmp_path, rows, {"model": {"context_tokens": 200}}), handle_signals=False)
    assert summary.exit_code == 1 and summary.table == {"ok": 1, "failed": 1}
    out = read_table(summary.output_path)
    row = out.filter(out["id"] == "long").row(0, named=True)
    assert row["error_code"] == "PromptTooLong" and "over the model's context of 200" in row["error_message"]
    assert row["attempts"] == "0"
    assert [r.prompt for r in sim.sim.log] == ["Say something about hi"]


def test_key_file_must_be_private(tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    spec = write_job(tmp_path, ROWS[:2], {"api": {"api_key_file": "key.txt"}})
    with pytest.raises(SpecError, match=r"readable by other users; run `chmod 600"):
        run_job(spec, handle_signals=False)
    assert sim.sim.stats()["requests"] == 0
    key_file.chmod(0o600)
    assert run_job(spec, handle_signals=False).exit_code == 0


def test_plain_http_is_refused_except_loopback_or_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://dashscope.example.com/api/v1")
    with pytest.raises(SpecError, match="is not https: the API key would travel in clear text"):
        run_job(write_job(tmp_path, ROWS[:2]), handle_signals=False)
    from batchrunner.service import check_base_url

    check_base_url("http://127.0.0.1:8000/api/v1", allow_insecure_http=False)
    check_base_url("http://[::1]:8000/v1", allow_insecure_http=False)
    check_base_url("http://10.0.0.5/v1", allow_insecure_http=True)


# ----------------------------------------------------------------- secrets never leak

LEAKY = SimulatorConfig(
    faults=(
        FaultRule("item number 1", ("always:DataInspectionFailed",)),
        FaultRule("item number 2", (500, "drop", "malformed")),
    )
)


@pytest.mark.sim(LEAKY)
def test_the_key_appears_in_no_artifact_or_output(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_job(tmp_path, ROWS[:6], {"output": {"path": "out/result.jsonl"}})
    outputs = [invoke("run", str(spec), "--log-file", str(tmp_path / "run.log"), "--log-format", "json")]
    outputs.append(invoke("status", str(spec)))
    outputs.append(invoke("runs", str(spec), "--format", "json"))
    outputs.append(invoke("report", str(spec), "--format", "json"))
    with serve_in_thread(SimulatorConfig(valid_keys=frozenset({"sk-other"})), "127.0.0.1", 0) as denied:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", denied.base_url)
        outputs.append(CliRunner().invoke(cli, ["run", str(write_job(tmp_path / "denied", ROWS[:3]))]))
    assert outputs[-1].exit_code == 3
    assert outputs[0].exit_code == 1
    for result in outputs:
        assert KEY not in result.output
        assert result.exception is None or KEY not in repr(result.exception)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and any(p.name == "run.log" for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    with contextlib.closing(sqlite3.connect(tmp_path / "out" / "t.sqlite")) as conn:
        dump = "\n".join(conn.iterdump())
    assert KEY not in dump
