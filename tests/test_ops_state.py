"""What `status`, `runs` and `retry` say is what happened: a live run, a killed run, queued rows,
unknown error codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import write_job

from batchrunner import run_job
from batchrunner.cli import cli
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.store import Store

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(400)]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    config = SimulatorConfig(latency_ms=30, faults=(FaultRule("number 7", ("always:InvalidParameter",)),))
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-ops")
        yield handle


@pytest.fixture
def running(tmp_path: Path, sim: ThreadHandle) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A `batchrunner run` process part-way through its job; killed and reaped at teardown."""
    spec = write_job(tmp_path, ROWS, {"limits": {"concurrency": 4, "requests_per_minute": 6000}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrunner", "run", str(spec), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert sim.sim.wait_for_requests(40, timeout=60)
        yield spec, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_status_shows_a_live_run_then_a_killed_one(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    spec, proc = running
    live = invoke("status", str(spec))
    assert live.exit_code == 0
    assert f"is running (pid {proc.pid} on " in live.output
    assert "exit None" not in live.output
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = invoke("status", str(spec))
    assert "last run #1: killed" in after.output
    assert " killed " in invoke("runs", str(spec)).output


def test_the_next_run_marks_a_killed_run_in_the_store(running: tuple[Path, subprocess.Popen[bytes]]) -> None:
    spec, proc = running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = run_job(spec)
    with Store(summary.db_path, readonly=True) as store:
        assert [r["status"] for r in store.runs()] == ["killed", "finished"]


def test_retry_refuses_unknown_codes_and_status_shows_queued_rows(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:20], {"limits": {"requests_per_minute": 60_000}})
    assert run_job(spec).exit_code == 1  # "item number 7" fails with InvalidParameter
    bogus = CliRunner().invoke(cli, ["retry", str(spec), "--codes", "Bogus"])
    assert bogus.exit_code == 2
    assert "no failed row has code(s) Bogus; codes present: InvalidParameter (1)" in bogus.output
    assert invoke("retry", str(spec), "--codes", "InvalidParameter").exit_code == 0
    assert "1 of the failed queued for the next run" in invoke("status", str(spec)).output
