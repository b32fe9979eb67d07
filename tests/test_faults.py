"""Failure: a fault mix, 429 storms and an outage (circuit breaker). SIGKILLs: test_kill.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from helpers import query, write_job

from batchrunner import run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread

# seeded: the same requests get the same faults on every machine; the injected 429s make the
# storm certain even where the client is too slow to outrun the service's 50 requests a second
MIX = {"500": 0.10, "503": 0.02, "429": 0.05, "drop": 0.03, "malformed": 0.01, "slow": 0.01}


@pytest.mark.sim(rpm=3000, fault_mix=MIX, slow_s=2.0, rng_seed=7)
def test_fault_mix_and_429_storm_end_with_every_row_ok_once(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": f"fault row {i:04d}"} for i in range(300)]
    limits = {
        "requests_per_minute": 12_000,  # four times what the service allows: a 429 storm
        "concurrency": 32,
        "timeout_s": 0.5,
        "max_retries": 30,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "breaker_window": 0,  # the breaker has its own test; here timeouts on a slow machine must not trip it
    }
    summary = run_job(write_job(tmp_path, rows, {"limits": limits}), handle_signals=False)
    stats = sim.sim.stats()
    assert summary.exit_code == 0 and summary.table == {"ok": 300}
    injected = stats["faults_injected"]
    assert {"500", "503", "429", "drop", "malformed", "slow"} <= set(injected)
    # every 429 is counted: those of the rate limit and the injected ones
    assert summary.counts.throttled == stats["throttled"] + injected["429"]
    db = summary.db_path
    assert query(db, "SELECT count(*), count(DISTINCT row_id) FROM results_view") == [(300, 300)]
    ((attempts,),) = query(db, "SELECT count(*) FROM attempts_view")
    ok_per_key = Counter(k for (k,) in query(db, "SELECT key FROM attempts_view WHERE outcome = 'ok'"))
    ((billed,),) = query(db, "SELECT count(*) FROM attempts_view WHERE possibly_billed = 1 AND outcome != 'ok'")
    ((timeouts,),) = query(db, "SELECT count(*) FROM attempts_view WHERE error_code = 'ReadTimeout'")
    assert attempts == summary.counts.attempts
    # every attempt reached the service; one the client gave up on may still be sleeping there
    # (of the timed-out ones, those the service has finished are the "slow" faults it counted)
    assert attempts - (timeouts - injected["slow"]) <= stats["requests"] <= attempts
    assert set(ok_per_key.values()) == {1} and len(ok_per_key) == 300
    # possibly billed: the dropped, the malformed and the timed-out attempts, and nothing else
    assert billed == injected["drop"] + injected["malformed"] + timeouts


@pytest.mark.sim(fault_mix={"500": 1.0})
def test_an_outage_trips_the_circuit_breaker_and_resumes(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"id": f"r{i}", "text": f"outage row {i}"} for i in range(200)]
    limits = {
        "concurrency": 4,
        "max_retries": 50,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "breaker_window": 20,
    }
    spec = write_job(tmp_path, rows, {"limits": limits})
    summary = run_job(spec, handle_signals=False)
    sent_while_down = sim.sim.stats()["requests"]
    assert summary.exit_code == 5 and summary.status == "outage"
    assert "circuit breaker: 100% of the last 20 attempts failed" in summary.message
    assert sent_while_down <= 20 + 4  # the window, plus what was in flight
    assert summary.table == {"pending": 200}
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as up:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", up.base_url)
        assert run_job(spec, handle_signals=False).table == {"ok": 200}
