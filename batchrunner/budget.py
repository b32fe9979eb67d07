"""The budget guard: stop dispatching before the job, or this run, could spend more than it may.

    max_cost_usd            the whole job: every run recorded in its store
    max_cost_usd_per_run    this run alone
    max_requests            HTTP attempts of this run (retries count)
    max_tokens_total        tokens (input + output) of this run

Before each attempt, attempts.py asks `reserve` for the attempt's worst case (`WorstCase`: its
input bounded by `tokens.bound`, every allowed output token, each at the highest price that can
apply, and one request). The attempt is sent only if what has been spent, plus the worst case of
the attempts in flight, plus this one stays within every limit; when it returns, `settle` swaps
the reservation for what the answer's usage says it cost. An attempt that may have been billed
without an answer saying how much (a timeout or a dropped connection after the request went
out) keeps its worst case. So spending stops short of a limit rather than crossing it, and the
rows not sent stay pending for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tokens, wire
from .parameters import Parameters
from .pricing import PriceTable, format_usd
from .render import Request

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


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most one attempt of a request can cost and use: `cost_pusd` None when the model has no
    price (or no cost limit is set), `tokens` None when its input has no known bound."""

    cost_pusd: int | None
    tokens: int | None


UNBOUNDED = (
    "a request holds a video given as one file or URL, or audio, whose input tokens have no known bound, "
    "so no budget can cover it"
)


class Budget:
    """The limits of a job and a run; None means no limit. Money is in pico-USD.

    `before_pusd` is what earlier runs of the job spent (their attempts' recorded costs, and the
    worst case of those that may have been billed an unknown amount)."""

    def __init__(
        self,
        *,
        max_cost_pusd: int | None = None,
        max_run_cost_pusd: int | None = None,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        before_pusd: int = 0,
    ) -> None:
        self.max_cost_pusd = max_cost_pusd
        self.max_run_cost_pusd = max_run_cost_pusd
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.before_pusd = before_pusd
        self.spent_pusd = 0  # this run: what the answers' usage says
        self.held_pusd = 0  # this run: worst cases of attempts that may have been billed, unanswered
        self.used_tokens = 0
        self.requests = 0
        self._reserved_pusd = 0
        self._reserved_tokens = 0
        self.exhausted: str | None = None

    @property
    def active(self) -> bool:
        limits = (self.max_cost_pusd, self.max_run_cost_pusd, self.max_requests, self.max_tokens)
        return any(v is not None for v in limits)

    @property
    def costs_money(self) -> bool:
        """Whether a cost limit is set (so each attempt's worst case must be priced)."""
        return self.max_cost_pusd is not None or self.max_run_cost_pusd is not None

    @property
    def run_pusd(self) -> int:
        """What this run has spent, counting unanswered attempts that may have been billed at their worst."""
        return self.spent_pusd + self.held_pusd

    def reserve(self, worst: WorstCase) -> Reservation | None:
        """Book one attempt's worst case, or None (and `exhausted` says why) if it might not fit."""
        if self.exhausted is not None:
            return None
        cost = worst.cost_pusd or 0
        self.exhausted = self._over(cost, worst.tokens)
        if self.exhausted is not None:
            return None
        self.requests += 1
        self._reserved_pusd += cost
        self._reserved_tokens += worst.tokens or 0
        return Reservation(cost, worst.tokens or 0)

    def _over(self, cost: int, request_tokens: int | None) -> str | None:
        """Why one more attempt of this worst case might pass a limit, or None when it fits."""
        if request_tokens is None and (self.max_tokens is not None or self.costs_money):
            return UNBOUNDED
        if self.max_requests is not None and self.requests + 1 > self.max_requests:
            return f"max_requests ({self.max_requests}) reached"
        tokens_ = request_tokens or 0
        if self.max_tokens is not None and self.used_tokens + self._reserved_tokens + tokens_ > self.max_tokens:
            return (
                f"max_tokens_total ({self.max_tokens}) would be exceeded: {self.used_tokens} used, "
                f"{self._reserved_tokens} in flight, up to {tokens_} for the next request"
            )
        flight = self._reserved_pusd + cost
        if self.max_cost_pusd is not None and self.before_pusd + self.run_pusd + flight > self.max_cost_pusd:
            return f"max_cost_usd ({format_usd(self.max_cost_pusd)} USD for the job) {self._could(cost)}"
        if self.max_run_cost_pusd is not None and self.run_pusd + flight > self.max_run_cost_pusd:
            return f"max_cost_usd_per_run ({format_usd(self.max_run_cost_pusd)} USD) {self._could(cost)}"
        return None

    def _could(self, cost: int) -> str:
        return (
            f"could be exceeded: up to {format_usd(self._reserved_pusd)} USD in flight and up to "
            f"{format_usd(cost)} USD for the next request"
        )

    def settle(self, reservation: Reservation, cost_pusd: int, tokens_used: int, *, unknown: bool = False) -> None:
        """Swap a reservation for what the attempt used. `unknown`: it may have been billed but
        no answer said how much, so its worst case stays spent."""
        self._reserved_pusd -= reservation.cost_pusd
        self._reserved_tokens -= reservation.tokens
        if unknown:
            self.held_pusd += reservation.cost_pusd
            self.used_tokens += reservation.tokens
            return
        self.spent_pusd += cost_pusd
        self.used_tokens += tokens_used

    def message(self) -> str:
        """What stopped the run, what the job and the run have spent, and what is left."""
        held = f", of which up to {format_usd(self.held_pusd)} USD unanswered" if self.held_pusd else ""
        spent = (
            f"spent {format_usd(self.before_pusd + self.run_pusd)} USD for the job so far "
            f"({format_usd(self.run_pusd)} USD this run{held})"
        )
        left = []
        if self.max_cost_pusd is not None:
            job_left = max(0, self.max_cost_pusd - self.before_pusd - self.run_pusd)
            left.append(f"{format_usd(job_left)} USD left of max_cost_usd")
        if self.max_run_cost_pusd is not None:
            run_left = max(0, self.max_run_cost_pusd - self.run_pusd)
            left.append(f"{format_usd(run_left)} USD left of max_cost_usd_per_run")
        return f"budget stop: {self.exhausted}; {spent}" + (f"; {', '.join(left)}" if left else "")


class Bounds:
    """Works out the worst case of each attempt of a job (see `tokens.bound` and
    `PriceTable.worst_case`): its input bound, its output bound, the highest price that applies."""

    def __init__(self, parameters: Parameters, prices: PriceTable | None, *, priced: bool) -> None:
        self.max_output = max_output_tokens(parameters)
        self.thinking = parameters.enable_thinking  # None: the model may think by default
        self.prices = prices if priced else None

    def worst(self, request: Request) -> WorstCase:
        inputs = tokens.bound(wire.messages_of(request.body), wire.parameters_of(request.body))
        if inputs is None:
            return WorstCase(None, None)
        cost = None
        if self.prices is not None:
            cost = self.prices.worst_case(
                wire.model_of(request.body),
                inputs,
                self.max_output,
                thinking=self.thinking,
                cache_writes=b'"cache_control"' in request.payload,
            )
        return WorstCase(cost, inputs + self.max_output)
