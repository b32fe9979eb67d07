"""Shared fixtures.

Environment: every test starts with no DASHSCOPE_* variable set (`_no_dashscope_env`), so
nothing depends on the developer's shell; tests set what they need with monkeypatch.

Simulator: `sim_config` is SimulatorConfig() unless the test, its class or its module carries
`@pytest.mark.sim(...)`: `sim(CONFIG)`, `sim(field=value, ...)` or both (fields replaced in
CONFIG); the closest marker wins. `sim` serves it from a thread and points DASHSCOPE_BASE_URL
and DASHSCOPE_API_KEY (the `api_key` fixture; override it to choose the key) at it;
`sim_thread` serves it without touching the environment; `sim_server` serves it on the
test's own event loop.

Subprocesses: `launch` starts `python -m batchrunner ...` in a process group of its own and
ends every process it started when the test ends, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from batchtools import JumpClock
from helpers import API_KEY, Launch

from batchrunner.simulator import Simulator, SimulatorConfig, ThreadHandle, serve_in_thread


@pytest.fixture(autouse=True)
def _no_dashscope_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every DASHSCOPE_* variable (key, base URL, ...) for the test's duration."""
    for name in list(os.environ):
        if name.startswith("DASHSCOPE_"):
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class SimServer:
    """A simulator served on the running test loop: its base URL and the Simulator."""

    base_url: str
    sim: Simulator


@pytest.fixture
def sim_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    """The config the simulator fixtures serve, from the closest `sim` marker (if any)."""
    marker = request.node.get_closest_marker("sim")
    if marker is None:
        return SimulatorConfig()
    if len(marker.args) > 1 or not all(isinstance(a, SimulatorConfig) for a in marker.args):
        raise TypeError(f"@pytest.mark.sim takes at most one SimulatorConfig, got {marker.args!r}")
    base = marker.args[0] if marker.args else SimulatorConfig()
    return dataclasses.replace(base, **marker.kwargs)


@pytest.fixture
def api_key() -> str:
    """The key the `sim` fixture exports as DASHSCOPE_API_KEY."""
    return API_KEY


@pytest.fixture
def sim_thread(sim_config: SimulatorConfig) -> Iterator[ThreadHandle]:
    """A Simulator(sim_config) listening on 127.0.0.1 from its own thread (for sync code)."""
    with serve_in_thread(sim_config, "127.0.0.1", 0) as handle:
        yield handle


@pytest.fixture
def sim(sim_thread: ThreadHandle, api_key: str, monkeypatch: pytest.MonkeyPatch) -> ThreadHandle:
    """`sim_thread`, with DASHSCOPE_BASE_URL and DASHSCOPE_API_KEY pointing a job at it."""
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim_thread.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", api_key)
    return sim_thread


@pytest.fixture
async def sim_server(sim_config: SimulatorConfig) -> AsyncIterator[SimServer]:
    """A Simulator(sim_config) listening on 127.0.0.1 inside the test's event loop."""
    sim = Simulator(sim_config)
    async with sim.serve("127.0.0.1", 0) as base_url:
        yield SimServer(base_url, sim)


@pytest.fixture
def launch() -> Iterator[Launch]:
    """launch(*args, **popen_kwargs): start `python -m batchrunner *args` (by default with the
    test's environment, so what `sim` exported reaches it) in a new process group.

    At teardown every process still running is SIGKILLed with its whole group; each one is
    then waited for and its pipes closed.
    """
    started: list[subprocess.Popen[Any]] = []

    def start(*args: str, **popen: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner", *args], start_new_session=True, **popen)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:  # not reaped yet, so its pid (the group's id) is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with proc:  # closes the pipes and waits
            pass


@pytest.fixture
def jump() -> JumpClock:
    return JumpClock()


@pytest.fixture
def bsim(
    jump: JumpClock, sim_config: SimulatorConfig, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ThreadHandle]:
    """A simulator whose batches run on the test's JumpClock, with a job pointed at it."""
    with serve_in_thread(dataclasses.replace(sim_config, clock=jump.time), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", api_key)
        yield handle
