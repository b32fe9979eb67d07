"""The request pacer reading its answers' times (virtual clock): an answer that took longer
than the fastest shows its start reached the service late, so it counts that much later, and
a stall at the service, wider than any margin, draws no 429 a second later; while the answer
time varies with the work, nothing is read and the margin stays. Waiting callers whose turns
have come go together on one wake-up, and a cancelled one takes no turn.

`Service` (pacerservice.py) plays the simulator's per-second window on the virtual clock.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from pacerservice import Service, count, stalls, workers
from virtualclock import from_each, in_virtual_time, now

from batchrunner.pacing import MARGIN, MIN_MARGIN, RequestPacer

SPELLS = ((2.0, 0.06), (4.5, 0.12), (7.0, 0.04))  # the service stops taking requests, 4-8x the margin


def run(service: Service, rpm: int, seconds: float, callers: int) -> RequestPacer:
    async def main() -> RequestPacer:
        pacer = RequestPacer(rpm)
        await workers(callers, seconds, lambda: service.call(pacer))
        return pacer

    return in_virtual_time(main())


@pytest.mark.parametrize("rpm", [3000, 30_000])
def test_stalls_at_the_service_draw_no_429_when_answers_are_read(rpm: int) -> None:
    """Each stall piles up what left meanwhile at its end. Read from the answers, those starts
    count from when the service saw them, so a second later the pacer leaves their room: no
    429, and the stalls cost about their own length. Without the answers' times the same
    stalls draw 429s."""
    per_s = rpm // 60
    read = Service(rpm, reach=stalls(*SPELLS), answer_times=True)
    pacer = run(read, rpm, 10, callers=per_s)
    assert read.refused == []
    assert pacer.reading and pacer.window_s == pacer.base_window_s == pytest.approx(1 + MIN_MARGIN)
    lost = sum(length for _, length in SPELLS)
    assert count(read.admitted, 1, 10) >= (9 - lost - 0.05) * per_s
    assert max(from_each(sorted(read.admitted), 1.0)) <= per_s

    blind = Service(rpm, reach=stalls(*SPELLS))
    run(blind, rpm, 10, callers=per_s)
    assert len(blind.refused) > 0


def test_a_slow_first_moment_is_read_again_when_faster_answers_come() -> None:
    """The first 150 ms reach the service late (connections being opened): the first answers
    are the slowest, so nothing looks late until faster ones come; then the early answers are
    read again against the fastest, and 1.15 s in, their room is still left."""
    read = Service(30_000, reach=stalls((0.0, 0.15)), answer_times=True)
    run(read, 30_000, 3, callers=500)
    assert read.refused == []
    blind = Service(30_000, reach=stalls((0.0, 0.15)))
    run(blind, 30_000, 3, callers=500)
    assert count(blind.refused, 1.0, 1.3) > 0


def test_an_answer_time_that_varies_with_the_work_is_not_read() -> None:
    """Answers take 0.2-0.9 s (the length of what is generated): their spread is work, not
    delay, so the pacer reads nothing from it and keeps its margin and its full rate."""
    rng = random.Random(7)
    service = Service(12_000, latency=lambda: rng.uniform(0.2, 0.9), answer_times=True)
    pacer = run(service, 12_000, 10, callers=400)
    assert not pacer.reading
    assert pacer.window_s == pacer.base_window_s == pytest.approx(1 + MARGIN)
    assert service.refused == []
    assert count(service.admitted, 2, 10) >= 0.98 * 200 * 8


def test_a_steady_answer_time_longer_than_half_the_window_is_not_read() -> None:
    """Answers take 1.5 s, every one: steady, but back after their starts have left the window,
    so reading them could not help, and the margin stays."""
    service = Service(6000, latency=1.5, answer_times=True)
    pacer = run(service, 6000, 8, callers=200)
    assert not pacer.reading
    assert pacer.window_s == pacer.base_window_s == pytest.approx(1 + MARGIN)
    assert service.refused == []


def test_a_lower_real_limit_is_still_learned_while_answers_are_read() -> None:
    """The spec says 6,000/min, the account allows 600: reading the answers' times does not
    get in the way of the cut to the real rate."""
    service = Service(600, answer_times=True)
    allowed: list[tuple[float, int]] = []

    async def main() -> None:
        pacer = RequestPacer(6000)

        async def watch() -> None:
            while now() < 30:
                allowed.append((now(), pacer.allowed))
                await asyncio.sleep(0.1)

        await asyncio.gather(watch(), workers(20, 30, lambda: service.call(pacer)))

    in_virtual_time(main())
    assert max(a for t, a in allowed if t >= 0.2) <= 20
    assert count(service.admitted, 1, 30) >= 0.9 * 10 * 29
    assert count(service.refused, 5, 30) <= 4


def test_callers_whose_turns_have_come_go_on_one_wake_up() -> None:
    """A wake-up 8 ms late finds four turns due at 500 a second: they go in that one turn
    of the loop (made up at twice the rate, BURST_S at once), not one per turn."""

    async def main() -> list[list[float]]:
        pacer = RequestPacer(30_000)
        loop = asyncio.get_running_loop()
        turns: list[list[float]] = []
        last = -1.0

        async def one() -> None:
            nonlocal last
            t = await pacer.wait()
            if t != last:
                turns.append([])
                last = t
            turns[-1].append(t)
            assert loop.time() == t

        await asyncio.gather(*(one() for _ in range(200)))
        return turns

    turns = in_virtual_time(main(), late_by=0.008)
    assert sum(len(t) for t in turns) == 200
    assert max(len(t) for t in turns) > 1  # several callers on one wake-up
    assert len(turns) < 100


def test_a_cancelled_caller_takes_no_turn() -> None:
    async def main() -> tuple[list[float], float]:
        pacer = RequestPacer(3000)  # one start per 20.3 ms
        first = await pacer.wait()
        waiting = [asyncio.create_task(pacer.wait()) for _ in range(4)]
        await asyncio.sleep(0)
        waiting[0].cancel()
        waiting[1].cancel()
        done = await asyncio.gather(*waiting, return_exceptions=True)
        return [t for t in done if isinstance(t, float)], first

    starts, first = in_virtual_time(main())
    assert len(starts) == 2
    assert starts[0] == pytest.approx(first + 1.015 / 50)  # the next turn, not the third
