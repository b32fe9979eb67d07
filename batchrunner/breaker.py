"""The circuit breaker: a run stops when most recent attempts failed for transient reasons
(5xx, timeouts, dropped connections), and says which failures they were."""

from __future__ import annotations

from collections import Counter, deque


class Breaker:
    """Trips when at least `ratio` of the last `window` attempts failed transiently."""

    def __init__(self, window: int, ratio: float) -> None:
        self.window = window
        self.ratio = ratio
        self.tripped: str | None = None
        self._recent: deque[str | None] = deque(maxlen=window or 1)
        self._failed = 0  # the failures in `_recent`, counted as they come and go

    def note(self, failure: str | None) -> bool:
        """Record one attempt (`failure`: its error code when it failed transiently, else None);
        True when this attempt tripped the breaker."""
        if not self.window or self.tripped is not None:
            return False
        recent = self._recent
        if len(recent) == self.window and recent[0] is not None:
            self._failed -= 1  # about to fall out of the window
        recent.append(failure)
        if failure is not None:
            self._failed += 1
        if len(recent) < self.window:
            return False
        share = self._failed / self.window
        if share < self.ratio:
            return False
        codes = Counter(code for code in recent if code is not None)
        seen = ", ".join(f"{code} x{n}" for code, n in codes.most_common(3))
        self.tripped = (
            f"circuit breaker: {share:.0%} of the last {self.window} attempts failed ({seen}); "
            "the service looks down, so the run stopped"
        )
        return True
