"""Pacing on a virtual clock: request starts per window, late wake-ups, the token budget and
the flight gate, checked against the simulator's own sliding windows. (How the request pacer
adapts to 429s is in test_pacer_adapt.py.)

Every test here runs on `VirtualTimeLoop` (see virtualclock.py): wake-ups take no wall time,
and the assertions, counts of starts (or tokens) inside windows of virtual time, come out the
same on an idle laptop and on a loaded CI machine.
"""

from __future__ import annotations

import asyncio
import random
from itertools import pairwise

import pytest
from virtualclock import from_each, in_each_window, in_virtual_time, now

from batchrunner.pacing import FlightGate, RequestPacer, TokenBudget
from batchrunner.simulator.limits import SlidingWindow


async def start_times(pacer: RequestPacer, n: int) -> list[float]:
    """`n` callers wait on the pacer at once; the (sorted) times at which each one starts."""
    starts: list[float] = []

    async def one() -> None:
        await pacer.wait()
        starts.append(now())

    await asyncio.gather(*(one() for _ in range(n)))
    return starts


# ----------------------------------------------------------------- request starts per window


def test_starts_fill_every_window_exactly_and_never_overflow_it() -> None:
    async def main() -> tuple[RequestPacer, list[float]]:
        pacer = RequestPacer(rpm=3000)  # 50 starts in any window of 1.015 s
        return pacer, await start_times(pacer, 300)

    pacer, starts = in_virtual_time(main())
    w = pacer.window_s
    assert (pacer.per_window, w) == (50, 1.015)
    assert in_each_window(starts, w, 7) == [50] * 6 + [0]
    # any window opening at a start holds exactly 50 while callers are still waiting: never
    # more (the service's rule), and never less (the pacer does not waste its allowance)
    assert from_each(starts, w)[:-50] == [50] * 250
    assert max(from_each(starts, 1.0)) == 50  # so the service's one-second window never sees 51
    # inside a window the starts follow an even schedule, not one burst; catching up, they go
    # at twice the rate at most: 2 x 49.3/s x 0.1 s is 9.9, plus one start
    assert max(from_each(starts, 0.1)) <= 11


def test_late_wake_ups_are_made_up_rather_than_lost() -> None:
    """Every timer fires 4 ms late (a busy loop): at 500 starts a second a wake-up sends the
    starts that fell due meanwhile (up to CATCH_UP_S of them), so exactly 500 go in each
    window (one start per wake-up would reach about 200)."""

    async def main() -> tuple[RequestPacer, list[float]]:
        pacer = RequestPacer(rpm=30_000)
        return pacer, await start_times(pacer, 2000)

    pacer, starts = in_virtual_time(main(), late_by=0.004)
    assert pacer.per_window == 500
    # the 2,000th start goes less than 20 ms after its turn on the even schedule (0.5%)
    assert starts[-1] <= 1999 * pacer.window_s / 500 + 0.02
    assert max(from_each(starts, pacer.window_s)) == 500


def test_below_one_request_a_second_starts_are_evenly_apart() -> None:
    async def main() -> tuple[RequestPacer, list[float]]:
        pacer = RequestPacer(rpm=30)  # one start per 2 s, plus the margin
        return pacer, await start_times(pacer, 4)

    pacer, starts = in_virtual_time(main())
    assert (pacer.per_window, pacer.window_s) == (1, pytest.approx(2.03))
    assert [b - a for a, b in pairwise(starts)] == [pytest.approx(2.03, abs=1e-6)] * 3


# ----------------------------------------------------------------- against the service's windows


def refused_by_the_service(arrivals: list[tuple[float, float]], window: SlidingWindow) -> int:
    """How many of the (time, amount) arrivals the simulator's sliding window would answer 429."""
    refused = 0
    for at, amount in sorted(arrivals):
        if window.fits(at, amount):
            window.add(at, amount)
        else:
            refused += 1
    return refused


