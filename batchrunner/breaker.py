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

    def note(self, failure: str | None) -> bool:
        """Record one attempt (`failure`: its error code when it failed transiently, else None);
        True when this attempt tripped the breaker."""
        if not self.window or self.tripped is not None:
            return False
        self._recent.append(failure)
        if len(self._recent) < self.window:
            return False
        codes = Counter(code for code in self._recent if code is not None)
        share = sum(codes.values()) / self.window
        if share < self.ratio:
            return False
        seen = ", ".join(f"{code} x{n}" for code, n in codes.most_common(3))
        self.tripped = (
            f"circuit breaker: {share:.0%} of the last {self.window} attempts failed ({seen}); "
            "the service looks down, so the run stopped"
        )
        return True
