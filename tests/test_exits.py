"""Every exit path ends, quickly and with its exit code: refused keys, wrong paths, bad keys,
signals, and a run whose every worker is stuck. Each run is a real `batchrunner run` process
against the simulator, ended by the fixture whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import write_job

from batchrunner import Progress, run_job
from batchrunner.records import Result
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.store import Store
from batchrunner.writer import load_spilled

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(320)]
LIMITS = {"concurrency": 16, "max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "grace_s": 30}
HANG_S = 60  # a run still going after this long is a hang


Launch = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Starts `batchrunner run` processes; each is killed (its group) and reaped at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(spec: Path, *, key: str = "sk-good", base_url: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
        env.update(DASHSCOPE_API_KEY=key, DASHSCOPE_BASE_URL=base_url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrunner", "run", str(spec), "--quiet", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def ended(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """(exit code, stderr); fails the test if the run does not end (a hang)."""
    try:
        _, err = proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end within {HANG_S} s")
    return proc.returncode, err


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(valid_keys=frozenset({"sk-good"}), latency_ms=20)


@pytest.fixture
def served(sim_config: SimulatorConfig) -> Iterator[ThreadHandle]:
    with serve_in_thread(sim_config, "127.0.0.1", 0) as handle:
        yield handle


def test_a_refused_key_ends_the_run_with_exit_3(tmp_path: Path, served: ThreadHandle, launch: Launch) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": LIMITS})
    code, err = ended(launch(spec, key="sk-wrong", base_url=served.base_url))
    assert code == 3, err
    assert "InvalidApiKey" in err and "sk-wrong" not in err
    assert len(served.sim.log) <= LIMITS["concurrency"]  # it stopped dispatching at once


@pytest.mark.parametrize(
    "sim_config", [SimulatorConfig(latency_ms=5, faults=(FaultRule("number 250", ("always:InvalidApiKey",)),))]
)
def test_a_key_revoked_mid_run_ends_it_and_keeps_the_answers(
    tmp_path: Path, served: ThreadHandle, launch: Launch
) -> None:
    # The service answers 200s, then 401 from row "item number 250" on.
    spec = write_job(tmp_path, ROWS, {"limits": LIMITS})
    code, err = ended(launch(spec, base_url=served.base_url))
    assert code == 3, err
    answered = sum(1 for r in served.sim.log if r.status == 200)
    with Store(tmp_path / "out" / "t.sqlite", readonly=True) as store:
        ok, failed = store.counts().get("ok", 0), store.counts().get("failed", 0)
        received = sum(store.attempt_counts("ok").values())
        cancelled = sum(store.attempt_counts("cancelled").values())
    assert ok == received >= 200  # every answer received was committed
    assert answered <= received + cancelled  # the rest were cut off in flight, and logged so
    assert failed == 0  # nothing was marked failed for the key


def test_a_wrong_base_path_ends_the_run_with_exit_3(tmp_path: Path, served: ThreadHandle, launch: Launch) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": LIMITS})
    code, err = ended(launch(spec, base_url=served.base_url.replace("/api/v1", "/api/v2")))
    assert code == 3, err
    assert "404" in err


@pytest.mark.parametrize("key", ["sk-go\nod", "sk-\x7fgood", "sk-gööd"])
def test_a_key_that_cannot_be_sent_is_refused_before_sending(
    tmp_path: Path, served: ThreadHandle, launch: Launch, key: str
) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": LIMITS})
    code, err = ended(launch(spec, key=key, base_url=served.base_url))
    assert code == 2, err
    assert "DASHSCOPE_API_KEY" in err and key.strip() not in err
    assert served.sim.log == []


@pytest.mark.parametrize(
    "sim_config", [SimulatorConfig(latency_ms=0, slow_s=600, faults=(FaultRule("item", ("always:slow",)),))]
)
def test_a_run_whose_every_worker_is_stuck_still_ends_after_a_signal(
    tmp_path: Path, served: ThreadHandle, launch: Launch
) -> None:
    limits = {**LIMITS, "grace_s": 1, "timeout_s": 3600}
    spec = write_job(tmp_path, ROWS, {"limits": limits})
    proc = launch(spec, base_url=served.base_url)
    assert served.sim.wait_for_in_flight(LIMITS["concurrency"], timeout=HANG_S)
    proc.send_signal(signal.SIGTERM)
    code, err = ended(proc)
    assert code == 130, err


BLOCKING_RUN = """
import sys, time
from batchrunner import Progress, run_job

