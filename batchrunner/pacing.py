"""Pacing: requests per minute, tokens per minute, and an adaptive cap on requests in flight.

The service enforces RPM/60 requests and TPM/60 tokens per second, so both limits are paced
per second rather than allowing a minute's burst.

`RequestPacer` keeps the service's own rule on our side: at most N = RPM/60 request starts in
any window of `1 + margin` seconds (the margin absorbs arrival jitter on the network, so the
service never counts N + 1 in its one-second window). Inside that, an aiolimiter leaky bucket
spaces starts at least 1/(2 * RPM/60) apart, so requests go out smoothly, and a start that the
event loop delayed is made up rather than lost (a bucket one request deep at exactly the
rate loses every late wake-up, which cost a quarter of the rate at 500 requests per second).

A 429 means the service allows less than the spec says: the pacer lowers its starts per
window by 20% (at most once a window) and grows back by 5% of the configured rate per
window's worth of successes;
`FlightGate`, the cap on requests in flight, halves (at most once a second) and grows back
the same way. So the pool slows down instead of every worker hammering a throttled service.
"""

from __future__ import annotations

import asyncio
import collections
import random

from aiolimiter import AsyncLimiter


class RequestPacer:
    """At most RPM/60 request starts in any window of (1 + margin) s, spaced out smoothly."""

    def __init__(self, rpm: int, margin: float = 0.015) -> None:
        per_second = rpm / 60.0
        if per_second >= 1:
            self.per_window, self.window_s = int(per_second), 1.0 + margin
        else:  # below one a second: one start per 60/rpm seconds
            self.per_window, self.window_s = 1, (1.0 / per_second) * (1.0 + margin)
        self.rate_per_s = self.per_window / self.window_s
        self.allowed = self.per_window  # lowered by 429s, grown back by successes
        # A bucket 20 ms deep at twice the rate: deep enough that late wake-ups at hundreds of
        # starts a second are made up, shallow enough to keep starts spread out.
        depth = max(1.0, 0.02 * 2.0 * self.rate_per_s)
        self._spacing = AsyncLimiter(depth, depth / (2.0 * self.rate_per_s))
        self._starts: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()  # FIFO: the first to wait is the first to go
        self._last_cut = float("-inf")
        self._successes = 0

    def on_throttled(self) -> None:
        """A 429: the service allows less than configured; take 20% off (once per window)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_cut >= self.window_s:
            self._last_cut = now
            self.allowed = max(1, int(self.allowed * 0.8))
            self._successes = 0

    def on_success(self) -> None:
        """Grow back by 5% of the configured rate for every window's worth of successes, so
        one stray 429 costs seconds, not the rest of the run."""
        if self.allowed < self.per_window:
            self._successes += 1
            if self._successes >= self.allowed:
                self._successes = 0
                self.allowed = min(self.per_window, self.allowed + max(1, self.per_window // 20))

    async def wait(self) -> None:
        await self._spacing.acquire(1)
        async with self._lock:
            loop = asyncio.get_running_loop()
            starts = self._starts
            while True:
                now = loop.time()
                while starts and starts[0] <= now - self.window_s:
                    starts.popleft()
                if len(starts) < self.allowed:
                    starts.append(now)
                    return
                await asyncio.sleep(starts[0] + self.window_s - now)


class TokenBudget:
    """Tokens per minute: charge an estimate up front, settle with the real usage after.

    A leaky bucket holding a twentieth of a second's tokens, drained at the per-second
    allowance less that bucket, so no one-second window can take more than the service's
    TPM/60 however the requests fall. A charge bigger than the bucket is taken whole, in
    bucket-sized parts, one charge at a time (so the parts of two charges do not interleave);
    the difference between the estimate and the real usage is carried into the next charge (a
    debt or a credit), so over a run the limiter follows the tokens actually used.
    """

    def __init__(self, tpm: int, headroom: float = 0.015) -> None:
        per_second = tpm / 60.0
        self.bucket = per_second / 20.0
        rate = per_second * (1.0 - headroom) - self.bucket
        self._limiter = AsyncLimiter(self.bucket, self.bucket / rate)
        self._carry = 0.0
        self._turn = asyncio.Lock()

    async def charge(self, estimate: int) -> None:
        """Wait until `estimate` tokens (plus any debt, less any credit) fit the budget."""
        async with self._turn:
            wanted = estimate + self._carry
            self._carry = min(0.0, wanted)  # a credit left over stays for the next charge
            while wanted > 0:
                part = min(self.bucket, wanted)
                await self._limiter.acquire(part)
                wanted -= part

    def settle(self, estimate: int, used: int) -> None:
        """Record what a call really used against what `charge` assumed."""
        self._carry += used - estimate


class FlightGate:
    """An adjustable limit on requests in flight (additive increase, multiplicative decrease)."""

    def __init__(self, limit: int, *, cooldown_s: float = 1.0) -> None:
        self.max_limit = limit
        self.limit = limit
        self.in_flight = 0
        self._cond = asyncio.Condition()
        self._successes = 0
        self._cooldown_s = cooldown_s
        self._last_cut = float("-inf")

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify(1)

    def on_throttled(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_cut >= self._cooldown_s:
            self._last_cut = now
            self.limit = max(1, self.limit // 2)
            self._successes = 0

    async def on_success(self) -> None:
        if self.limit >= self.max_limit:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            grow = max(1, self.limit // 8)
            async with self._cond:
                self.limit = min(self.max_limit, self.limit + grow)
                self._cond.notify(grow)


def backoff_delay(attempt: int, *, initial: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based): full jitter, or Retry-After."""
    if retry_after is not None:
        return min(cap, retry_after) + random.uniform(0, initial)
    return random.uniform(0, min(cap, initial * 2 ** (attempt - 1)))
