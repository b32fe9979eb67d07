"""One finished request as a row of the store's `results` table (see store.py for the schema)."""

from __future__ import annotations

import json
import re
from typing import Any

from . import store, wire
from .pricing import Cost
from .render import Request


def result_row(
    request: Request,
    *,
    run_id: int,
    started: str,
    latency_ms: int,
    attempts: int,
    billed: int,
    completion: wire.Completion | None = None,
    failure: dict[str, Any] | None = None,
    retryable: bool = False,
    parsed: str | None = None,
    cost: Cost | None = None,
    price_version: str | None = None,
) -> dict[str, Any]:
    """The row for a request that ended: answered (ok, or failed when its answer was unusable:
    the answer and usage are kept, since they were paid for) or failed without an answer."""
    row: dict[str, Any] = {
        "key": request.key,
        "row_id": request.row_id,
        "row_index": request.row_index,
        "attempts": attempts,
        "possibly_billed_attempts": billed,
        "latency_ms": latency_ms,
        "started_at": started,
        "finished_at": store.now(),
        "model": request.body["model"],
        "endpoint": request.path,
        "parameters": store.dumps(wire.parameters_of(request.body)),
        "run_id": run_id,
        "sample": request.sample,
        "seed": request.seed,
        "status": "ok" if failure is None else "failed",
        "retryable": int(retryable),
        "error_code": (failure or {}).get("error_code"),
        "error_message": (failure or {}).get("error_message"),
        "http_status": (failure or {}).get("http_status"),
        "request_id": (failure or {}).get("request_id"),
    }
    if cost is not None:
        row.update(
            cost_pusd=cost.total_pusd,
            cost_usd=cost.total_pusd / 1e12,
            input_cost_pusd=cost.input_pusd,
            cached_cost_pusd=cost.cached_pusd,
            cache_creation_cost_pusd=cost.cache_creation_pusd,
            output_cost_pusd=cost.output_pusd,
            saved_pusd=cost.saved_pusd,
            price_version=price_version,
        )
    if completion is not None:
        usage = completion.usage
        choices = [c.to_json() for c in completion.choices] if len(completion.choices) > 1 else None
        row.update(
            content=completion.content,
            reasoning_content=completion.reasoning_content,
            finish_reason=completion.finish_reason,
            tool_calls=store.dumps(completion.tool_calls),
            logprobs=store.dumps(completion.first.logprobs),
            choices=store.dumps(choices),
            parsed=parsed,
            request_id=completion.request_id,
            http_status=200,
            usage=store.dumps(usage.raw),
            **{c: getattr(usage, c) for c in store.RESULT_USAGE_COLUMNS},
        )
    return row


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
