"""What ingesting a batch result line records: the row's `Result` and the line's `Attempt`,
with mode "batch" and the cost at the batch price (records.py builds the online ones)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import wire
from .pricing import PriceTable
from .records import Attempt, Failure, Result, _answer_fields, _cost_fields, dumps
from .store import now
from .store.batches import Line
from .wire import Usage
from .wire import batch as wb

MODE = "batch"


@dataclass(frozen=True)
class Origin:
    """What every record of one ingested line shares: its line, model, job, run and timing."""

    line: Line
    model: str
    parameters: dict[str, Any]
    run_id: int
    job: str
    started: str
    latency_ms: int

    def result(self, status: str, **fields: Any) -> Result:
        line = self.line
        params = self.parameters if line.seed is None else {**self.parameters, "seed": line.seed}
        return Result(
            key=line.key,
            row_id=line.row_id,
            row_index=line.row_index,
            status=status,
            retryable=0,
            attempts=line.attempt,
            possibly_billed_attempts=0,
            latency_ms=self.latency_ms,
            started_at=self.started,
            finished_at=now(),
            model=self.model,
            endpoint=wb.BATCH_ENDPOINT,
            parameters=dumps(params),
            run_id=self.run_id,
            sample=line.sample,
            seed=line.seed,
            job=self.job,
            mode=MODE,
            **fields,
        )

    def attempt(self, outcome: str, **fields: Any) -> Attempt:
        return Attempt(
            key=self.line.key,
            run_id=self.run_id,
            attempt=self.line.attempt,
            started_at=self.started,
            latency_ms=self.latency_ms,
            outcome=outcome,
            model=self.model,
            mode=MODE,
            **fields,
        )

    def costs(self, usage: Usage, prices: PriceTable, *, thinking: bool = False) -> dict[str, Any]:
        """What `usage` cost at `prices` (the batch table), as cost columns."""
        cost = prices.cost(self.model, usage, thinking=thinking)
        return _cost_fields(cost, prices.version if cost is not None else None)


def _usage_fields(usage: Usage) -> dict[str, Any]:
    return {"usage": dumps(usage.raw), **{name: getattr(usage, name) for name in wire.USAGE_FIELDS}}


def answered(origin: Origin, answer: wb.LineResult, prices: PriceTable) -> tuple[Result, Attempt]:
    """An answered line (200): the row is ok, its cost is at `prices` (the batch table)."""
    completion = answer.completion
    assert completion is not None
    usage = completion.usage
    costs = origin.costs(usage, prices, thinking=usage.reasoning_tokens > 0)
    result = origin.result("ok", **costs, **_answer_fields(completion, None))
    attempt = origin.attempt("ok", http_status=200, request_id=completion.request_id, **_usage_fields(usage), **costs)
    return result, attempt


def unanswered(
    origin: Origin,
    failure: Failure,
    *,
    outcome: str,
    final: bool,
    usage: Usage | None = None,
    prices: PriceTable | None = None,
) -> tuple[Result | None, Attempt]:
    """A line with no usable answer: its attempt and, when `final`, the row's failed result
    (`outcome` "failed": a 4xx the request earned, or a 200 whose body could not be read;
    "gave_up": no verdict after the last batch attempt allowed). Only a line with `usage` (a
    200 that could not be read) was billed: its attempt carries that usage and its cost."""
    billed = {}
    if usage is not None and prices is not None:
        billed = {**_usage_fields(usage), **origin.costs(usage, prices)}
    error = {
        "http_status": failure.http_status,
        "error_code": failure.error_code,
        "error_message": failure.error_message,
        "request_id": failure.request_id,
    }
    attempt = origin.attempt(outcome, **error, **billed)
    return (origin.result("failed", **error) if final else None), attempt
