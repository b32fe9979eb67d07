"""Pacing: requests per minute, tokens per minute, and an adaptive cap on requests in flight.

The service enforces RPM/60 requests and TPM/60 tokens per second, so both limiters are
paced smoothly (a leaky bucket one request deep) rather than allowing a minute's burst.
A small headroom keeps arrival jitter on the network from tipping a window over the limit.

`FlightGate` caps requests in flight. It starts at `concurrency`; a 429 halves it (at most
once per second, so one storm does not collapse it to 1) and successes grow it back, so
the pool slows down instead of every worker hammering a throttled service.
"""

from __future__ import annotations

import asyncio
import random

from aiolimiter import AsyncLimiter


class RequestPacer:
    """At most `rpm * (1 - headroom)` request starts per minute, evenly spaced."""

    def __init__(self, rpm: int, headroom: float = 0.015) -> None:
        self.rate_per_s = rpm * (1.0 - headroom) / 60.0
        self._limiter = AsyncLimiter(1, 1.0 / self.rate_per_s)

    async def wait(self) -> None:
        await self._limiter.acquire(1)


class TokenBudget:
    """Tokens per minute: charge an estimate up front, settle with the real usage after.

    A leaky bucket holding a twentieth of a second's tokens, drained at the per-second
    allowance less that bucket, so no one-second window can take more than the service's
    TPM/60 however the requests fall. A charge bigger than the bucket is taken in parts
    (the rest is carried as a debt into the next charges); the difference between the
    estimate and the real usage is carried the same way (a debt or a credit), so over a run
    the limiter follows the tokens actually used.
    """

    def __init__(self, tpm: int, headroom: float = 0.015) -> None:
        per_second = tpm / 60.0
        self.bucket = per_second / 20.0
        rate = per_second * (1.0 - headroom) - self.bucket
        self._limiter = AsyncLimiter(self.bucket, self.bucket / rate)
        self._carry = 0.0

    async def charge(self, estimate: int) -> None:
        """Wait until `estimate` tokens (plus any debt, less any credit) fit the budget."""
        wanted = estimate + self._carry
        amount = min(self.bucket, max(0.0, wanted))
        self._carry = wanted - amount
        if amount > 0:
            await self._limiter.acquire(amount)

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
