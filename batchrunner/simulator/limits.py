"""Sliding-window limits: at most `capacity` units in any window of `span` seconds.

Only admitted requests are recorded, so a client that keeps retrying too fast is refused
only while the admitted ones still fill the window, the way a per-second quota behaves.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Admitted (time, amount) pairs of the last `span` seconds, and their running total."""

    __slots__ = ("capacity", "span", "_events", "_total")

    def __init__(self, capacity: float, span: float = 1.0) -> None:
        self.capacity = capacity
        self.span = span
        self._events: deque[tuple[float, float]] = deque()
        self._total = 0.0

    @classmethod
    def per_minute(cls, per_minute: int) -> SlidingWindow:
        """A window for a per-minute quota enforced per second (capacity per_minute / 60).

        Request quotas below 60/min cannot fit a whole request in one second; those become
        one request per 60/per_minute seconds instead.
        """
        per_second = per_minute / 60.0
        if per_second >= 1.0:
            return cls(per_second)
        return cls(1.0, span=60.0 / per_minute)

    def _expire(self, now: float) -> None:
        events = self._events
        horizon = now - self.span
        while events and events[0][0] <= horizon:
            self._total -= events.popleft()[1]
        if not events:
            self._total = 0.0  # drop float drift

    def fits(self, now: float, amount: float = 1.0) -> bool:
        """Whether `amount` more units at `now` stay within capacity.

        An empty window admits anything, so one request larger than the whole capacity is
        served when the window is idle instead of never.
        """
        self._expire(now)
        return not self._events or self._total + amount <= self.capacity + 1e-9

    def add(self, now: float, amount: float = 1.0) -> None:
        """Record `amount` units admitted at `now`."""
        self._events.append((now, amount))
        self._total += amount

    def used(self, now: float) -> float:
        """Units admitted in the window ending at `now`."""
        self._expire(now)
        return self._total

    def clear(self) -> None:
        """Forget every admitted unit."""
        self._events.clear()
        self._total = 0.0
