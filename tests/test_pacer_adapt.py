"""The request pacer against a service on the same virtual clock: late and stalled starts
never put more than the budget in a second; a 429 from jitter widens the window, one from a
lower real limit lowers the rate to it; both come back when the 429s stop; Retry-After holds.

`Service` (pacerservice.py) plays the simulator's rule (a `SlidingWindow` of admitted requests)
on the virtual clock of `VirtualTimeLoop`, so each test is a run of many seconds that takes
milliseconds and comes out the same on any machine.
"""

from __future__ import annotations

import asyncio
import random

from pacerservice import Service, count, workers
from virtualclock import from_each, in_virtual_time, now, stall

from batchrunner.pacing import BURST_S, RequestPacer

# ----------------------------------------------------------------- admission


def test_late_and_stalled_starts_never_put_more_than_the_budget_in_a_second() -> None:
    """30,000/min with every wake-up up to 12 ms late and three stalls of the whole loop (80 ms):
    counted on the times the starts really happened, no window holds more than 500, and a
    stall is caught up at twice the rate, never in a burst."""
    rng = random.Random(12)
    lateness = [0.0, 0.0, 0.001, 0.004, 0.012]

    async def main() -> tuple[RequestPacer, list[float]]:
        pacer = RequestPacer(30_000)
        starts: list[float] = []

        async def one() -> None:
            starts.append(await pacer.wait())

        async def staller() -> None:
            for at in (0.7, 1.9, 2.6):
                await asyncio.sleep(at - now())
                stall(0.08)

        await asyncio.gather(staller(), *(one() for _ in range(2500)))
        return pacer, sorted(starts)

    pacer, starts = in_virtual_time(main(), late_by=lambda: rng.choice(lateness))
    assert max(from_each(starts, pacer.window_s)) == 500
    assert max(from_each(starts, 1.0)) == 500  # the service's own window never sees 501
    # catching up goes at twice the rate (2 ms of starts per ms), BURST_S worth at once
    assert max(from_each(starts, 0.004)) <= 2 * 0.004 * 500 + BURST_S * 1000 + 2
    assert max(from_each(starts, 0.05)) <= 2 * 0.05 * 500 + BURST_S * 1000 + 2
    # and the rate holds: 2,500 starts in five windows, less what the stalls took
    assert starts[-1] < 5 * pacer.window_s + 0.3


# ----------------------------------------------------------------- 429s


def test_a_429_from_jitter_widens_the_window_keeps_the_rate_and_narrows_back() -> None:
    """The service stalls for 25 ms (over the pacer's 15 ms margin) at 2 s: a second later its
    window sees our starts closer together than they left, and answers 429. The pacer widens
    its window instead of cutting the rate, so the same stall at 4 s draws none; with no more
    429s the window narrows back to its margin."""
    service = Service(12_000)

    def reach(t: float) -> float:
        for stall_at in (2.0, 4.0):
            if stall_at <= t < stall_at + 0.025:
                return stall_at + 0.025 - t + 0.001
        return 0.001

    service.reach = reach
    widest: list[float] = []

    async def main() -> RequestPacer:
        pacer = RequestPacer(12_000)

        async def watch() -> None:
            while now() < 20:
                widest.append(pacer.window_s)
                assert pacer.allowed == 200  # jitter never cuts the rate
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), workers(60, 20, lambda: service.call(pacer)))
        return pacer

    pacer = in_virtual_time(main())
    first = count(service.refused, 2.9, 3.1)
    assert first > 0 and len(service.refused) == first  # the second stall drew none
    assert max(widest) > 1.0 + 0.025  # wider than the stall
    assert pacer.window_s == pacer.base_window_s == 1.015  # narrowed back
    assert count(service.admitted, 10, 20) >= 0.97 * 200 * 10


def test_a_lower_real_limit_is_learned_within_seconds_and_the_429s_stop() -> None:
    """The spec says 6,000/min, the account allows 600. The first 429 shows that only ten of
    ours were in the service's window: the pacer drops to that at once, and its probes above
    it come further and further apart."""
    service = Service(600)
    allowed: list[tuple[float, int]] = []

    async def main() -> None:
        pacer = RequestPacer(6000)

        async def watch() -> None:
            while now() < 60:
                allowed.append((now(), pacer.allowed))
                await asyncio.sleep(0.1)

        await asyncio.gather(watch(), workers(20, 60, lambda: service.call(pacer)))

    in_virtual_time(main())
    assert max(a for t, a in allowed if t >= 0.2) <= 20  # a probe at most doubles it
    assert min(a for t, a in allowed) >= 9  # never far below the real limit
    assert count(service.admitted, 1, 60) >= 0.9 * 10 * 59
    assert count(service.refused, 0, 0.2) >= 1  # the first 429 comes at once, and teaches
    probes = [t for t in service.refused if t >= 0.2]  # then only the probes above the limit
    assert len(probes) <= 8
    assert all(b - a > 1.5 * (a - before) for before, a, b in zip(probes, probes[1:], probes[2:], strict=False))


def test_after_a_spell_at_a_lower_limit_the_rate_comes_back_to_the_declared_one() -> None:
    """Another client takes half the quota from 1 s to 4 s: the pacer goes down to it, then
    back up to the full 50 a second within seconds once the quota is free again."""
    service = Service(3000)
    allowed: list[tuple[float, int]] = []

    async def main() -> None:
        pacer = RequestPacer(3000)

        async def watch() -> None:
            while now() < 20:
                t = now()
                service.window.capacity = 25 if 1.0 <= t < 4.0 else 50
                allowed.append((t, pacer.allowed))
                await asyncio.sleep(0.01)

        await asyncio.gather(watch(), workers(20, 20, lambda: service.call(pacer)))

    in_virtual_time(main())
    assert max(a for t, a in allowed if 3.0 <= t < 4.0) <= 25
    assert all(a == 50 for t, a in allowed if t >= 12.0)
    assert count(service.refused, 0, 20) <= 60
    assert count(service.refused, 12, 20) == 0


def test_429s_of_starts_sent_before_a_cut_do_not_cut_again() -> None:
    async def main() -> list[int]:
        pacer = RequestPacer(3000)
        starts = [await pacer.wait() for _ in range(30)]
        seen = []
        for start in starts[20:]:  # a storm of 429s for starts made before the first was read
            pacer.on_throttled(start)
            seen.append(pacer.allowed)
        return seen

    seen = in_virtual_time(main())
    assert seen == [20] * 10  # the first 429 saw 20 of ours in the window: one cut, to 20


def test_retry_after_holds_every_start_until_then() -> None:
    async def main() -> tuple[float, float]:
        pacer = RequestPacer(3000)
        first = await pacer.wait()
        pacer.on_throttled(first, retry_after=2.5)
        return first, await pacer.wait()

    first, second = in_virtual_time(main())
    assert second >= first + 2.5
