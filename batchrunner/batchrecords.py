"""What ingesting a batch result line records: the row's `Result` and the line's `Attempt`,
with mode "batch" and the cost at the batch price (records.py builds the online ones)."""

from __future__ import annotations

from typing import Any

from . import wire
from .pricing import PriceTable
from .records import Attempt, Failure, Result, _answer_fields, _cost_fields, dumps
from .store import now
from .store.batches import Line
from .wire import Usage
from .wire import batch as wb

MODE = "batch"


def _common(line: Line, model: str, parameters: dict[str, Any]) -> dict[str, Any]:
    params = parameters if line.seed is None else {**parameters, "seed": line.seed}
    return {"model": model, "endpoint": wb.BATCH_ENDPOINT, "parameters": dumps(params)}


def answered(
    line: Line,
    answer: wb.LineResult,
    *,
    model: str,
    parameters: dict[str, Any],
    run_id: int,
    job: str,
    started: str,
    latency_ms: int,
    prices: PriceTable,
) -> tuple[Result, Attempt]:
    """An answered line (200): the row is ok, its cost is at `prices` (the batch table)."""
    completion = answer.completion
    assert completion is not None
    cost = prices.cost(model, completion.usage, thinking=completion.usage.reasoning_tokens > 0)
    version = prices.version if cost is not None else None
    common = _common(line, model, parameters)
    result = Result(
        key=line.key,
        row_id=line.row_id,
        row_index=line.row_index,
        status="ok",
        retryable=0,
        attempts=line.attempt,
        possibly_billed_attempts=0,
        latency_ms=latency_ms,
        started_at=started,
        finished_at=now(),
        run_id=run_id,
        sample=line.sample,
        seed=line.seed,
        job=job,
        mode=MODE,
        **common,
        **_cost_fields(cost, version),
        **_answer_fields(completion, None),
    )
    usage = completion.usage
    attempt = Attempt(
        key=line.key,
        run_id=run_id,
        attempt=line.attempt,
        started_at=started,
        latency_ms=latency_ms,
        outcome="ok",
        http_status=200,
        request_id=completion.request_id,
        usage=dumps(usage.raw),
        model=model,
        mode=MODE,
        **{name: getattr(usage, name) for name in wire.USAGE_FIELDS},
        **_cost_fields(cost, version),
    )
    return result, attempt


def unanswered(
    line: Line,
    failure: Failure,
    *,
    outcome: str,
    final: bool,
    model: str,
    parameters: dict[str, Any],
    run_id: int,
    job: str,
    started: str,
    latency_ms: int,
    usage: Usage | None = None,
    prices: PriceTable | None = None,
) -> tuple[Result | None, Attempt]:
    """A line with no usable answer: its attempt and, when `final`, the row's failed result
    (`outcome` "failed": a 4xx the request earned, or a 200 whose body could not be read;
    "gave_up": no verdict after the last batch attempt allowed). Only a line with `usage` (a
    200 that could not be read) was billed: its attempt carries that usage and its cost."""
    billed: dict[str, Any] = {}
    if usage is not None and prices is not None:
        cost = prices.cost(model, usage)
        billed = {"usage": dumps(usage.raw), **{n: getattr(usage, n) for n in wire.USAGE_FIELDS}}
        billed.update(_cost_fields(cost, prices.version if cost is not None else None))
    attempt = Attempt(
        key=line.key,
        run_id=run_id,
        attempt=line.attempt,
        started_at=started,
        latency_ms=latency_ms,
        outcome=outcome,
        http_status=failure.http_status,
        error_code=failure.error_code,
        error_message=failure.error_message,
        request_id=failure.request_id,
        model=model,
        mode=MODE,
        **billed,
    )
    if not final:
        return None, attempt
    result = Result(
        key=line.key,
        row_id=line.row_id,
        row_index=line.row_index,
        status="failed",
        retryable=0,
        attempts=line.attempt,
        possibly_billed_attempts=0,
        latency_ms=latency_ms,
        started_at=started,
        finished_at=now(),
        run_id=run_id,
        sample=line.sample,
        seed=line.seed,
        job=job,
        mode=MODE,
        error_code=failure.error_code,
        error_message=failure.error_message,
        http_status=failure.http_status,
        request_id=failure.request_id,
        **_common(line, model, parameters),
    )
    return result, attempt
