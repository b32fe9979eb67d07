"""The budget guard: stop dispatching before a run could spend more than it may.

Before each attempt the pool asks `reserve` for the attempt's worst case (its cost with no
cache hit and every allowed output token, its tokens, one request). The attempt is sent only
if what has been spent plus what is reserved by the attempts in flight plus this worst case
stays within every limit; when it returns, `settle` swaps the reservation for what the call
really used. So the run stops short of the limit rather than crossing it, and the rows not
sent stay pending for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parameters import Parameters
from .pricing import format_usd

DEFAULT_OUTPUT_CHARGE = 1024  # output tokens assumed per request when max_tokens is unset


def max_output_tokens(parameters: Parameters) -> int:
    """The most output one request can be billed for: every choice, plus the thinking chain."""
    p = parameters
    per_choice = p.max_tokens or DEFAULT_OUTPUT_CHARGE
    return per_choice * (p.n or 1) + ((p.thinking_budget or 0) if p.enable_thinking else 0)


@dataclass(frozen=True, slots=True)
class Reservation:
    cost_pusd: int
    tokens: int


class Budget:
    """Per-run limits on cost (pico-USD), requests and tokens; None means no limit."""

    def __init__(self, *, max_cost_pusd: int | None, max_requests: int | None, max_tokens: int | None) -> None:
        self.max_cost_pusd = max_cost_pusd
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.spent_pusd = 0
        self.used_tokens = 0
        self.requests = 0
        self._reserved_pusd = 0
        self._reserved_tokens = 0
        self.exhausted: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_cost_pusd, self.max_requests, self.max_tokens))

    def reserve(self, cost_pusd: int, tokens: int) -> Reservation | None:
        """Book one attempt's worst case, or None (and `exhausted` says why) if it might not fit."""
        if self.exhausted is not None:
            return None
        if self.max_requests is not None and self.requests + 1 > self.max_requests:
            self.exhausted = f"max_requests ({self.max_requests}) reached"
            return None
        if self.max_tokens is not None and self.used_tokens + self._reserved_tokens + tokens > self.max_tokens:
            self.exhausted = (
                f"max_tokens_total ({self.max_tokens}) would be exceeded: {self.used_tokens} used, "
                f"{self._reserved_tokens} in flight, up to {tokens} for the next request"
            )
            return None
        if self.max_cost_pusd is not None and self.spent_pusd + self._reserved_pusd + cost_pusd > self.max_cost_pusd:
            self.exhausted = (
                f"max_cost_usd ({format_usd(self.max_cost_pusd)}) could be exceeded: spent "
                f"{format_usd(self.spent_pusd)}, up to {format_usd(self._reserved_pusd)} in flight, "
                f"up to {format_usd(cost_pusd)} for the next request"
            )
            return None
        self.requests += 1
        self._reserved_pusd += cost_pusd
        self._reserved_tokens += tokens
        return Reservation(cost_pusd, tokens)

    def settle(self, reservation: Reservation, cost_pusd: int, tokens: int) -> None:
        self._reserved_pusd -= reservation.cost_pusd
        self._reserved_tokens -= reservation.tokens
        self.spent_pusd += cost_pusd
        self.used_tokens += tokens

    def message(self) -> str:
        left = "" if self.max_cost_pusd is None else f", {format_usd(self.max_cost_pusd - self.spent_pusd)} USD left"
        return f"budget stop: {self.exhausted}; spent {format_usd(self.spent_pusd)} USD this run{left}"
