"""One request's life, from its first attempt to its result:

    pace -> reserve -> send -> classify -> (back off and again) -> records

A request whose prompt the Qwen tokenizer counts above the model's input limit fails as
PromptTooLong without being sent. Each attempt waits for a slot in flight (`FlightGate`), the
request pacer and the token pacer, books its worst case with the budget guard (a request the
guard refuses is not sent, not counted as sent, and stays pending), and is sent. The
classified outcome decides:

    answer      record it (or, with [output] parse_json, re-ask while the answer is not JSON)
    RETRY       429 / 5xx / timeout / dropped connection: back off (full jitter or Retry-After)
                and try again, up to `max_retries` (429s: for up to throttle_patience_s); a
                429 also slows the pacer and the gate
    ROW_FAILED  a 4xx about this request: the row fails with the service's code
    ABORT       401 / 403 / account or model errors: AuthError, which stops the whole run

Every attempt becomes one `Attempt` record (what it led to and cost: the words are in records.py),
the request's end one `Result`; both carry the policy's `mode` and go to the checkpoint writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import tokens, wire
from .breaker import Breaker
from .budget import Bounds, Budget, Reservation, WorstCase, max_output_tokens
from .client import CallFailed, Sender, TransportFailed, failure_of, transient_code
from .errors import AuthError, ServiceUnreachable
from .pacing import FlightGate, RequestPacer, TokenBudget, backoff_delay
from .parameters import Parameters
from .pool import Stop
from .pricing import Cost, PriceTable, usd_to_pusd
from .records import Attempt, Failure, Result, RunCounts, attempt_of, parse_json_answer, result_of
from .render import Request
from .spec import JobSpec, Limits
from .store import now


@dataclass(frozen=True, slots=True)
class Policy:
    """What the life of a request needs to know of the job."""

    limits: Limits
    parameters: Parameters
    output_charge: int  # output tokens the token pacer books per request
    parse_json: bool = False
    json_retries: int = 0
    context_limit: int | None = None
    job: str | None = None  # stamped on each result: specs may share one store
    mode: str = "online"  # online | batch-chat: stamped on each result and attempt

    @classmethod
    def of(cls, spec: JobSpec, prices: PriceTable | None, *, mode: str = "online") -> Policy:
        p = spec.parameters
        context = spec.model.context_tokens or (prices.context_tokens(spec.model.name) if prices else None)
        return cls(
            limits=spec.limits,
            parameters=p,
            output_charge=max_output_tokens(p.model_copy(update={"n": 1, "enable_thinking": False})),
            parse_json=spec.output.parse_json,
            json_retries=spec.output.json_retries,
            context_limit=context,
            job=spec.job.name,
            mode=mode,
        )


UNREACHABLE_ATTEMPTS = 3  # attempts in a row that cannot connect, before any answer: a config error


Answer = wire.Completion | CallFailed | TransportFailed


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt that went out: its answer or classified failure, when it started, its cost."""

    answer: Answer
    started: str
    t0: float
    cost: Cost | None = None


@dataclass(slots=True)
class Life:
    """The state of one request across its attempts."""

    request: Request
    started: str = field(default_factory=now)
    t0: float = field(default_factory=time.monotonic)
    billed: int = 0  # attempts that may have been billed without an answer saying how much
    json_tries: int = 0
    worst: WorstCase | None = None  # what the budget guard books for each of its attempts
    failures: int = 0  # failed attempts that count against max_retries (not 429s)
    throttled_since: float | None = None  # when its first 429 came, if one did


