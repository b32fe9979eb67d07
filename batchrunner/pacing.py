"""Pacing: requests per minute, tokens per minute, and an adaptive cap on requests in flight.

The service enforces RPM/60 requests and TPM/60 tokens per second, so both limits are paced
per second rather than allowing a minute's burst.

`RequestPacer` keeps the service's own rule on our side: at most N = RPM/60 starts counted in
any window of `1 + margin` seconds. Each start counts from when the caller really resumed, and
moves later once its answer shows the service saw it late: an answer that took longer than
the fastest of the last few seconds reached the service (or left us) up to that much late, so
its start counts that much later, and the window holds back what the service would refuse a
second later. This is read only while the answer time is steady (half the answers within
STEADY_S of the fastest: the service's latency is fixed, so the excess is delay, not work) and
short (the fastest within half the window, so the news comes while the start still counts);
then the margin is the small MIN_MARGIN, else MARGIN.

Inside the window, starts follow an even schedule and never run ahead of it. Waiting callers
queue in order, and one timer at the next start's turn lets go of every caller whose turn
has come at once (a wake-up the loop delayed does not cost a turn of the loop per start);
turns that late wake-ups missed are made up (up to CATCH_UP_S of them) at twice the rate,
BURST_S at a time, so a stall never turns into a burst, and an idle spell earns no credit.

A 429 says where the service's window really is. If our last N admitted starts spread over
more than a second, the service saw them closer together than they left: the window widens
by twice what they reached past the second (up to MAX_MARGIN), and narrows again, halving
the excess for every quiet window. If fewer than N of ours were in its window, it allows
fewer than the spec says: the starts per window drop to what it admitted of ours in the
second before the refused start (at least 20% less); they climb back, doubling (by 5% of N
at least) per quiet window, the first raise after a cut waiting a quiet spell that doubles
each time a raise is refused (so a spec that overstates the limit costs a probe now and
then, ever rarer, not a stream of 429s). 429s of starts sent before the last cut are not
counted again. A Retry-After holds every start until then.

`FlightGate`, the cap on requests in flight, halves on a 429 (at most once a second) and
grows back additively, so the pool slows down instead of every worker hammering a
throttled service.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import random

from aiolimiter import AsyncLimiter

MARGIN = 0.015  # the window's margin over the service's second, when answers cannot tell delays
MIN_MARGIN = 0.002  # ... and when they can (each start counts from when the service saw it)
MAX_MARGIN = 0.2  # the most jitter a 429 can teach; beyond it, the real limit is lower
CATCH_UP_S = 0.05  # how late a wake-up may be and still be made up
BURST_S = 0.005  # catching up goes at twice the rate, with at most this much at once
HISTORY_WINDOWS = 3  # windows of start times kept to read a 429 against
MAX_PAUSE_S = 60.0  # the longest Retry-After honoured as a pause of every start
MAX_PROBE_WAIT_S = 30.0  # the longest quiet spell before trying a higher rate again
FASTEST_S = 5.0  # the fastest answer of this many seconds is the service's latency
STEADY_S = 0.05  # answers within this of the fastest are on time
STEADY_ANSWERS = 1000  # the share of answers on time is taken over about this many
READ_WITHIN = 0.5  # answers are read while the fastest comes back within this share of the window


class RequestPacer:
    """At most `allowed` request starts counted in any window of `window_s`, spaced out
    smoothly, and adapted to what the answers' times and the service's 429s say (see the
    module docstring)."""

    def __init__(self, rpm: int, margin: float = MARGIN) -> None:
        per_second = rpm / 60.0
        if per_second >= 1:
            self.per_window, self.span = int(per_second), 1.0
        else:  # below one a second: one start per 60/rpm seconds
            self.per_window, self.span = 1, 1.0 / per_second
        self.margin = margin
        self.base_window_s = self.span * (1.0 + margin)
        self.window_s = self.base_window_s  # widened by 429s that came from jitter
        self.allowed = self.per_window  # lowered by 429s that came from a lower real limit
        self.reading = False  # whether answer times tell when the service counted each start
        self._counted: list[float] = []  # sorted: when each start of the last window_s counts
        self._history: collections.deque[list[float]] = collections.deque()  # [start, refused] of the last few windows
        self._next = float("-inf")  # when the next start is due, on the even schedule
        self._next_fast = float("-inf")  # ... and at twice the rate, to catch up with it
        self._waiters: collections.deque[asyncio.Future[list[float]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._fastest: collections.deque[tuple[float, float]] = collections.deque()  # (at, rtt), rtt rising
        self._answered: collections.deque[list[float]] = collections.deque()  # [start, answered, counts]
        self._on_time = 0.0  # the share of recent answers within STEADY_S of the fastest
        self._answers = 0
        self._paused_until = float("-inf")  # a Retry-After
        self._tightened_at = float("-inf")  # 429s of starts before this were answered already
        self._last_429 = float("-inf")
        self._last_step = float("-inf")
        self._last_narrow = float("-inf")
        self._last_cut = float("-inf")
        self._probe_wait = 2 * self.base_window_s  # quiet time before the rate is raised again

    def regrant(self, rpm: int) -> None:
        """A new limit (a Ray shard's share, moved): a cut from 429s is kept in proportion."""
        old = self.per_window
        per_second = rpm / 60.0
        if per_second >= 1:
            self.per_window, self.span = int(per_second), 1.0
        else:
            self.per_window, self.span = 1, 1.0 / per_second
        excess = self.window_s - self.base_window_s
        self.base_window_s = self.span * (1.0 + self.margin)
        self.window_s = self.base_window_s + excess
        self.allowed = max(1, min(self.per_window, round(self.allowed * self.per_window / old)))
        # A raise takes effect now: the schedule (and a timer) set at the old rate are pulled in.
        # Without this, a share of 1/min for a moment left the shard idle for a minute.
        interval = self.window_s / self.allowed
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next = min(self._next, now + interval)
        self._next_fast = min(self._next_fast, now + interval / 2)
        self._rearm()

    def recent_starts(self, now: float) -> int:
        """Starts that still count in the window at `now` (the loop's clock: time.monotonic)."""
        return len(self._counted) - bisect.bisect_right(self._counted, now - self.window_s)

    @property
    def rate_per_s(self) -> float:
        """Starts per second the pacer allows now."""
        return self.allowed / self.window_s

    def _due(self, now: float) -> float:
        """The earliest time the next start may go: the window, the schedule, a pause."""
        counted = self._counted
        expired = bisect.bisect_right(counted, now - self.window_s)
        if expired:
            del counted[:expired]
        due = max(self._next, self._next_fast - BURST_S, self._paused_until)
        if len(counted) >= self.allowed:
            due = max(due, counted[len(counted) - self.allowed] + self.window_s)
        return due

    def _take(self, now: float, busy: bool) -> list[float]:
        """Count a start at `now`; `busy` when its caller waited (starts are behind, not idle)."""
        interval = self.window_s / self.allowed
        # never ahead of the schedule; behind it by at most CATCH_UP_S, unless idle
        self._next = max(self._next, now - (CATCH_UP_S if busy else 0.0)) + interval
        self._next_fast = max(self._next_fast, now) + interval / 2
        bisect.insort(self._counted, now)
        entry = [now, 0.0]
        history = self._history
        history.append(entry)
        while history[0][0] < now - HISTORY_WINDOWS * self.window_s:
            history.popleft()
        return entry

    def _recount(self, old: float, new: float, now: float) -> None:
        """A start counted at `old` counts at `new` (later) instead, while it still counts."""
        counted = self._counted
        i = bisect.bisect_left(counted, old)
        if i < len(counted) and counted[i] == old:
            del counted[i]
        if new > now - self.window_s:
            bisect.insort(counted, new)

    async def wait(self) -> float:
        """Wait for a start; returns its time (the loop's clock), to pass to `on_throttled` and
        `on_success`. The time is taken when the caller really resumes, so a late wake-up is
        recorded late and counts in the window where the service sees it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._waiters and self._due(now) <= now:
            return self._take(now, busy=False)[0]
        turn: asyncio.Future[list[float]] = loop.create_future()
        self._waiters.append(turn)
        self._arm(loop)
        entry = await turn
        resumed = loop.time()
        if resumed > entry[0]:
            self._recount(entry[0], resumed, resumed)
            entry[0] = resumed
        return resumed

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the timer for the first waiting caller's turn (unless it is set)."""
        if self._timer is None and self._waiters:
            self._timer = loop.call_at(self._due(loop.time()), self._let_go)

    def _rearm(self) -> None:
        """The due time may have come nearer: set the timer again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._arm(asyncio.get_running_loop())

    def _let_go(self) -> None:
        """The timer: every waiting caller whose turn has come goes now, in order."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiters = self._waiters
        while waiters:
            if waiters[0].done():  # its caller was cancelled
                waiters.popleft()
            elif self._due(now) <= now:
                waiters.popleft().set_result(self._take(now, busy=True))
            else:
                break
        self._arm(loop)

    def on_throttled(self, start: float, retry_after: float | None = None) -> None:
        """The start at `start` was answered 429: learn where the service's window is."""
        now = asyncio.get_running_loop().time()
        self._last_429 = now
        if retry_after is not None:  # the service says when its window frees
            self._paused_until = max(self._paused_until, now + min(retry_after, MAX_PAUSE_S))
        admitted = self._mark_refused(start)
        if start < self._tightened_at:
            return  # sent before the last tightening: already answered by it
        self._tightened_at = now
        k = self.allowed
        if len(admitted) >= k and start - admitted[k - 1] <= self.span * (1.0 + MAX_MARGIN):
            # Our last k starts fit the service's budget, yet it saw k in one of its windows:
            # they reached it closer together than they left. Widen the window to twice that.
            reach = start - admitted[k - 1]
            self.window_s = max(self.window_s, min(self.span * (1.0 + MAX_MARGIN), self.span + 2 * (reach - self.span)))
            return
        # Fewer than k of ours were in its window: it allows fewer than we send. Go down to
        # what it did admit of ours in the span before this start (at least 20% less).
        seen = sum(1 for t in admitted if t > start - self.span)
        self.allowed = max(1, min(seen, int(k * 0.8)))
        self.window_s = self.base_window_s  # the 429s that widened it were this, not jitter
        if self._last_step > self._last_cut:  # a raise since the last cut failed: wait longer
            self._probe_wait = min(MAX_PROBE_WAIT_S, self._probe_wait * 2)
        self._last_cut = now

    def _mark_refused(self, start: float) -> list[float]:
        """Mark the start refused; the admitted (not refused) starts before it, latest first."""
        admitted: list[float] = []
        found = False
        oldest = start - self.span * (1.0 + MAX_MARGIN)
        for entry in reversed(self._history):
            if entry[0] > start:
                continue
            if entry[0] < oldest:
                break
            if not found and entry[0] == start and not entry[1]:
                entry[1] = 1.0
                found = True
            elif not entry[1]:
                admitted.append(entry[0])
        return admitted

    def on_success(self, start: float | None = None) -> None:
        """An answer (to the start at `start`, when given: see `_read_answer`). After a quiet
        window without 429s, step back towards the declared limit: halve the window's excess
        margin, and raise the starts per window (the first raise after a cut waits
        `_probe_wait`, which doubles with every cut)."""
        now = asyncio.get_running_loop().time()
        if start is not None:
            self._read_answer(start, now)
        if now - max(self._last_429, self._last_narrow) >= self.window_s > self.base_window_s:
            excess = (self.window_s - self.base_window_s) / 2
            self.window_s = self.base_window_s + (excess if excess >= 0.001 * self.span else 0.0)
            self._last_narrow = now
            self._rearm()
        if self.allowed >= self.per_window:
            return
        quiet = now - max(self._last_429, self._last_step)
        if quiet >= (self._probe_wait if self._last_cut >= self._last_step else self.window_s):
            step = max(1, self.per_window // 20, self.allowed)  # double, at least +5% of N
            self.allowed = min(self.per_window, self.allowed + step)
            self._last_step = now
            if self.allowed == self.per_window:
                self._probe_wait = 2 * self.base_window_s
            self._rearm()

    def _read_answer(self, start: float, now: float) -> None:
        """The start at `start` was answered at `now`. Against the fastest answer of the last
        FASTEST_S, it took `late` longer: it reached the service (or left us) up to that much
        late, so, while answer times are steady, it counts from `now - fastest`. When a new
        fastest answer comes (or the reading starts), the answers before it are read again."""
        rtt = now - start
        fastest = self._fastest
        before = fastest[0][1] if fastest else float("inf")
        while fastest and fastest[-1][1] >= rtt:
            fastest.pop()
        fastest.append((now, rtt))
        while fastest[0][0] < now - FASTEST_S:
            fastest.popleft()
        least = fastest[0][1]
        self._answers += 1
        weight = 1.0 / min(self._answers, STEADY_ANSWERS)
        self._on_time += weight * ((rtt - least <= STEADY_S * self.span) - self._on_time)
        was_reading = self.reading
        steady = self._on_time >= (0.25 if was_reading else 0.5)  # on at half, off at a quarter
        self.reading = steady and least <= READ_WITHIN * self.span
        if self.reading != was_reading:
            excess = self.window_s - self.base_window_s
            self.base_window_s = self.span * (1.0 + (min(MIN_MARGIN, self.margin) if self.reading else self.margin))
            self.window_s = self.base_window_s + excess
            self._rearm()
        answered = self._answered
        while answered and answered[0][1] - least <= now - self.window_s:
            answered.popleft()
        answer = [start, now, start]
        answered.append(answer)
        if not self.reading:
            return
        for entry in answered if (least < before or not was_reading) else (answer,):
            counts = max(entry[0], entry[1] - least)
            if counts > entry[2]:  # later only: the timer looks again when it fires
                self._recount(entry[2], counts, now)
                entry[2] = counts


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
        self.headroom = headroom
        per_second = tpm / 60.0
        self.bucket = per_second / 20.0
        rate = per_second * (1.0 - headroom) - self.bucket
        self._limiter = AsyncLimiter(self.bucket, self.bucket / rate)
        self._carry = 0.0
        self._turn = asyncio.Lock()

    def regrant(self, tpm: int) -> None:
        """A new limit (a Ray shard's share, moved); a charge under way finishes on the old one."""
        per_second = tpm / 60.0
        self.bucket = per_second / 20.0
        rate = per_second * (1.0 - self.headroom) - self.bucket
        self._limiter = AsyncLimiter(self.bucket, self.bucket / rate)

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
