"""A virtual clock for pacing tests, and counts of times inside windows.

`VirtualTimeLoop.time()` is a virtual clock: it stands still while anything is ready to run
and, when the loop would wait for its next timer, jumps to it. `asyncio.sleep` and the pacers'
wake-ups therefore take no wall time, and counts of starts inside windows of virtual time come
out the same on an idle laptop and on a loaded CI machine. `late_by` (seconds, or a function
giving each wake-up's lateness) makes timers fire late, as on a busy machine; `stall` makes the
loop itself stop for a while, as a long garbage collection or a descheduled process would.
"""

from __future__ import annotations

import asyncio
import selectors
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from itertools import pairwise
from typing import Any, TypeVar

T = TypeVar("T")
TICK = 1e-9  # virtual time per turn of the loop: even a sleep too short to change a float comes to an end
Lateness = float | Callable[[], float]


class _VirtualSelector(selectors.DefaultSelector):
    """Polls for I/O without blocking; a wait for the next timer becomes a jump of the clock."""

    def __init__(self, late_by: Lateness) -> None:
        super().__init__()
        self.now = 0.0
        self.late_by = late_by

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        self.now += TICK
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: every task is waiting and no timer is set (a deadlock)")
        late = self.late_by() if callable(self.late_by) else self.late_by
        self.now += timeout + late
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is the virtual clock of its selector."""

    def __init__(self, late_by: Lateness = 0.0) -> None:
        self._clock = _VirtualSelector(late_by)
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now

    def stall(self, seconds: float) -> None:
        """The loop stops for `seconds`: whatever runs next runs that much later."""
        self._clock.now += seconds


def in_virtual_time(main: Coroutine[Any, Any, T], *, late_by: Lateness = 0.0) -> T:
    """Run `main` to completion on a new VirtualTimeLoop (virtual time starts at 0)."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(late_by)) as runner:
        return runner.run(main)


def now() -> float:
    return asyncio.get_running_loop().time()


def stall(seconds: float) -> None:
    """Stop the running VirtualTimeLoop for `seconds` (see `VirtualTimeLoop.stall`)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    loop.stall(seconds)


def in_each_window(times: list[float], span: float, count: int, origin: float = 0.0) -> list[int]:
    """How many of the sorted `times` fall in [origin + k * span, origin + (k + 1) * span), k < count."""
    edges = [bisect_left(times, origin + k * span) for k in range(count + 1)]
    return [b - a for a, b in pairwise(edges)]


def from_each(times: list[float], span: float) -> list[int]:
    """How many of the sorted `times` fall in [t, t + span), for the window opening at each t."""
    return [bisect_left(times, t + span) - i for i, t in enumerate(times)]
