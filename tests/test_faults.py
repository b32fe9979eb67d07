"""Failure: a fault mix, 429 storms, an outage (circuit breaker), and repeated SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from helpers import read_table, write_job

from batchrunner import run_job
from batchrunner.simulator import SimulatorConfig, serve_in_thread

KEY = "sk-test-faults"


def env_for(base_url: str) -> dict[str, str]:
    return dict(os.environ, DASHSCOPE_BASE_URL=base_url, DASHSCOPE_API_KEY=KEY)


def test_fault_mix_and_429_storm_end_with_every_row_ok_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mix = {"500": 0.10, "503": 0.02, "drop": 0.03, "malformed": 0.01, "slow": 0.01}
    config = SimulatorConfig(rpm=3000, fault_mix=mix, slow_s=2.0, rng_seed=7)
    rows = [{"id": f"r{i}", "text": f"fault row {i:04d}"} for i in range(300)]
    limits = {
        "requests_per_minute": 12_000,  # four times what the service allows: a 429 storm
        "concurrency": 32,
        "timeout_s": 0.5,
        "max_retries": 30,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
    }
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
        summary = run_job(write_job(tmp_path, rows, {"limits": limits}), handle_signals=False)
        stats = handle.sim.stats()
    assert summary.exit_code == 0 and summary.table == {"ok": 300}
    injected = stats["faults_injected"]
    assert {"500", "503", "drop", "malformed", "slow"} <= set(injected)
    assert stats["throttled"] > 0 and summary.counts.throttled == stats["throttled"]
    with sqlite3.connect(summary.db_path) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT row_id) FROM results").fetchone() == (300, 300)
        (attempts,) = conn.execute("SELECT count(*) FROM attempts").fetchone()
        ok_per_key = Counter(k for (k,) in conn.execute("SELECT key FROM attempts WHERE outcome = 'ok'"))
        (billed,) = conn.execute(
            "SELECT count(*) FROM attempts WHERE possibly_billed = 1 AND outcome != 'ok'"
        ).fetchone()
    assert attempts == summary.counts.attempts
    # every attempt reached the service (a "slow" one may still be sleeping there)
    assert attempts - injected["slow"] <= stats["requests"] <= attempts
    assert set(ok_per_key.values()) == {1} and len(ok_per_key) == 300
    assert billed >= injected["drop"] + injected["malformed"] + injected["slow"]


def test_an_outage_trips_the_circuit_breaker_and_resumes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rows = [{"id": f"r{i}", "text": f"outage row {i}"} for i in range(200)]
    limits = {
        "concurrency": 4,
        "max_retries": 50,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "breaker_window": 20,
    }
    spec = write_job(tmp_path, rows, {"limits": limits})
    with serve_in_thread(SimulatorConfig(fault_mix={"500": 1.0}), "127.0.0.1", 0) as down:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", down.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
        summary = run_job(spec, handle_signals=False)
        sent_while_down = down.sim.stats()["requests"]
    assert summary.exit_code == 5 and summary.status == "outage"
    assert "circuit breaker: 100% of the last 20 attempts failed" in summary.message
    assert sent_while_down <= 20 + 4  # the window, plus what was in flight
    assert summary.table == {"pending": 200}
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as up:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", up.base_url)
        assert run_job(spec, handle_signals=False).table == {"ok": 200}


def test_repeated_sigkills_lose_nothing_and_store_nothing_twice(tmp_path: Path) -> None:
    n, concurrency, kills = 600, 16, 5
    rows = [{"id": f"r{i}", "text": f"kill row {i:04d}"} for i in range(n)]
    spec = write_job(tmp_path, rows, {"limits": {"concurrency": concurrency, "commit_interval_ms": 50}})
    rng = random.Random(11)
    kill_times: list[float] = []
    with serve_in_thread(SimulatorConfig(latency_ms=20), "127.0.0.1", 0) as handle:
        for _ in range(kills):
            target = handle.sim.stats()["answered"] + rng.randint(20, 90)
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchrunner", "run", str(spec), "-q"],
                env=env_for(handle.base_url),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                handle.sim.wait_for_requests(target, timeout=60)
            finally:
                proc.send_signal(signal.SIGKILL)
                kill_times.append(time.time())
                proc.wait(timeout=30)
        settle_from = time.time()
        final = subprocess.run(
            [sys.executable, "-m", "batchrunner", "run", str(spec), "-q"],
            env=env_for(handle.base_url),
            capture_output=True,
            timeout=120,
        )
        answered = [r for r in handle.sim.log if r.status == 200]
        answers = Counter(r.prompt for r in answered)
        late = [r for r in handle.sim.log if r.time >= settle_from]
    assert final.returncode == 0, final.stderr.decode()
    assert read_table(tmp_path / "out" / "result.csv")["status"].to_list() == ["ok"] * n
    with sqlite3.connect(tmp_path / "out" / "t.sqlite") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT row_id) FROM results").fetchone() == (n, n)
        ok_attempts = Counter(k for (k,) in conn.execute("SELECT key FROM attempts WHERE outcome = 'ok'"))
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert len(ok_attempts) == n and set(ok_attempts.values()) == {1}  # one stored success per row
    assert runs == kills + 1
    paid_twice = sum(count - 1 for count in answers.values())
    # Re-bought: only what was in flight at each kill (at most `concurrency`), or answered in the
    # moments before it that had not been committed yet (50 ms commit interval; 150 ms allowed).
    recent = sum(1 for t in kill_times for r in answered if t - 0.15 <= r.time <= t)
    assert paid_twice <= kills * concurrency + recent, (paid_twice, recent)
    assert len(late) <= n
