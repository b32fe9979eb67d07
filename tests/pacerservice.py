"""The service's per-second window on the virtual clock of `VirtualTimeLoop`, for the request
pacer's tests (test_pacer_adapt.py, test_pacer_reading.py): a `SlidingWindow` of admitted
requests, as the simulator keeps it, counted when each start reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from virtualclock import now

from batchrunner.pacing import RequestPacer
from batchrunner.simulator.limits import SlidingWindow


class Service:
    """A start reaches the service `reach(t)` after it left (a stall there holds every arrival
    until it ends); an admitted call is answered `latency` later (a number, or a function
    giving each call's), a refused one at once. With `answer_times`, each answer tells the
    pacer which start it answers (`on_success(start)`), as the job does."""

    def __init__(
        self,
        rpm: int,
        *,
        latency: float | Callable[[], float] = 0.2,
        reach: Callable[[float], float] = lambda t: 0.001,
        retry_after: float | None = None,
        answer_times: bool = False,
    ) -> None:
        self.window = SlidingWindow.per_minute(rpm)
        self.latency = latency
        self.reach = reach
        self.retry_after = retry_after
        self.answer_times = answer_times
        self.admitted: list[float] = []  # arrival times, as the service counts them
        self.refused: list[float] = []

    async def call(self, pacer: RequestPacer) -> bool:
        left = await pacer.wait()
        await asyncio.sleep(self.reach(left))
        at = now()
        if not self.window.fits(at):
            self.refused.append(at)
            pacer.on_throttled(left, self.retry_after)
            return False
        self.window.add(at)
        self.admitted.append(at)
        await asyncio.sleep(self.latency() if callable(self.latency) else self.latency)
        pacer.on_success(left if self.answer_times else None)
        return True


def stalls(*spells: tuple[float, float]) -> Callable[[float], float]:
    """A `reach` for a service that stops taking requests in each (start, length) spell: what
    leaves during one reaches it when the spell ends; anything else, 1 ms after it left."""

    def reach(t: float) -> float:
        for start, length in spells:
            if start <= t < start + length:
                return start + length - t + 0.001
        return 0.001

    return reach


async def workers(n: int, until: float, work: Callable[[], Awaitable[object]]) -> None:
    """`n` workers call `work` back to back until `until` (virtual seconds)."""

    async def one() -> None:
        while now() < until:
            await work()

    await asyncio.gather(*(one() for _ in range(n)))


def count(times: list[float], start: float, end: float = float("inf")) -> int:
    return sum(1 for t in times if start <= t < end)
