"""The worker pool: bounded asyncio workers that pace, send, retry and hand results to the writer.

Each worker takes one request at a time from a bounded queue (so the producer never runs
ahead of the pool), and for each attempt: waits for a slot in flight, the request pacer and
the token budget; sends; then acts on the classified outcome:

    ok          record the answer
    RETRY       429 / 5xx / timeout / dropped connection: back off (full jitter or Retry-After)
                and try again, up to `max_retries`; a 429 also narrows the flight gate
    ROW_FAILED  a 4xx about this request: record the row failed with the service's code
    ABORT       401 / 403 / account or model errors: stop the whole run (`Abort`)

Every attempt, including the ones that may have been billed, goes to the attempts table.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from . import store, wire
from .budget import Budget, Reservation
from .client import CallFailed, DashScopeClient, TransportFailed
from .pacing import FlightGate, RequestPacer, TokenBudget, backoff_delay
from .pricing import Cost, PriceTable
from .results import parse_json_answer, result_row
from .source import Request
from .spec import JobSpec
from .writer import CheckpointWriter

DEFAULT_OUTPUT_CHARGE = 1024  # tokens assumed for the TPM limiter when max_tokens is unset


class Abort(Exception):
    """The service refused the key, account or model: no further request can succeed."""

    def __init__(self, error: wire.ServiceError) -> None:
        super().__init__(f"HTTP {error.status} {error.code}: {error.message}")
        self.error = error


@dataclass
class PoolCounts:
    """Live counters of one run (read by progress displays)."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0
    possibly_billed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_pusd: int = 0  # exact, in pico-USD (1e-12 USD)

    @property
    def cost_usd(self) -> float:
        return self.cost_pusd / 1e12


