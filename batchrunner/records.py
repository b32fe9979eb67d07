"""What a run records: one `Result` per finished request and one `Attempt` per HTTP attempt.

Both are frozen values whose field names are the store's column names (the store writes them
as they are). A result is *settled* when no later run sends its request again: answered ok,
or failed for a reason a rerun would not fix (`retryable` false). That rule lives here, in
`settled`, and nowhere else (the store's SQL form of it is built from the same words).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import wire
from .frozen import fast_init
from .jsontext import dumps, usage_json
from .pricing import Cost, format_usd, pusd_to_usd
from .render import Request
from .store import now

__all__ = ["dumps"]  # batchrecords' JSON too


def settled(status: str, retryable: bool | int | None) -> bool:
    """Whether a stored result is final: ok, or failed for good (not retryable)."""
    return status == "ok" or (status == "failed" and not retryable)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt or a request failed, as the attempts and results tables keep it."""

    error_code: str
    error_message: str
    http_status: int | None = None
    request_id: str | None = None
    possibly_billed: bool = False

    def with_message(self, message: str) -> Failure:
        return Failure(self.error_code, message, self.http_status, self.request_id, self.possibly_billed)


@fast_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt (retries and re-asks included), as the `attempts` table keeps it.

    outcome (what this attempt led to):
        ok            answered; the answer is the row's result
        invalid_json  answered (and billed), but not JSON: the request was asked again
        failed        the row failed with it: a 4xx about this request, or (billed) an answer
                      still not JSON with no re-asks left
        gave_up       failed transiently (429, 5xx, timeout, dropped connection) on the last
                      attempt allowed: the row failed, and a later run sends it again
        retry         failed transiently: the request is sent again, after a backoff in this
                      run, or by the next run when this one stopped first
        abort         the service refused the key, account or model (401/403): the run stopped
        cancelled     cut off in flight (a second signal, or grace_s over)
    A request the budget guard refused was not sent: it has no attempt.

    Billing: an answered attempt (ok, invalid_json, or failed with usage) was billed exactly its
    usage; its token columns and its cost (`cost_pusd`, its parts, `price_version`; NULL when the
    model has no price) say so. `possibly_billed` = 1 marks an attempt that reached the service
    but got no answer saying what it cost (a timeout, a dropped connection or a cut stream after
    the request went out, a malformed answer, a cancel in flight): its cost is unknown, and the
    budget counts it at its worst case, `worst_cost_pusd` (kept for every attempt sent under a
    cost budget). Every other attempt was refused by the service or never delivered: not billed.
    """

    key: str
    run_id: int
    attempt: int
    started_at: str
    latency_ms: int
    outcome: str
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    possibly_billed: int = 0
    request_id: str | None = None
    usage: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    image_tokens: int | None = None
    video_tokens: int | None = None
    audio_tokens: int | None = None
    cost_pusd: int | None = None
    cost_usd: float | None = None
    input_cost_pusd: int | None = None
    cached_cost_pusd: int | None = None
    cache_creation_cost_pusd: int | None = None
    output_cost_pusd: int | None = None
    saved_pusd: int | None = None
    price_version: str | None = None
    worst_cost_pusd: int | None = None
    mode: str = "online"  # online | batch | batch-chat: how the attempt was sent (and priced)


@fast_init
@dataclass(frozen=True, slots=True)
class Result:
    """A request that ended: answered, or failed (with the paid answer kept if there was one).

    `cost_pusd` and its parts price the answer kept; `total_cost_pusd` is what the request cost
    in all (re-asks for JSON, answers of earlier runs that `--retry-failed` sent again)."""

    key: str
    row_id: str
    row_index: int
    status: str  # ok | failed
    retryable: int
    attempts: int
    possibly_billed_attempts: int
    latency_ms: int
    started_at: str
    finished_at: str
    model: str
    endpoint: str
    parameters: str | None
    run_id: int
    sample: int = 0
    seed: int | None = None
    job: str | None = None  # the job (spec name) that made it: specs may share one store
    error_code: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    tool_calls: str | None = None
    logprobs: str | None = None
    choices: str | None = None
    parsed: str | None = None
    usage: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    image_tokens: int | None = None
    video_tokens: int | None = None
    audio_tokens: int | None = None
    cost_pusd: int | None = None
    cost_usd: float | None = None
    input_cost_pusd: int | None = None
    cached_cost_pusd: int | None = None
    cache_creation_cost_pusd: int | None = None
    output_cost_pusd: int | None = None
    saved_pusd: int | None = None
    price_version: str | None = None
    total_cost_pusd: int | None = None  # every paid attempt of this request, across runs: the
    total_cost_usd: float | None = None  # store fills both in from `attempts` as it writes the row
    mode: str = "online"  # online | batch | batch-chat: how the answer kept was bought

    @property
    def settled(self) -> bool:
        return settled(self.status, self.retryable)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RunCounts:
    """Live counters of one run (read by progress displays and the run's summary)."""

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
    cost_pusd: int = 0  # exact, in pico-USD (1e-12 USD), of the answers that had a price
    priced: int = 0  # answers (paid attempts) with a price
    unpriced: int = 0  # answers whose model has no price: their cost is unknown, not 0

    @property
    def cost_usd(self) -> float:
        return pusd_to_usd(self.cost_pusd)

    def paid(self, usage: wire.Usage, cost: Cost | None) -> None:
        """Count an answer that was paid for (each paid attempt, re-asks included)."""
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_tokens += usage.cached_tokens
        if cost is None:
            self.unpriced += 1
        else:
            self.priced += 1
            self.cost_pusd += cost.total_pusd

    def cost_text(self, places: int = 6) -> str:
        """The cost for people: `unpriced` when no answer had a price (never 0 USD)."""
        if self.unpriced and not self.priced:
            return "unpriced"
        text = f"{format_usd(self.cost_pusd, places)} USD"
        return f"{text} + {self.unpriced} unpriced answer(s)" if self.unpriced else text


def _cost_fields(cost: Cost | None, price_version: str | None) -> dict[str, Any]:
    if cost is None:
        return {}
    return {
        "cost_pusd": cost.total_pusd,
        "cost_usd": pusd_to_usd(cost.total_pusd),
        "input_cost_pusd": cost.input_pusd,
        "cached_cost_pusd": cost.cached_pusd,
        "cache_creation_cost_pusd": cost.cache_creation_pusd,
        "output_cost_pusd": cost.output_pusd,
        "saved_pusd": cost.saved_pusd,
        "price_version": price_version,
    }


def _answer_fields(completion: wire.Completion | None, parsed: str | None) -> dict[str, Any]:
    if completion is None:
        return {}
    usage = completion.usage
    choices = [c.to_json() for c in completion.choices] if len(completion.choices) > 1 else None
    return {
        "content": completion.content,
        "reasoning_content": completion.reasoning_content,
        "finish_reason": completion.finish_reason,
        "tool_calls": dumps(completion.tool_calls),
        "logprobs": dumps(completion.first.logprobs),
        "choices": dumps(choices),
        "parsed": parsed,
        "request_id": completion.request_id,
        "http_status": 200,
        "usage": usage_json(usage),
        **{name: getattr(usage, name) for name in wire.USAGE_FIELDS},
    }


def result_of(
    request: Request,
    *,
    run_id: int,
    started: str,
    latency_ms: int,
    attempts: int,
    billed: int,
    completion: wire.Completion | None = None,
    failure: Failure | None = None,
    retryable: bool = False,
    parsed: str | None = None,
    cost: Cost | None = None,
    price_version: str | None = None,
    job: str | None = None,
    mode: str = "online",
) -> Result:
    """The result of a request that ended: answered (ok, or failed when its answer was unusable:
    the answer and usage are kept, since they were paid for) or failed without an answer."""
    failed: dict[str, Any] = {}
    if failure is not None:
        names = ("error_code", "error_message", "http_status", "request_id")
        failed = {name: getattr(failure, name) for name in names}
    return Result(
        key=request.key,
        row_id=request.row_id,
        row_index=request.row_index,
        status="ok" if failure is None else "failed",
        retryable=int(retryable),
        attempts=attempts,
        possibly_billed_attempts=billed,
        latency_ms=latency_ms,
        started_at=started,
        finished_at=now(),
        model=wire.model_of(request.body),
        endpoint=request.path,
        parameters=dumps(wire.parameters_of(request.body)),
        run_id=run_id,
        sample=request.sample,
        seed=request.seed,
        job=job,
        mode=mode,
        **{**failed, **_cost_fields(cost, price_version), **_answer_fields(completion, parsed)},
    )


def attempt_of(
    request: Request,
    *,
    run_id: int,
    attempt: int,
    started: str,
    latency_ms: int,
    outcome: str,
    failure: Failure | None = None,
    completion: wire.Completion | None = None,
    cost: Cost | None = None,
    price_version: str | None = None,
    worst_cost_pusd: int | None = None,
    possibly_billed: bool = False,
    mode: str = "online",
) -> Attempt:
    """The record of one attempt: its outcome, its failure, or its answer's usage and cost."""
    answered: dict[str, Any] = {}
    if completion is not None:
        usage = completion.usage
        answered = {"http_status": 200, "request_id": completion.request_id, "usage": usage_json(usage)}
        answered.update({name: getattr(usage, name) for name in wire.USAGE_FIELDS})
        answered.update(_cost_fields(cost, price_version))
    elif failure is not None:
        answered = {"http_status": failure.http_status, "request_id": failure.request_id}
        possibly_billed = possibly_billed or failure.possibly_billed
    return Attempt(
        key=request.key,
        run_id=run_id,
        attempt=attempt,
        started_at=started,
        latency_ms=latency_ms,
        outcome=outcome,
        error_code=failure.error_code if failure else None,
        error_message=failure.error_message if failure else None,
        possibly_billed=int(possibly_billed),
        model=wire.model_of(request.body),
        worst_cost_pusd=worst_cost_pusd,
        mode=mode,
        **answered,
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.S)


def parse_json_answer(content: str | None) -> tuple[str | None, str | None]:
    """(the answer as canonical JSON, None) or (None, what is wrong). Code fences are allowed."""
    text = content or ""
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


@dataclass
class RunSummary:
    """What one run did. `exit_code` is one of errors.ExitCode."""

    run_id: int
    exit_code: int
    status: str  # finished | interrupted | aborted | unreachable | budget | outage | store_failed
    db_path: Path
    output_path: Path | None
    rows_total: int
    already_done: int
    skipped: int
    counts: RunCounts
    table: dict[str, int]  # rows by status in the output table (ok, failed, skipped, pending)
    simulated: bool
    elapsed_s: float
    message: str = ""
    job: str = ""
    mode: str = "online"  # online | batch | batch-chat (the two batch modes pay the batch price)

    def fields(self) -> dict[str, Any]:
        """The summary as structured log fields."""
        c = self.counts
        return {
            "job": self.job,
            "mode": self.mode,
            "status": self.status,
            "exit_code": self.exit_code,
            "sent": c.sent,
            "ok": c.ok,
            "failed": c.failed,
            "cost_usd": None if c.unpriced and not c.priced else round(c.cost_usd, 6),
            "unpriced_answers": c.unpriced,
        }

    def line(self) -> str:
        """One line for people: what happened, in counts, tokens, money and time."""
        c, batch = self.counts, self.mode != "online"
        notes = ", ".join(["simulated"] * self.simulated + [self.mode] * batch)
        return (
            f"{self.job}: {self.status}{f' ({notes})' if notes else ''}: sent {c.sent}, ok {c.ok}, "
            f"failed {c.failed}, already done {self.already_done}, skipped {self.skipped}; {c.input_tokens} input + "
            f"{c.output_tokens} output tokens ({c.cached_tokens} cached), {c.retries} retries, "
            f"cost {c.cost_text()}{' at the batch price' if batch else ''}, {self.elapsed_s:.1f}s"
        )