class Blocking(Progress):
    def row_finished(self, result):
        print("blocked", flush=True)
        time.sleep(3600)  # a display that blocks the event loop: nothing async can run now

summary = run_job(sys.argv[1], progress=Blocking(), handle_signals=True)
print("returned", summary.exit_code, flush=True)
"""


@pytest.mark.parametrize("signals", [1, 2])
def test_a_run_whose_event_loop_is_blocked_still_ends_after_a_signal(
    tmp_path: Path, served: ThreadHandle, signals: int
) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": {**LIMITS, "grace_s": 1}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env.update(DASHSCOPE_API_KEY="sk-good", DASHSCOPE_BASE_URL=served.base_url)
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_RUN, str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "blocked"
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
        code, err = ended(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert code == 130, err
    assert "still running" in err and "Run again to resume" in err


class SignalsAfterFirstAnswers(Progress):
    """Sends this process SIGINT once `after` answers are in (as a person pressing Ctrl-C)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    def row_finished(self, result: Result) -> None:
        self.seen += 1
        if self.seen == self.after:
            os.kill(os.getpid(), signal.SIGINT)


def test_the_first_signal_stops_sending_even_requests_waiting_in_the_pacer(
    tmp_path: Path, served: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", served.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-good")
    limits = {**LIMITS, "requests_per_minute": 120, "grace_s": 5}  # two a second: most rows wait
    summary = run_job(
        write_job(tmp_path, ROWS, {"limits": limits}), progress=SignalsAfterFirstAnswers(3), handle_signals=True
    )
    assert summary.exit_code == 130
    sent = len(served.sim.log)
    assert sent <= 3 + 2  # what was answered, plus what was already on the wire
    assert summary.counts.ok == sent


BLOCKED_WITH_A_LOCKED_STORE = """
import sqlite3, sys, time
from batchrunner import Progress, run_job

class Blocking(Progress):
    def __init__(self):
        self.n = 0
    def row_finished(self, result):
        self.n += 1
        if self.n == 20:
            shell = sqlite3.connect(sys.argv[2], isolation_level=None)
            shell.execute("BEGIN IMMEDIATE")  # a person's sqlite3 shell holds the store
            print("locked", flush=True)
            time.sleep(3600)  # and the event loop is stuck as well

run_job(sys.argv[1], progress=Blocking(), handle_signals=True)
"""


def test_the_watchdog_keeps_uncommitted_answers_before_it_ends_the_process(
    tmp_path: Path, served: ThreadHandle
) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": {**LIMITS, "grace_s": 1}})
    db = tmp_path / "out" / "t.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env.update(DASHSCOPE_API_KEY="sk-good", DASHSCOPE_BASE_URL=served.base_url, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WITH_A_LOCKED_STORE, str(spec), str(db)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        proc.send_signal(signal.SIGTERM)
        code, err = ended(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert code == 130, err
    answered = sum(1 for r in served.sim.log if r.status == 200)
    with Store(db) as store:  # the next run: loads what the watchdog kept aside
        loaded = load_spilled(store)
        ok = store.counts().get("ok", 0)
    assert loaded > 0
    # the 20 answers received before the loop froze are all in the store now (the service
    # answered more, but those were still unread on the sockets: in flight when it died)
    assert ok == 20 <= answered
