"""Shared fixtures. Simulator fixtures: `sim_config` (override it to change the config),
`sim_server` (served on the test's own loop) and `sim_thread` (served from a thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from batchrunner.simulator import Simulator, SimulatorConfig, ThreadHandle, serve_in_thread


@dataclass(frozen=True)
class SimServer:
    """A simulator served on the running test loop: its base URL and the Simulator."""

    base_url: str
    sim: Simulator


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """The config the simulator fixtures serve; override in a module or test to change it."""
    return SimulatorConfig()


@pytest.fixture
async def sim_server(sim_config: SimulatorConfig) -> AsyncIterator[SimServer]:
    """A Simulator(sim_config) listening on 127.0.0.1 inside the test's event loop."""
    sim = Simulator(sim_config)
    async with sim.serve("127.0.0.1", 0) as base_url:
        yield SimServer(base_url, sim)


@pytest.fixture
def sim_thread(sim_config: SimulatorConfig) -> Iterator[ThreadHandle]:
    """A Simulator(sim_config) listening on 127.0.0.1 from its own thread (for sync code)."""
    with serve_in_thread(sim_config, "127.0.0.1", 0) as handle:
        yield handle
