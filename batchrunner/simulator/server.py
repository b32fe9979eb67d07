"""Running a simulator outside a test's own loop: in a background thread, or blocking (CLI)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from .app import API_PREFIX, Simulator
from .compat import COMPAT_BASE
from .config import SimulatorConfig

START_TIMEOUT_S = 10.0


@dataclass(slots=True)
class ThreadHandle:
    """A simulator serving from its own thread: its base URL, the Simulator and its thread."""

    base_url: str
    sim: Simulator
    thread: threading.Thread

    @property
    def compat_base_url(self) -> str:
        """The base URL for OpenAI clients, e.g. http://127.0.0.1:5432/compatible-mode/v1."""
        return self.base_url.removesuffix(API_PREFIX) + COMPAT_BASE


def _simulator(cfg: SimulatorConfig | Simulator | None) -> Simulator:
    return cfg if isinstance(cfg, Simulator) else Simulator(cfg)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when uvloop happens to be installed (faster), else asyncio's default."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@contextmanager
def serve_in_thread(
    cfg: SimulatorConfig | Simulator | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[ThreadHandle]:
    """Serve a simulator from a new thread with its own event loop until the block ends.

    `cfg` may also be a ready Simulator. Raises RuntimeError if the server cannot start.
    """
    sim = _simulator(cfg)
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        state["loop"] = asyncio.get_running_loop()
        try:
            async with sim.serve(host, port) as base_url:
                state["url"] = base_url
                ready.set()
                await stop.wait()
        except BaseException as exc:
            state["error"] = exc
            raise
        finally:
            ready.set()

    def target() -> None:
        with suppress(BaseException):
            asyncio.run(main())

    thread = threading.Thread(target=target, name="dashscope-simulator", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_S) or "url" not in state:
        msg = f"simulator did not start on {host}:{port}: {state.get('error', 'timed out')}"
        raise RuntimeError(msg)
    try:
        yield ThreadHandle(str(state["url"]), sim, thread)
    finally:
        loop = state["loop"]
        stop = state["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
        with suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)
        thread.join(START_TIMEOUT_S)


def run_simulator(
    cfg: SimulatorConfig | Simulator | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until Ctrl-C; `on_ready` gets the base URL once listening."""
    sim = _simulator(cfg)

    async def main() -> None:
        async with sim.serve(host, port) as base_url:
            if on_ready is not None:
                on_ready(base_url)
            await asyncio.Event().wait()

    with suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
