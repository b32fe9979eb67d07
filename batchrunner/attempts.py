"""One request's life, from its first attempt to its result:

    pace -> reserve -> send -> classify -> (back off and again) -> records

Each attempt waits for a slot in flight (`FlightGate`), the request pacer and the token pacer,
books its worst case with the budget guard, and is sent. The classified outcome decides:

    answer      record it (or, with [output] parse_json, re-ask while the answer is not JSON)
    RETRY       429 / 5xx / timeout / dropped connection: back off (full jitter or Retry-After)
                and try again, up to `max_retries`; a 429 also slows the pacer and the gate
    ROW_FAILED  a 4xx about this request: the row fails with the service's code
    ABORT       401 / 403 / account or model errors: AuthError, which stops the whole run

Every attempt, including the ones that may have been billed, becomes an `Attempt` record; the
request's end becomes one `Result`. Both go to the checkpoint writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .breaker import Breaker
from .budget import Budget, Reservation, max_output_tokens
from .client import CallFailed, DashScopeClient, TransportFailed
from .errors import AuthError, ServiceUnreachable
from .pacing import FlightGate, RequestPacer, TokenBudget, backoff_delay
from .pool import Stop
from .pricing import Cost, PriceTable, usd_to_pusd
from .records import Attempt, Failure, Result, RunCounts, attempt_of, dumps, parse_json_answer, result_of
from .render import Request
from .spec import JobSpec, Limits
from .store import now


@dataclass(frozen=True, slots=True)
class Policy:
    """What the life of a request needs to know of the job."""

    limits: Limits
    output_charge: int  # output tokens the token pacer books per request
    max_output: int  # the most output one attempt can be billed for (budget guard)
    thinking: bool
    explicit_cache: bool
    parse_json: bool = False
    json_retries: int = 0
    context_limit: int | None = None
    job: str | None = None  # stamped on each result: specs may share one store

    @classmethod
    def of(cls, spec: JobSpec, prices: PriceTable | None) -> Policy:
        p = spec.parameters
        context = spec.model.context_tokens or (prices.context_tokens(spec.model.name) if prices else None)
        return cls(
            limits=spec.limits,
            output_charge=max_output_tokens(p.model_copy(update={"n": 1, "enable_thinking": False})),
            max_output=max_output_tokens(p),
            thinking=bool(p.enable_thinking),
            explicit_cache=spec.prompt.cache != "none",
            parse_json=spec.output.parse_json,
            json_retries=spec.output.json_retries,
            context_limit=context,
            job=spec.job.name,
        )


UNREACHABLE_ATTEMPTS = 3  # attempts in a row that cannot connect, before any answer: a config error


def _transient(answer: wire.Completion | CallFailed | TransportFailed) -> str | None:
    """The error code of an attempt that failed for a transient reason (for the breaker)."""
    if isinstance(answer, TransportFailed):
        return answer.code
    if isinstance(answer, CallFailed) and answer.error.status >= 500:
        return f"HTTP {answer.error.status} {answer.error.code}"
    return None


def failure_of(exc: CallFailed | TransportFailed) -> Failure:
    """The Failure an exception from `DashScopeClient.generate` describes."""
    if isinstance(exc, CallFailed):
        e = exc.error
        return Failure(e.code, e.message, e.status, e.request_id)
    return Failure(exc.code, exc.message, possibly_billed=exc.possibly_billed)


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt that went out: its answer or classified failure, when it started, its cost."""

    answer: wire.Completion | CallFailed | TransportFailed
    started: str
    t0: float
    cost: Cost | None = None


@dataclass(slots=True)
class Life:
    """The state of one request across its attempts."""

    request: Request
    started: str = field(default_factory=now)
    t0: float = field(default_factory=time.monotonic)
    billed: int = 0
    json_tries: int = 0
    failures: int = 0  # failed attempts that count against max_retries (not 429s)
    throttled_since: float | None = None  # when its first 429 came, if one did


Answer = wire.Completion | CallFailed | TransportFailed


