"""A 429 while the pacer is finding the real rate never fails a row; a run that cannot even
connect says why and exits 2 (a configuration error), not 5 (an outage)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_table, write_job

from batchrunner import SpecError, run_job
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(100)]
FAST_RETRY = {"backoff_initial_s": 0.01, "backoff_max_s": 0.2}


@pytest.fixture
def strict_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    """A service that allows 1,200 requests a minute."""
    with serve_in_thread(SimulatorConfig(rpm=1200), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-rate")
        yield handle


def test_an_over_declared_rate_limit_fails_no_row(tmp_path: Path, strict_service: ThreadHandle) -> None:
    limits = {"requests_per_minute": 12_000, "concurrency": 32, "max_retries": 1, **FAST_RETRY}
    summary = run_job(write_job(tmp_path, ROWS, {"limits": limits}))
    assert strict_service.sim.stats()["throttled"] > 0  # the spec promised ten times too much
    assert summary.exit_code == 0, summary.message
    assert read_table(summary.output_path)["status"].to_list() == ["ok"] * len(ROWS)


def test_throttling_is_bounded_by_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows the service answers 429 however slowly they come (the pacer cannot fix that) fail
    once they have been throttled for throttle_patience_s."""
    limits = {"requests_per_minute": 12_000, "concurrency": 32, "throttle_patience_s": 0.05, **FAST_RETRY}
    refusing = SimulatorConfig(faults=(FaultRule("item number 99", ("always:429",)),))
    with serve_in_thread(refusing, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-rate")
        summary = run_job(write_job(tmp_path, ROWS, {"limits": limits}))
    table = read_table(summary.output_path)
    failed = table.filter(table["status"] == "failed")
    assert failed.height > 0 and summary.exit_code == 1
    assert all("throttled for" in m for m in failed["error_message"].to_list())


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, sim_thread: ThreadHandle) -> Iterator[ThreadHandle]:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-nowhere")
    yield sim_thread


def test_a_wrong_port_is_a_configuration_error(
    tmp_path: Path, nowhere: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9/api/v1")  # nothing listens there
    summary = run_job(write_job(tmp_path, ROWS, {"limits": FAST_RETRY}))
    assert summary.exit_code == 2 and summary.status == "unreachable"
    assert "could not be reached: ConnectError" in summary.message
    assert summary.output_path is None  # nothing was sent, so no table is written


def test_https_to_a_plain_http_server_names_the_tls_error(
    tmp_path: Path, nowhere: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", nowhere.base_url.replace("http://", "https://"))
    summary = run_job(write_job(tmp_path, ROWS, {"limits": FAST_RETRY}))
    assert summary.exit_code == 2
    assert "TLSError" in summary.message and "scheme" in summary.message
    assert nowhere.sim.stats()["requests"] == 0


def test_a_base_url_that_is_not_http_is_refused_before_sending(
    tmp_path: Path, nowhere: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "ftp://127.0.0.1/api/v1")
    with pytest.raises(SpecError, match="is not an http\\(s\\) URL"):
        run_job(write_job(tmp_path, ROWS, {"limits": FAST_RETRY}))
    assert nowhere.sim.stats()["requests"] == 0