class Attempts:
    """Sends requests, each to its end, sharing the run's pacers, budget and breaker.

    `spent_before_pusd` is what earlier runs of the job spent (for the job's max_cost_usd)."""

    def __init__(
        self,
        policy: Policy,
        client: Sender,
        write_result: Callable[[Result], None],
        write_attempt: Callable[[Attempt], None],
        *,
        run_id: int,
        stop: Stop,
        prices: PriceTable | None = None,
        on_result: Callable[[Result], None] | None = None,
        spent_before_pusd: int = 0,
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
        self.budget = Budget(
            max_cost_pusd=_pusd(limits.max_cost_usd),
            max_run_cost_pusd=_pusd(limits.max_cost_usd_per_run),
            max_requests=limits.max_requests,
            max_tokens=limits.max_tokens_total,
            before_pusd=spent_before_pusd,
        )
        self.bounds = Bounds(policy.parameters, prices, priced=self.budget.costs_money)
        self._bounded = self.budget.costs_money or self.budget.max_tokens is not None
        if self._bounded:
            tokens.qwen_encoder()  # load the tokenizer now, not on the event loop's first request

    # ------------------------------------------------------------------ the life

    async def process(self, request: Request) -> None:
        """Send one request until it has a result, or the run stops (then it stays pending)."""
        life = Life(request)
        limit = self.policy.context_limit
        over = tokens.count_over(wire.messages_of(request.body), limit) if limit is not None else None
        if over is not None:
            problem = (
                f"the prompt is {over} tokens (Qwen tokenizer, chat template included), over the model's "
                f"context of {limit} input tokens; it was not sent (set [model] context_tokens if the limit is wrong)"
            )
            self._finish(life, 0, failure=Failure("PromptTooLong", problem))
            return
        attempt = 0
        while True:
            attempt += 1
            sent = await self._send(life, attempt)
            if sent is None:
                return  # the budget guard stopped the run
            if self.breaker.note(transient_code(sent.answer)):
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

    async def _send(self, life: Life, attempt: int) -> Sent | None:
        """One paced, budgeted call; None when the run stopped (a signal, the budget guard, the
        breaker, a store failure) before it could be sent: the row stays pending."""
        request = life.request
        await self.gate.acquire()
        try:
            if self.tokens is not None:
                await self.tokens.charge(self._token_estimate(request))
            t0 = await self.pacer.wait()  # the last wait: the pacer counts when requests leave
            if self.stop.requested:  # it may have waited long in the pacers: look again
                return None
            reservation = self._reserve(life)
            if reservation is None:
                return None
            if attempt == 1:
                self.counts.sent += 1
            self.counts.attempts += 1
            started = now()
            try:
                answer: Answer = await self.client.generate(request)
            except (CallFailed, TransportFailed) as exc:
                answer = exc
            except asyncio.CancelledError:
                # Cut off in flight (second signal or grace over): it may have been billed.
                self.budget.settle(reservation, 0, 0, unknown=True)
                self._log(
                    life,
                    attempt,
                    Sent(TransportFailed("Cancelled", "cut off in flight", possibly_billed=True), started, t0),
                    "cancelled",
                )
                raise
            cost = None
            if isinstance(answer, wire.Completion):
                cost = self._cost(request, answer.usage)
                used = answer.usage.input_tokens + answer.usage.output_tokens
                self.budget.settle(reservation, cost.total_pusd if cost else 0, used)
            else:
                unknown = isinstance(answer, TransportFailed) and answer.possibly_billed
                self.budget.settle(reservation, 0, 0, unknown=unknown)
            return Sent(answer, started, t0, cost)
        finally:
            await self.gate.release()

    async def _answered(self, life: Life, sent: Sent, answer: wire.Completion, attempt: int) -> bool:
        """Handle an answer; True when the request is finished, False to ask again."""
        usage = answer.usage
        if self.tokens is not None:
            self.tokens.settle(self._token_estimate(life.request), usage.input_tokens + usage.output_tokens)
        self.pacer.on_success(sent.t0)  # first: it reads the answer's time
        await self.gate.on_success()
        self.counts.paid(usage, sent.cost)  # every answer is paid for, re-asked or not
        parsed, problem = parse_json_answer(answer.content) if self.policy.parse_json else (None, None)
        if problem is None:
            self._log(life, attempt, sent, "ok")
            self._finish(life, attempt, completion=answer, parsed=parsed, cost=sent.cost)
            return True
        failure = Failure("InvalidJSON", problem)
        life.json_tries += 1
        last = life.json_tries > self.policy.json_retries or attempt > self.policy.limits.max_retries
        self._log(life, attempt, sent, "failed" if last else "invalid_json", failure=failure)
        if last:  # paid for: keep the answer and its usage, marked failed
            self._finish(life, attempt, completion=answer, failure=failure, cost=sent.cost)
            return True
        if self.stop.requested:  # do not buy a new answer now: keep this one, the next run re-asks
            self._finish(life, attempt, completion=answer, failure=failure, cost=sent.cost, retryable=True)
            return True
        self.counts.retries += 1
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
                self.pacer.on_throttled(sent.t0, retry_after)
        elif error.possibly_billed:
            life.billed += 1
            self.counts.possibly_billed += 1
        limits = self.policy.limits
        gave_up = self._gave_up(life, error, attempt) if decision is wire.Outcome.RETRY else None
        self._log(life, attempt, sent, "gave_up" if gave_up else decision.value, failure=failure)
        self._check_reachable(error)
        if decision is wire.Outcome.ABORT:
            e = failure
            msg = f"HTTP {e.http_status} {e.error_code}: {e.error_message} (request_id {e.request_id})"
            raise AuthError(msg, status=e.http_status or 0, code=e.error_code, request_id=e.request_id)
        if decision is wire.Outcome.ROW_FAILED:
            self._finish(life, attempt, failure=failure)
            return None
        if gave_up is not None:
            failure = failure.with_message(f"{gave_up}; last: {failure.error_message}")
            self._finish(life, attempt, failure=failure, retryable=True)
            return None
        if self.stop.requested:
            return None  # the row stays pending: the next run sends it again
        return backoff_delay(
            attempt, initial=limits.backoff_initial_s, cap=limits.backoff_max_s, retry_after=retry_after
        )

    def _gave_up(self, life: Life, error: CallFailed | TransportFailed, attempt: int) -> str | None:
        """Why a request stops retrying, or None to go on. A 429 means the pacer is still finding
        the service's real rate: throttled attempts are bounded by time (throttle_patience_s),
        every other failure by count (max_retries)."""
        limits = self.policy.limits
        if isinstance(error, CallFailed) and error.error.status == 429:
            now_s = time.monotonic()
            life.throttled_since = life.throttled_since or now_s
            waited = now_s - life.throttled_since
            return (
                f"gave up after {attempt} attempts, throttled for {waited:.0f}s"
                if waited > limits.throttle_patience_s
                else None
            )
        life.failures += 1
        return f"gave up after {attempt} attempts" if life.failures > limits.max_retries else None

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

    def _reserve(self, life: Life) -> Reservation | None:
        """Book the attempt's worst case with the budget guard; None stops the run."""
        if not self.budget.active:
            return Reservation(0, 0)
        if life.worst is None:
            life.worst = self.bounds.worst(life.request) if self._bounded else WorstCase(0, 0)
        reservation = self.budget.reserve(life.worst)
        if reservation is None:
            self.stop.request()
        return reservation

    def _cost(self, request: Request, usage: wire.Usage) -> Cost | None:
        if self.prices is None:
            return None
        return self.prices.cost(
            wire.model_of(request.body), usage, thinking=bool(self.policy.parameters.enable_thinking)
        )

    def _log(self, life: Life, attempt: int, sent: Sent, outcome: str, *, failure: Failure | None = None) -> None:
        answer = sent.answer
        worst = life.worst.cost_pusd if life.worst is not None and self.budget.costs_money else None
        self.write_attempt(
            attempt_of(
                life.request,
                run_id=self.run_id,
                attempt=attempt,
                started=sent.started,
                latency_ms=int((time.monotonic() - sent.t0) * 1000),
                outcome=outcome,
                failure=failure or (failure_of(answer) if not isinstance(answer, wire.Completion) else None),
                completion=answer if isinstance(answer, wire.Completion) else None,
                cost=sent.cost,
                price_version=self.prices.version if self.prices else None,
                worst_cost_pusd=worst,
                mode=self.policy.mode,
            )
        )

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
            mode=self.policy.mode,
        )
        if result.ok:
            self.counts.ok += 1
        else:
            self.counts.failed += 1
        self.write_result(result)
        if self.on_result is not None:
            self.on_result(result)


def _pusd(usd: float | None) -> int | None:
    return None if usd is None else usd_to_pusd(usd)