class Attempts:
    """Sends requests, each to its end, sharing the run's pacers, budget and breaker."""

    def __init__(
        self,
        policy: Policy,
        client: DashScopeClient,
        write_result: Callable[[Result], None],
        write_attempt: Callable[[Attempt], None],
        *,
        run_id: int,
        stop: Stop,
        prices: PriceTable | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        limits = policy.limits
        self.policy = policy
        self.client = client
        self.write_result = write_result
        self.write_attempt = write_attempt
        self.run_id = run_id
        self.stop = stop
        self.prices = prices
        self.on_result = on_result
        self.counts = RunCounts()
        self.gate = FlightGate(limits.concurrency)
        self.pacer = RequestPacer(limits.requests_per_minute)
        self.tokens = TokenBudget(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self.breaker = Breaker(limits.breaker_window, limits.breaker_failure_ratio)
        self.reached = False  # whether any attempt got an HTTP answer
        self.unreachable = 0  # attempts in a row that could not connect, before any answer
        max_cost = limits.max_cost_usd
        self.budget = Budget(
            max_cost_pusd=None if max_cost is None else usd_to_pusd(max_cost),
            max_requests=limits.max_requests,
            max_tokens=limits.max_tokens_total,
        )

    # ------------------------------------------------------------------ the life

    async def process(self, request: Request) -> None:
        """Send one request until it has a result, or the run stops (then it stays pending)."""
        life = Life(request)
        limit = self.policy.context_limit
        if limit is not None and request.est_input_tokens > limit:
            problem = (
                f"the prompt is about {request.est_input_tokens} tokens, over the model's context of "
                f"{limit}; it was not sent (set [model] context_tokens if the limit is wrong)"
            )
            self._finish(life, 0, failure=Failure("PromptTooLong", problem))
            return
        self.counts.sent += 1
        attempt = 0
        while True:
            attempt += 1
            sent = await self._send(request)
            if sent is None:
                return  # the budget guard stopped the run
            if self.breaker.note(_transient(sent.answer)):
                self.stop.request()
            if not isinstance(sent.answer, TransportFailed):
                self.reached = True
            if isinstance(sent.answer, wire.Completion):
                if await self._answered(life, sent, sent.answer, attempt):
                    return
                continue
            delay = self._failed(life, sent, sent.answer, attempt)
            if delay is None:
                return
            self.counts.retries += 1
            await asyncio.sleep(delay)

    async def _send(self, request: Request) -> Sent | None:
        """One paced, budgeted call; None when the budget guard refused to send it."""
        await self.gate.acquire()
        try:
            await self.pacer.wait()
            if self.tokens is not None:
                await self.tokens.charge(self._token_estimate(request))
            reservation = self._reserve(request)
            if reservation is None:
                return None
            self.counts.attempts += 1
            started, t0 = now(), time.monotonic()
            try:
                answer: Answer = await self.client.generate(request)
            except (CallFailed, TransportFailed) as exc:
                answer = exc
            except asyncio.CancelledError:
                # Cut off in flight (second signal or grace over): it may have been billed.
                self._log(request, 0, started, t0, outcome="cancelled", possibly_billed=1)
                raise
            cost = None
            if isinstance(answer, wire.Completion):
                cost = self._cost(request, answer.usage)
                used = answer.usage.input_tokens + answer.usage.output_tokens
                self.budget.settle(reservation, cost.total_pusd if cost else 0, used)
            else:
                self.budget.settle(reservation, 0, 0)
            return Sent(answer, started, t0, cost)
        finally:
            await self.gate.release()

    async def _answered(self, life: Life, sent: Sent, answer: wire.Completion, attempt: int) -> bool:
        """Handle an answer; True when the request is finished, False to ask again."""
        usage = answer.usage
        if self.tokens is not None:
            self.tokens.settle(self._token_estimate(life.request), usage.input_tokens + usage.output_tokens)
        self._log(
            life.request,
            attempt,
            sent.started,
            sent.t0,
            outcome="ok",
            http_status=200,
            request_id=answer.request_id,
            usage=dumps(usage.raw),
            possibly_billed=1,
        )
        await self.gate.on_success()
        self.pacer.on_success()
        if not self.policy.parse_json:
            self._finish(life, attempt, completion=answer, cost=sent.cost)
            return True
        parsed, problem = parse_json_answer(answer.content)
        if problem is None:
            self._finish(life, attempt, completion=answer, parsed=parsed, cost=sent.cost)
            return True
        failure = Failure("InvalidJSON", problem)
        self._log(life.request, attempt, sent.started, sent.t0, outcome="invalid_json", failure=failure)
        life.json_tries += 1
        if life.json_tries > self.policy.json_retries or attempt > self.policy.limits.max_retries:
            # Paid for: keep the answer and its usage, marked failed.
            self._finish(life, attempt, completion=answer, failure=failure, cost=sent.cost)
            return True
        self.counts.retries += 1
        self.counts.paid(usage, sent.cost)  # paid for, although it is asked again
        return False

    def _failed(self, life: Life, sent: Sent, error: CallFailed | TransportFailed, attempt: int) -> float | None:
        """Handle a failed attempt: the delay before the next one, or None when it ends here."""
        if self.tokens is not None:
            self.tokens.settle(self._token_estimate(life.request), 0)
        failure = failure_of(error)
        retry_after = None
        decision = wire.Outcome.RETRY
        if isinstance(error, CallFailed):
            decision, retry_after = error.error.outcome, error.error.retry_after
            if error.error.status == 429:
                self.counts.throttled += 1
                self.gate.on_throttled()
                self.pacer.on_throttled()
        elif error.possibly_billed:
            life.billed += 1
            self.counts.possibly_billed += 1
        self._log(life.request, attempt, sent.started, sent.t0, outcome=decision.value, failure=failure)
        self._check_reachable(error)
        if decision is wire.Outcome.ABORT:
            e = failure
            msg = f"HTTP {e.http_status} {e.error_code}: {e.error_message} (request_id {e.request_id})"
            raise AuthError(msg, status=e.http_status or 0, code=e.error_code, request_id=e.request_id)
        if decision is wire.Outcome.ROW_FAILED:
            self._finish(life, attempt, failure=failure)
            return None
        limits = self.policy.limits
        gave_up = self._gave_up(life, error, attempt)
        if gave_up is not None:
            failure = failure.with_message(f"{gave_up}; last: {failure.error_message}")
            self._finish(life, attempt, failure=failure, retryable=True)
            return None
        if self.stop.requested:
            return None  # not recorded: the row stays pending for the next run
        return backoff_delay(
            attempt, initial=limits.backoff_initial_s, cap=limits.backoff_max_s, retry_after=retry_after
        )

    def _gave_up(self, life: Life, error: CallFailed | TransportFailed, attempt: int) -> str | None:
        """Why a request stops retrying, or None to go on. A 429 means the pacer is still finding
        the service's real rate: throttled attempts are bounded by time (throttle_patience_s),
        every other failure by count (max_retries)."""
        limits = self.policy.limits
        if isinstance(error, CallFailed) and error.error.status == 429:
            now = time.monotonic()
            life.throttled_since = life.throttled_since or now
            waited = now - life.throttled_since
            if waited > limits.throttle_patience_s:
                return f"gave up after {attempt} attempts, throttled for {waited:.0f}s"
            return None
        life.failures += 1
        if life.failures > limits.max_retries:
            return f"gave up after {attempt} attempts"
        return None

    def _check_reachable(self, error: CallFailed | TransportFailed) -> None:
        """A run whose first attempts cannot even connect is misconfigured, not facing an outage."""
        if self.reached or not isinstance(error, TransportFailed) or not error.unreachable:
            self.unreachable = 0
            return
        self.unreachable += 1
        if self.unreachable >= UNREACHABLE_ATTEMPTS:
            msg = (
                f"the service could not be reached: {error.code}: {error.message}. Check the base URL "
                f"(scheme, host, port; DASHSCOPE_BASE_URL or [api] base_url)"
            )
            raise ServiceUnreachable(msg)

    # ------------------------------------------------------------------ helpers

    def _token_estimate(self, request: Request) -> int:
        return request.est_input_tokens + self.policy.output_charge

    def _reserve(self, request: Request) -> Reservation | None:
        """Book the attempt's worst case with the budget guard; None stops the run."""
        if not self.budget.active:
            return Reservation(0, 0)
        max_output = self.policy.max_output
        worst_cost = 0
        if self.prices is not None and self.budget.max_cost_pusd is not None:
            model = wire.model_of(request.body)
            worst = self.prices.worst_case(model, request.est_input_tokens, max_output, thinking=self.policy.thinking)
            worst_cost = worst or 0
        reservation = self.budget.reserve(worst_cost, request.est_input_tokens + max_output)
        if reservation is None:
            self.stop.request()
        return reservation

    def _cost(self, request: Request, usage: wire.Usage) -> Cost | None:
        if self.prices is None:
            return None
        model = wire.model_of(request.body)
        return self.prices.cost(model, usage, thinking=self.policy.thinking, explicit_cache=self.policy.explicit_cache)

    def _log(self, request: Request, attempt: int, started: str, t0: float, **fields: Any) -> None:
        latency_ms = int((time.monotonic() - t0) * 1000)
        self.write_attempt(attempt_of(request.key, self.run_id, attempt, started, latency_ms, **fields))

    def _finish(
        self,
        life: Life,
        attempts: int,
        *,
        completion: wire.Completion | None = None,
        failure: Failure | None = None,
        retryable: bool = False,
        parsed: str | None = None,
        cost: Cost | None = None,
    ) -> None:
        result = result_of(
            life.request,
            run_id=self.run_id,
            started=life.started,
            latency_ms=int((time.monotonic() - life.t0) * 1000),
            attempts=attempts,
            billed=life.billed,
            completion=completion,
            failure=failure,
            retryable=retryable,
            parsed=parsed,
            cost=cost,
            price_version=self.prices.version if self.prices else None,
            job=self.policy.job,
        )
        if completion is not None:
            self.counts.paid(completion.usage, cost)
        if result.ok:
            self.counts.ok += 1
        else:
            self.counts.failed += 1
        self.write_result(result)
        if self.on_result is not None:
            self.on_result(result)
