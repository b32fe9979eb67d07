"""The pacer against the simulator over loopback: a spec that declares ten times the account's
real rate limit still finishes every row, and the 429s stop once the pacer has learned it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_table, write_job

from batchrunner import run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(40)]


@pytest.fixture
def slow_account(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    """A service that allows 600 requests a minute (ten a second), logging every request."""
    with serve_in_thread(SimulatorConfig(rpm=600, keep_log=True), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-slow")
        yield handle


def test_a_spec_declaring_ten_times_the_real_limit_converges_and_finishes_every_row(
    tmp_path: Path, slow_account: ThreadHandle
) -> None:
    limits = {"requests_per_minute": 6000, "concurrency": 16, "backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    summary = run_job(write_job(tmp_path, ROWS, {"limits": limits}))
    assert summary.exit_code == 0, summary.message
    assert read_table(summary.output_path)["status"].to_list() == ["ok"] * len(ROWS)
    arrivals = sorted(slow_account.sim.log, key=lambda r: r.time)
    statuses = [r.status for r in arrivals]
    throttled = statuses.count(429)
    # the first 429 teaches the real rate: no storm of them, only a probe above it now and
    # then (each one further apart), so the last requests all go through
    assert 0 < throttled <= 5
    assert statuses[-10:] == [200] * 10
