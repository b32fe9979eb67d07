"""`[limits] processes = N`: worker processes send, the parent paces, retries and writes.
Over real loopback against the simulator, with real spawned processes (ended by the pool, and
by the test's fixtures when a test fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Launch, query, read_table, write_job

from batchrunner.client import CallFailed
from batchrunner.render import Request, canonical, key_of
from batchrunner.runner import run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle
from batchrunner.spec import load
from batchrunner.workers import WorkerPool, WorkerSettings, processes_for


def request(i: int, model: str = "qwen-plus") -> Request:
    body = {"model": model, "input": {"messages": [{"role": "user", "content": f"question {i}"}]}, "parameters": {}}
    content = canonical(body)
    path = "/services/aigc/text-generation/generation"
    return Request(key_of(path, content), i, f"r{i}", path, body, 5, content=content)


def settings(sim: ThreadHandle, api_key: str) -> WorkerSettings:
    return WorkerSettings(sim.base_url, api_key, 30.0, 8, "dashscope", False)


def test_processes_auto_is_the_machines_cores() -> None:
    assert processes_for("auto") == (os.cpu_count() or 1) and processes_for(3) == 3


def test_two_workers_share_the_requests_and_answer_like_one_client(sim: ThreadHandle, api_key: str) -> None:
    async def go() -> tuple[list[str], list[int], BaseException]:
        async with WorkerPool(2, settings(sim, api_key)) as pool:
            answers = await asyncio.gather(*(pool.generate(request(i)) for i in range(20)))
            with pytest.raises(CallFailed) as refused:
                await pool.generate(request(99, model="no-such-model"))
            return [a.content or "" for a in answers], [w.sent for w in pool.workers], refused.value

    contents, sent, refused = asyncio.run(go())
    assert len(contents) == 20 and all(contents)
    assert sum(sent) == 21 and min(sent) > 0  # both workers sent
    assert isinstance(refused, CallFailed) and refused.error.status in (400, 404)
    assert sim.sim.stats()["requests"] == 21


@pytest.mark.sim(SimulatorConfig(latency_ms=400))
def test_a_worker_killed_mid_run_is_replaced_and_only_its_requests_go_again(sim: ThreadHandle, api_key: str) -> None:
    async def go() -> tuple[int, int, int]:
        async with WorkerPool(2, settings(sim, api_key)) as pool:
            pending = [asyncio.ensure_future(pool.generate(request(i))) for i in range(10)]
            assert await asyncio.to_thread(sim.sim.wait_for_in_flight, 10, 10.0)  # all ten are being served
            victim = pool.workers[0]
            lost = len(victim.in_flight)
            assert victim.process.pid is not None
            os.kill(victim.process.pid, signal.SIGKILL)
            answers = await asyncio.gather(*pending)
            assert all(a.content for a in answers)
            return lost, pool.replaced, len(pool.workers)

    lost, replaced, alive = asyncio.run(go())
    assert replaced == 1 and alive == 2 and lost > 0
    # The service saw each request once, plus the dead worker's requests, and only those, again.
    assert sim.sim.stats()["requests"] == 10 + lost


def test_a_job_with_two_processes_gives_the_same_table(tmp_path: Path, sim: ThreadHandle) -> None:
    one = write_job(tmp_path / "one", overrides={"limits": {"processes": 1}})
    two = write_job(tmp_path / "two", overrides={"limits": {"processes": 2, "concurrency": 8}})
    first, second = run_job(one), run_job(two)
    assert first.exit_code == second.exit_code == 0
    a, b = read_table(first.output_path), read_table(second.output_path)  # type: ignore[arg-type]
    assert a.sort("id")["content"].to_list() == b.sort("id")["content"].to_list()
    assert query(load(two).db_path, "SELECT count(*) FROM attempts") == [(20,)]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.sim(SimulatorConfig(latency_ms=300))
def test_a_sigkilled_run_takes_its_workers_with_it_and_resumes(
    tmp_path: Path, sim: ThreadHandle, launch: Launch
) -> None:
    spec = write_job(tmp_path, overrides={"limits": {"processes": 2, "concurrency": 4}})
    proc = launch("run", str(spec), "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sim.sim.wait_for_in_flight(4, 30.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15  # the workers see their pipes close and end
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(proc.pid), "worker processes outlived their parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    summary = run_job(spec)
    assert summary.exit_code == 0 and read_table(summary.output_path).height == 20  # type: ignore[arg-type]
