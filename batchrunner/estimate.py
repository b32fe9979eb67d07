"""`estimate`: what the rest of a job will cost and how long it will take, sending nothing.

Input tokens are counted with the Qwen tokenizer that the `dashscope` package ships
(`dashscope.tokenizers`, offline), over each request's chat template, when that package is
installed; otherwise with batchrunner's byte-based approximation (see `APPROXIMATION_NOTE`).
Output tokens are projected from `max_tokens` (the worst case), and, once rows have finished,
from their real average (the expected case). No cache hits are assumed. The duration is the
remaining requests over the slowest of: the request pacing, the token pacing, and (once
rows have finished) concurrency divided by the observed latency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import prompts, wire
from .budget import max_output_tokens
from .pricing import PriceTable, pusd_to_usd
from .records import settled
from .render import Request
from .source import Source
from .spec import JobSpec
from .store import Store
from .wire import Usage

APPROXIMATION_NOTE = (
    "approximate: UTF-8 bytes / 3 per text item plus 4 per message (overestimates; measured "
    "+40% on English and +66% on Chinese prompts against the Qwen tokenizer); install the "
    "`dashscope` package for exact counts"
)


@dataclass
class Estimate:
    """The projection for the rest of a job."""

    job: str
    model: str
    requests_total: int
    requests_done: int
    requests_remaining: int
    input_tokens: int
    tokenizer: str
    output_tokens_expected: int
    output_tokens_worst: int
    expected_output_basis: str
    cost_expected_usd: float | None
    cost_worst_usd: float | None
    price_version: str
    duration_s: float
    limited_by: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counter(model: str) -> tuple[Callable[[list[dict[str, Any]]], int], str]:
    """A function counting a request's input tokens, and its name."""
    try:
        from dashscope.tokenizers import get_tokenizer  # an optional, offline tokenizer

        tokenizer = get_tokenizer(model if model.lower().startswith("qwen") else "qwen-plus")
    except Exception:  # not installed, or no tokenizer for this model: approximate
        return prompts.estimate_tokens, APPROXIMATION_NOTE

    def count(messages: list[dict[str, Any]]) -> int:
        total = 3  # <|im_start|>assistant\n
        for message in messages:
            content = message.get("content")
            items = [{"text": content}] if isinstance(content, str) else content or []
            for item in items:
                if "image" in item:
                    total += prompts.MEDIA_ESTIMATE
                elif "video" in item:
                    total += 2 * prompts.MEDIA_ESTIMATE
                else:
                    total += len(tokenizer.encode(str(item.get("text", ""))))
            total += 5  # <|im_start|>role\n ... <|im_end|>\n
        return total

    return count, "exact: Qwen tokenizer from the dashscope package (chat template included; media approximated)"


def _messages(request: Request) -> list[dict[str, Any]]:
    return wire.messages_of(request.body)


def estimate(spec: JobSpec, prices: PriceTable) -> Estimate:
    source = Source(spec)
    source.check()
    store = Store(spec.db_path, readonly=True) if spec.db_path.is_file() else None
    count, tokenizer = _counter(spec.model.name)
    p = spec.parameters
    thinking = bool(p.enable_thinking)
    max_out = max_output_tokens(p)
    history = _history(store)
    expected_out = history["avg_output"] if history["ok"] else max_out
    basis = f"average of {history['ok']} finished rows" if history["ok"] else "max_tokens (no finished rows yet)"
    total = done = remaining = input_tokens = 0
    expected_pusd = worst_pusd = 0
    priced = prices.lookup(spec.model.name) is not None
    try:
        for batch in source.batches():
            items = [i for i in source.requests(batch) if isinstance(i, Request)]
            stored = store.lookup([i.key for i in items]) if store is not None else {}
            for item in items:
                total += 1
                if settled(*stored.get(item.key, ("", 0))):
                    done += 1
                    continue
                remaining += 1
                tokens = count(_messages(item))
                input_tokens += tokens
                if priced:
                    usage = Usage(input_tokens=tokens, output_tokens=int(expected_out))
                    cost = prices.cost(spec.model.name, usage, thinking=thinking, explicit_cache=False)
                    expected_pusd += cost.total_pusd if cost else 0
                    worst_pusd += prices.worst_case(spec.model.name, tokens, max_out, thinking=thinking) or 0
    finally:
        if store is not None:
            store.close()
    duration, limited_by = _duration(spec, remaining, input_tokens, expected_out, history["avg_latency_s"])
    return Estimate(
        job=spec.job.name,
        model=spec.model.name,
        requests_total=total,
        requests_done=done,
        requests_remaining=remaining,
        input_tokens=input_tokens,
        tokenizer=tokenizer,
        output_tokens_expected=int(expected_out * remaining),
        output_tokens_worst=max_out * remaining,
        expected_output_basis=basis,
        cost_expected_usd=pusd_to_usd(expected_pusd) if priced else None,
        cost_worst_usd=pusd_to_usd(worst_pusd) if priced else None,
        price_version=prices.version,
        duration_s=duration,
        limited_by=limited_by,
    )


def _history(store: Store | None) -> dict[str, float]:
    if store is None:
        return {"ok": 0, "avg_output": 0.0, "avg_latency_s": 0.0}
    n, avg_output, avg_latency_ms = store.answered_averages()
    return {"ok": n, "avg_output": avg_output or 0.0, "avg_latency_s": (avg_latency_ms or 0.0) / 1000}


def _duration(
    spec: JobSpec, remaining: int, input_tokens: int, out_per_request: float, latency_s: float
) -> tuple[float, str]:
    if remaining == 0:
        return 0.0, "nothing left"
    limits = spec.limits
    rates = {"requests_per_minute": limits.requests_per_minute * 0.985 / 60}
    if limits.tokens_per_minute:
        per_request = input_tokens / remaining + out_per_request
        rates["tokens_per_minute"] = limits.tokens_per_minute * 0.935 / 60 / max(per_request, 1.0)
    if latency_s > 0:
        rates["concurrency / observed latency"] = limits.concurrency / latency_s
    limited_by = min(rates, key=lambda k: rates[k])
    return remaining / rates[limited_by], limited_by


def render(e: Estimate) -> str:
    def money(v: float | None) -> str:
        return "no price for this model (add it under [pricing.models] or --prices)" if v is None else f"{v:.6f} USD"

    hours, rest = divmod(int(e.duration_s), 3600)
    lines = [
        f"job {e.job} ({e.model}): {e.requests_remaining} of {e.requests_total} requests to send "
        f"({e.requests_done} already done)",
        f"input tokens:   {e.input_tokens}  [{e.tokenizer}]",
        f"output tokens:  expected {e.output_tokens_expected} ({e.expected_output_basis}), "
        f"worst {e.output_tokens_worst}",
        f"cost:           expected {money(e.cost_expected_usd)}, worst case {money(e.cost_worst_usd)} "
        f"(prices {e.price_version}; no cache hits assumed)",
        f"duration:       about {hours}h{rest // 60:02d}m{rest % 60:02d}s, limited by {e.limited_by}",
    ]
    return "\n".join(lines)