class Pool:
    """Runs requests from an async iterator through `concurrency` workers."""

    def __init__(
        self,
        spec: JobSpec,
        client: DashScopeClient,
        writer: CheckpointWriter,
        *,
        run_id: int,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        limits = spec.limits
        p = spec.parameters
        self.spec = spec
        self.client = client
        self.writer = writer
        self.run_id = run_id
        self.on_result = on_result
        self.counts = PoolCounts()
        self.gate = FlightGate(limits.concurrency)
        self.pacer = RequestPacer(limits.requests_per_minute)
        self.tokens = TokenBudget(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self.output_charge = p.max_tokens or DEFAULT_OUTPUT_CHARGE
        self.stopping = False
        self.prices = prices
        self.thinking = bool(p.enable_thinking)
        self.explicit_cache = spec.prompt.cache != "none"
        # The most output one attempt can be billed for: every choice, plus the thinking chain.
        self.max_output = self.output_charge * (p.n or 1) + ((p.thinking_budget or 0) if self.thinking else 0)
        max_cost = limits.max_cost_usd
        self.breaker_tripped: str | None = None
        self._recent: deque[bool] = deque(maxlen=limits.breaker_window or 1)
        self.context_limit = spec.model.context_tokens or (prices.context_tokens(spec.model.name) if prices else None)
        self.budget = Budget(
            max_cost_pusd=None if max_cost is None else int(Fraction(str(max_cost)) * 10**12),
            max_requests=limits.max_requests,
            max_tokens=limits.max_tokens_total,
        )

    def stop(self) -> None:
        """Stop taking new requests; requests already being worked on run to their end."""
        self.stopping = True

    async def run(self, requests: AsyncIterator[Request]) -> None:
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=self.spec.limits.concurrency)
        workers = self.spec.limits.concurrency

        async def produce() -> None:
            try:
                async for request in requests:
                    if self.stopping:
                        break
                    await queue.put(request)
            finally:
                aclose = getattr(requests, "aclose", None)
                if aclose is not None:
                    await aclose()
                for _ in range(workers):
                    await queue.put(None)

        async def work() -> None:
            while True:
                request = await queue.get()
                if request is None:
                    return
                if not self.stopping:  # once stopping, drain the queue without sending
                    await self._process(request)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                for _ in range(workers):
                    group.create_task(work())
        except BaseExceptionGroup as eg:
            # Surface the first real error (an Abort, or a bug) rather than the group.
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    # ------------------------------------------------------------------ one request

    def _note(self, failed: bool) -> None:
        """The circuit breaker: stop the run when most recent attempts failed transiently."""
        window = self.spec.limits.breaker_window
        if not window:
            return
        self._recent.append(failed)
        if len(self._recent) == window and self.breaker_tripped is None:
            ratio = sum(self._recent) / window
            if ratio >= self.spec.limits.breaker_failure_ratio:
                self.breaker_tripped = (
                    f"circuit breaker: {ratio:.0%} of the last {window} attempts failed with server errors, "
                    "timeouts or dropped connections; the service looks down, so the run stopped"
                )
                self.stop()

    def _reserve(self, request: Request) -> Reservation | None:
        """Book the attempt's worst case with the budget guard; None stops the run."""
        if not self.budget.active:
            return Reservation(0, 0)
        worst_tokens = request.est_input_tokens + self.max_output
        worst_cost = 0
        if self.prices is not None and self.budget.max_cost_pusd is not None:
            worst_cost = (
                self.prices.worst_case(
                    request.body["model"], request.est_input_tokens, self.max_output, thinking=self.thinking
                )
                or 0
            )
        reservation = self.budget.reserve(worst_cost, worst_tokens)
        if reservation is None:
            self.stop()
        return reservation

    def cost_of(self, request: Request, usage: wire.Usage) -> Cost | None:
        if self.prices is None:
            return None
        return self.prices.cost(
            request.body["model"], usage, thinking=self.thinking, explicit_cache=self.explicit_cache
        )

    async def _attempt(
        self, request: Request, estimate: int, attempt: int
    ) -> tuple[wire.Completion | CallFailed | TransportFailed | None, str, float, Cost | None]:
        """One paced call: (answer or classified failure, start time, monotonic start, its cost).

        The answer is None when the budget guard refused to send it.
        """
        await self.gate.acquire()
        try:
            await self.pacer.wait()
            if self.tokens is not None:
                await self.tokens.charge(estimate)
            reservation = self._reserve(request)
            if reservation is None:
                return None, "", 0.0, None
            self.counts.attempts += 1
            started, t0 = store.now(), time.monotonic()
            try:
                answer: wire.Completion | CallFailed | TransportFailed = await self.client.generate(request)
            except (CallFailed, TransportFailed) as exc:
                answer = exc
            except asyncio.CancelledError:
                # Cut off in flight (second signal or grace over): it may have been billed.
                fields = {"outcome": "cancelled", "possibly_billed": 1}
                self._log_attempt(request, attempt, started, t0, fields)
                raise
            cost = None
            if isinstance(answer, wire.Completion):
                cost = self.cost_of(request, answer.usage)
                used = answer.usage.input_tokens + answer.usage.output_tokens
                self.budget.settle(reservation, cost.total_pusd if cost else 0, used)
            else:
                self.budget.settle(reservation, 0, 0)
            return answer, started, t0, cost
        finally:
            await self.gate.release()

    async def _process(self, request: Request) -> None:
        started = store.now()
        t0 = time.monotonic()
        estimate = request.est_input_tokens + self.output_charge
        billed = 0
        json_tries = 0
        if self.context_limit is not None and request.est_input_tokens > self.context_limit:
            failure = {
                "error_code": "PromptTooLong",
                "error_message": (
                    f"the prompt is about {request.est_input_tokens} tokens, over the model's context of "
                    f"{self.context_limit}; it was not sent (set [model] context_tokens if the limit is wrong)"
                ),
            }
            self._finish(request, started, t0, 0, 0, failure=failure)
            return
        self.counts.sent += 1
        for attempt in range(1, self.spec.limits.max_retries + 2):
            outcome, a_started, a0, cost = await self._attempt(request, estimate, attempt)
            if outcome is None:
                return  # the budget guard stopped the run: the row stays pending
            self._note(
                isinstance(outcome, TransportFailed)
                or (isinstance(outcome, CallFailed) and outcome.error.status >= 500)
            )
            if isinstance(outcome, wire.Completion):
                usage = outcome.usage
                if self.tokens is not None:
                    self.tokens.settle(estimate, usage.input_tokens + usage.output_tokens)
                self._log_attempt(
                    request,
                    attempt,
                    a_started,
                    a0,
                    {
                        "outcome": "ok",
                        "http_status": 200,
                        "request_id": outcome.request_id,
                        "usage": store.dumps(usage.raw),
                        "possibly_billed": 1,
                    },
                )
                await self.gate.on_success()
                self.pacer.on_success()
                if not self.spec.output.parse_json:
                    self._finish(request, started, t0, attempt, billed, completion=outcome, cost=cost)
                    return
                parsed, problem = parse_json_answer(outcome.content)
                if problem is None:
                    self._finish(request, started, t0, attempt, billed, completion=outcome, parsed=parsed, cost=cost)
                    return
                failure = {"error_code": "InvalidJSON", "error_message": problem}
                self._log_attempt(request, attempt, a_started, a0, {"outcome": "invalid_json", **failure})
                json_tries += 1
                if json_tries > self.spec.output.json_retries or attempt > self.spec.limits.max_retries:
                    # Paid for: keep the answer and its usage, marked failed.
                    self._finish(request, started, t0, attempt, billed, completion=outcome, failure=failure, cost=cost)
                    return
                self.counts.retries += 1
                # This answer was paid for although it is re-sent: count its tokens and cost.
                self.counts.input_tokens += usage.input_tokens
                self.counts.output_tokens += usage.output_tokens
                self.counts.cost_pusd += cost.total_pusd if cost is not None else 0
                continue
            if self.tokens is not None:
                self.tokens.settle(estimate, 0)
            fields = DashScopeClient.describe(outcome)
            if isinstance(outcome, CallFailed):
                decision = outcome.error.outcome
                if outcome.error.status == 429:
                    self.counts.throttled += 1
                    self.gate.on_throttled()
                    self.pacer.on_throttled()
                retry_after = outcome.error.retry_after
            else:
                decision = wire.Outcome.RETRY
                billed += int(outcome.possibly_billed)
                self.counts.possibly_billed += int(outcome.possibly_billed)
                retry_after = None
            self._log_attempt(request, attempt, a_started, a0, {"outcome": decision.value, **fields})
            if decision is wire.Outcome.ABORT:
                assert isinstance(outcome, CallFailed)
                raise Abort(outcome.error)
            if decision is wire.Outcome.ROW_FAILED:
                self._finish(request, started, t0, attempt, billed, failure=fields, retryable=False)
                return
            if attempt > self.spec.limits.max_retries:
                fields["error_message"] = f"gave up after {attempt} attempts; last: {fields.get('error_message', '')}"
                self._finish(request, started, t0, attempt, billed, failure=fields, retryable=True)
                return
            if self.stopping:
                return  # not recorded: the row stays pending for the next run
            self.counts.retries += 1
            limits = self.spec.limits
            await asyncio.sleep(
                backoff_delay(
                    attempt,
                    initial=limits.backoff_initial_s,
                    cap=limits.backoff_max_s,
                    retry_after=retry_after,
                )
            )

    def _log_attempt(self, request: Request, attempt: int, started: str, t0: float, fields: dict[str, Any]) -> None:
        self.writer.add_attempt(
            {
                "key": request.key,
                "run_id": self.run_id,
                "attempt": attempt,
                "started_at": started,
                "latency_ms": int((time.monotonic() - t0) * 1000),
                "possibly_billed": 0,
                **fields,
            }
        )

    def _finish(
        self,
        request: Request,
        started: str,
        t0: float,
        attempts: int,
        billed: int,
        *,
        completion: wire.Completion | None = None,
        failure: dict[str, Any] | None = None,
        retryable: bool = False,
        parsed: str | None = None,
        cost: Cost | None = None,
    ) -> None:
        row = result_row(
            request,
            run_id=self.run_id,
            started=started,
            latency_ms=int((time.monotonic() - t0) * 1000),
            attempts=attempts,
            billed=billed,
            completion=completion,
            failure=failure,
            retryable=retryable,
            parsed=parsed,
            cost=cost,
            price_version=self.prices.version if self.prices else None,
        )
        c = self.counts
        if completion is not None:
            c.input_tokens += completion.usage.input_tokens
            c.output_tokens += completion.usage.output_tokens
            c.cached_tokens += completion.usage.cached_tokens
            c.cost_pusd += cost.total_pusd if cost is not None else 0
        if row["status"] == "ok":
            c.ok += 1
        else:
            c.failed += 1
        self.writer.add_result(row)
        if self.on_result is not None:
            self.on_result(row)