@pytest.mark.parametrize("rpm", [1200, 30_000])
def test_pacing_at_the_service_rpm_draws_no_429(rpm: int) -> None:
    """Starts reach the service up to 15 ms late each (the network, the loop): the pacer's
    margin absorbs that, where a pacer without one would be throttled."""
    delays = random.Random(rpm)

    async def arrivals(margin: float) -> list[tuple[float, float]]:
        pacer = RequestPacer(rpm, margin=margin)
        starts = await start_times(pacer, 10 * pacer.per_window)
        return [(t + delays.uniform(0, 0.015), 1.0) for t in starts]

    paced = in_virtual_time(arrivals(margin=0.015))
    assert refused_by_the_service(paced, SlidingWindow.per_minute(rpm)) == 0
    unpaced = in_virtual_time(arrivals(margin=0.0))
    assert refused_by_the_service(unpaced, SlidingWindow.per_minute(rpm)) > 0


def budget_run(tpm: int, estimate: int, used: int, seconds: int = 6) -> list[tuple[float, float]]:
    """16 workers make calls of 50 ms through a TokenBudget(tpm) for `seconds` of virtual time,
    each charged `estimate` tokens up front and settled at `used`: the (start, tokens used) of each."""

    async def main() -> list[tuple[float, float]]:
        budget = TokenBudget(tpm)
        sent: list[tuple[float, float]] = []

        async def worker() -> None:
            while True:
                await budget.charge(estimate)
                if now() >= seconds:
                    return
                sent.append((now(), float(used)))
                await asyncio.sleep(0.05)
                budget.settle(estimate, used)

        await asyncio.gather(*(worker() for _ in range(16)))
        return sent

    return in_virtual_time(main())


@pytest.mark.parametrize(("estimate", "used"), [(40, 40), (48, 24)], ids=["exact-estimates", "overestimates"])
def test_the_token_budget_at_the_service_tpm_draws_no_429_and_uses_most_of_it(estimate: int, used: int) -> None:
    """TPM 60,000 is 1,000 tokens in any second. Over-estimates are credited back at settle,
    so the budget follows the tokens really used, not the estimates."""
    sent = budget_run(60_000, estimate, used)
    assert refused_by_the_service(sent, SlidingWindow.per_minute(60_000)) == 0
    per_second = [sum(tokens for t, tokens in sent if k <= t < k + 1) for k in range(6)]
    assert all(900 <= tokens <= 1000 for tokens in per_second), per_second


def test_calls_bigger_than_the_token_bucket_are_paced_in_full() -> None:
    sent = budget_run(60_000, estimate=200, used=200)  # the bucket is 50 tokens
    assert refused_by_the_service(sent, SlidingWindow.per_minute(60_000)) == 0


# ----------------------------------------------------------------- the flight gate


def test_flight_gate_halves_at_most_once_a_cooldown() -> None:
    async def main() -> list[int]:
        gate = FlightGate(16)  # cooldown 1 s
        limits = []
        for wait in (0.0, 0.5, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0):
            await asyncio.sleep(wait)
            gate.on_throttled()
            limits.append(gate.limit)
        return limits

    assert in_virtual_time(main()) == [8, 8, 4, 4, 2, 1, 1, 1, 1]


def test_flight_gate_holds_a_caller_beyond_its_limit_until_a_release() -> None:
    async def main() -> tuple[bool, float, int]:
        gate = FlightGate(2)
        await gate.acquire()
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        done, _ = await asyncio.wait({waiter}, timeout=60)  # a minute of virtual time
        await gate.release()
        await waiter
        return bool(done), now(), gate.in_flight

    got_in_before_the_release, released_at, in_flight = in_virtual_time(main())
    assert not got_in_before_the_release and released_at >= 60 and in_flight == 2


def test_a_raised_share_takes_effect_at_once() -> None:
    """A Ray shard granted 1 request a minute for a moment, then raised to 6,000: the callers
    waiting go at the new rate, not after the minute the old schedule had set."""

    async def main() -> list[float]:
        pacer = RequestPacer(rpm=1)
        await pacer.wait()  # the one start of the minute, at 0
        waiting = asyncio.ensure_future(start_times(pacer, 50))
        await asyncio.sleep(0.5)
        pacer.regrant(6000)
        return await waiting

    starts = in_virtual_time(main())
    assert len(starts) == 50
    assert starts[0] >= 0.5 and starts[-1] < 1.5  # 100 a second from the raise on
