"""Killing a run in a subprocess, then resuming it: SIGKILL again and again, and the graceful
SIGTERM / SIGINT.

Each run, killed or resumed, talks to a simulator of its own, so the requests one service
received are exactly those of one run (a killed run's last requests may still be reaching
its service when the next run starts).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from helpers import API_KEY, Launch, query, read_table, write_job

from batchrunner import RunSummary, run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread

N = 400
CONCURRENCY = 16
ROWS = [{"id": f"r{i}", "text": f"row {i:04d}"} for i in range(N)]
EVERY_PROMPT = {f"Say something about row {i:04d}" for i in range(N)}


def job(tmp_path: Path) -> Path:
    return write_job(tmp_path, ROWS, {"limits": {"concurrency": CONCURRENCY, "commit_interval_ms": 50}})


def stored(db: Path) -> set[str]:
    """The prompts of the rows stored as ok."""
    rows = query(db, "SELECT row_id FROM results_view WHERE status = 'ok'")
    return {f"Say something about row {int(i[1:]):04d}" for (i,) in rows}


def answered(handle: ThreadHandle) -> list[str]:
    return [r.prompt for r in handle.sim.log if r.status == 200]


def run_on_a_new_service(
    spec: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None = None
) -> tuple[RunSummary, list[str]]:
    """Run the job in-process against a simulator of its own: its summary and the prompts sent."""
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as service:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", service.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
        summary = run_job(spec, handle_signals=False, limit=limit)
    return summary, [r.prompt for r in service.sim.log]


def store_of(spec: Path) -> Path:
    return spec.parent / "out" / "t.sqlite"


def check_resume(summary: RunSummary, sent: list[str], stored_before: set[str], db: Path) -> None:
    """The resume sent exactly the rows not stored yet, once each, and the job is complete."""
    assert summary.exit_code == 0
    assert sorted(sent) == sorted(EVERY_PROMPT - stored_before), "a stored row was sent again, or one twice"
    assert read_table(summary.output_path)["status"].to_list() == ["ok"] * N
    assert query(db, "SELECT count(*), count(DISTINCT row_id) FROM results_view") == [(N, N)]
    ok_attempts = Counter(k for (k,) in query(db, "SELECT key FROM attempts_view WHERE outcome = 'ok'"))
    assert len(ok_attempts) == N and set(ok_attempts.values()) == {1}  # one stored success per row


def test_sigkill_again_and_again_then_resume_rebuys_only_what_was_not_yet_stored(
    tmp_path: Path, launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = job(tmp_path)
    db = store_of(spec)
    run_on_a_new_service(spec, monkeypatch, limit=40)  # so the first kill surely has stored rows to keep
    before = stored(db)
    assert len(before) == 40
    rng = random.Random(11)
    kills = 3
    not_yet_stored: set[str] = set()  # answered by a killed run's service, not in the store at its kill
    answers: Counter[str] = Counter()
    for _ in range(kills):
        with serve_in_thread(SimulatorConfig(latency_ms=20), "127.0.0.1", 0) as service:
            env = {**os.environ, "DASHSCOPE_BASE_URL": service.base_url, "DASHSCOPE_API_KEY": API_KEY}
            proc = launch("run", str(spec), "-q", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            reached = service.sim.wait_for_requests(rng.randint(40, 80), timeout=60)
            proc.kill()
            _, err = proc.communicate(timeout=30)
            assert reached, err.decode()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        after = stored(db)
        sent = [r.prompt for r in service.sim.log]
        assert not set(sent) & before, "a killed run sent a row that was already stored"
        assert len(sent) == len(set(sent))
        assert before <= after < EVERY_PROMPT  # nothing stored is lost; the run was cut short
        assert after - before <= set(answered(service)), "a row was stored that the service never answered"
        not_yet_stored |= set(answered(service)) - after
        answers.update(answered(service))
        before = after
    # each run marks the one killed before it; the last is marked by the resume below
    assert query(db, "SELECT status FROM runs ORDER BY id") == [("finished",)] + [("killed",)] * (kills - 1) + [
        ("running",)
    ]
    summary, sent = run_on_a_new_service(spec, monkeypatch)
    answers.update(sent)
    check_resume(summary, sent, before, db)
    # paid twice: only rows a kill caught in flight, or answered but not committed yet
    bought_twice = {prompt for prompt, n in answers.items() if n > 1}
    assert bought_twice <= not_yet_stored, bought_twice - not_yet_stored


@pytest.mark.sim(latency_ms=40)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_130_and_keeps_every_answer(
    tmp_path: Path, sim: ThreadHandle, launch: Launch, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    spec = job(tmp_path)
    proc = launch("run", str(spec), "--quiet", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sim.sim.wait_for_requests(60, timeout=60)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"resume" in err
    db = store_of(spec)
    done = stored(db)
    # graceful: every answer the service gave is in the store, and nothing else
    assert sorted(answered(sim)) == sorted(done)
    assert query(db, "SELECT status, exit_code FROM runs") == [("interrupted", 130)]
    summary, sent = run_on_a_new_service(spec, monkeypatch)
    check_resume(summary, sent, done, db)
