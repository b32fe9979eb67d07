"""`estimate`: what the rest of a job will cost and how long it will take, sending nothing.

Input tokens are counted with the Qwen tokenizer that the `dashscope` package ships
(`tokens.count`, offline), over each request's chat template, when that package is installed;
otherwise with batchrunner's byte-based approximation (see `APPROXIMATION_NOTE`). Output
tokens are projected from `max_tokens` (the worst case), and, once rows have finished, from
their real average (the expected case).

Cache hits (the expected case; `cache_basis` says what was assumed):
    history       once answers are on record, their share of input tokens that hit the cache
                  (and was written to it), applied to every remaining request, priced as the
                  kind of cache most of those hits were
    shared prefix before that, with `[prompt] cache` set and a marked prefix of at least the
                  1,024 tokens the explicit cache needs: the first request writes it, every
                  later one hits it (assuming the cache stays warm: a request at least every
                  5 minutes)
    none          otherwise: the implicit cache is not guaranteed, so no hit is assumed
The worst case is what a budget reserves (`budget.Bounds`): the input bound, every allowed
output token, the highest price that can apply, no cache hit. The duration is the remaining
requests over the slowest of: the request pacing, the token pacing, and (once rows have
finished) concurrency divided by the observed latency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import prompts, tokens, wire
from .budget import Bounds, max_output_tokens
from .pricing import CURRENCY, PriceTable, price_warnings, pusd_to_usd
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
EXPLICIT_MIN_TOKENS = 1024  # the explicit cache's smallest prefix (reference, section D)


@dataclass
class Estimate:
    """The projection for the rest of a job."""

    job: str
    model: str
    requests_total: int
    requests_done: int
    requests_remaining: int
    input_tokens: int
    input_tokens_bound: int | None  # what a budget reserves (None: media without a known bound)
    tokenizer: str
    output_tokens_expected: int
    output_tokens_worst: int
    expected_output_basis: str
    cached_tokens_expected: int
    cache_basis: str
    cost_expected_usd: float | None
    cost_worst_usd: float | None
    price_version: str
    duration_s: float
    limited_by: str
    currency: str = CURRENCY
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CacheProjection:
    """The cache hits assumed per request: a share of its input (`hit`, from history, with the
    first request writing `rewrite` tokens), or a shared `prefix` written by the first request
    and hit by the rest."""

    basis: str
    explicit: bool = False
    hit: float = 0.0
    rewrite: int = 0
    prefix: int = 0

    def usage(self, input_tokens: int, output_tokens: int, *, first: bool) -> Usage:
        if self.prefix:
            part = min(self.prefix, input_tokens)
            cached, written = (0, part) if first else (part, 0)
        elif first and self.rewrite:
            cached, written = 0, min(self.rewrite, input_tokens)
        else:
            cached, written = int(input_tokens * self.hit), 0
        raw = {"prompt_tokens_details": {"cache_type": "ephemeral"}} if self.explicit else {}
        return Usage(input_tokens, output_tokens, cached_tokens=cached, cache_creation_input_tokens=written, raw=raw)


def _counter() -> tuple[Callable[[list[dict[str, Any]]], int], str]:
    """A function counting a request's input tokens, and its name."""
    if not tokens.available():
        return prompts.estimate_tokens, APPROXIMATION_NOTE

    def count(messages: list[dict[str, Any]]) -> int:
        return tokens.count(messages) or 0

    return count, tokens.TOKENIZER_NOTE


def projection(spec: JobSpec, store: Store | None, first: Request | None) -> CacheProjection:
    """What the estimate assumes of the cache (see the module docstring)."""
    history = store.cache_history() if store is not None else (0, 0, 0, 0, 0)
    inputs, explicit_hits, implicit_hits, written, writers = history
    if inputs or writers:
        explicit = explicit_hits + written > implicit_hits
        hit = (explicit_hits + implicit_hits) / inputs if inputs else 0.0
        rewrite = written // writers if writers else 0
        basis = (
            f"{hit:.0%} of input tokens hit the cache ({'explicit' if explicit else 'implicit'}) in the answers on "
            "record that wrote nothing to it; assumed for the rest"
        )
        if rewrite:
            basis += f", with the first request writing {rewrite} tokens again (the cache lives 5 minutes)"
        return CacheProjection(basis, explicit, hit, rewrite=rewrite)
    if spec.prompt.cache == "none" or first is None:
        return CacheProjection(
            "no cache hits assumed (the implicit cache is not guaranteed; once rows have finished, "
            "their hit rate is used)"
        )
    prefix = tokens.cached_prefix(wire.messages_of(first.body)) or 0
    if prefix < EXPLICIT_MIN_TOKENS:
        return CacheProjection(
            f"no cache hits assumed: the prefix marked for the explicit cache is about {prefix} tokens, "
            f"under the {EXPLICIT_MIN_TOKENS} it needs"
        )
    basis = (
        f"the {prefix}-token prefix marked for the explicit cache is written by the first request and hit by "
        "every later one (assumes the cache stays warm: a request at least every 5 minutes)"
    )
    return CacheProjection(basis, explicit=True, prefix=prefix)


def estimate(spec: JobSpec, prices: PriceTable) -> Estimate:
    source = Source(spec)
    source.check()
    store = Store(spec.db_path, readonly=True) if spec.db_path.is_file() else None
    count, tokenizer = _counter()
    p = spec.parameters
    thinking = bool(p.enable_thinking)
    max_out = max_output_tokens(p)
    bounds = Bounds(p, prices, priced=True)
    history = _history(store)
    expected_out = history["avg_output"] if history["ok"] else max_out
    basis = f"average of {history['ok']} finished rows" if history["ok"] else "max_tokens (no finished rows yet)"
    total = done = remaining = input_tokens = cached = 0
    bound: int | None = 0
    expected_pusd = 0
    worst_pusd: int | None = 0
    cache: CacheProjection | None = None
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
                if cache is None:
                    cache = projection(spec, store, item)
                n = count(wire.messages_of(item.body))
                usage = cache.usage(n, int(expected_out), first=remaining == 0)
                remaining += 1
                input_tokens += n
                cached += usage.cached_tokens
                worst = bounds.worst(item)
                bound = None if bound is None or worst.tokens is None else bound + worst.tokens - max_out
                if priced:
                    cost = prices.cost(spec.model.name, usage, thinking=thinking)
                    expected_pusd += cost.total_pusd if cost else 0
                    worst_pusd = None if worst_pusd is None or worst.cost_pusd is None else worst_pusd + worst.cost_pusd
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
        input_tokens_bound=bound,
        tokenizer=tokenizer,
        output_tokens_expected=int(expected_out * remaining),
        output_tokens_worst=max_out * remaining,
        expected_output_basis=basis,
        cached_tokens_expected=cached,
        cache_basis=(cache or projection(spec, None, None)).basis,
        cost_expected_usd=pusd_to_usd(expected_pusd) if priced else None,
        cost_worst_usd=pusd_to_usd(worst_pusd) if priced and worst_pusd is not None else None,
        price_version=prices.version,
        duration_s=duration,
        limited_by=limited_by,
        warnings=price_warnings(prices, spec.model.name),
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
    hours, rest = divmod(int(e.duration_s), 3600)
    bound = "no bound (a video or audio input)" if e.input_tokens_bound is None else str(e.input_tokens_bound)
    cost = "no price for this model (add it under [pricing.models] or --prices)"
    if e.cost_expected_usd is not None:
        worst = "none (a video or audio input has no bound)"
        if e.cost_worst_usd is not None:
            worst = f"{e.cost_worst_usd:.6f} {e.currency}"
        cost = (
            f"expected {e.cost_expected_usd:.6f} {e.currency}, worst case {worst} "
            f"(prices {e.price_version}; the worst case assumes no cache hit)"
        )
    lines = [
        f"job {e.job} ({e.model}): {e.requests_remaining} of {e.requests_total} requests to send "
        f"({e.requests_done} already done)",
        f"input tokens:   {e.input_tokens}  [{e.tokenizer}]; at most {bound} (what a budget reserves)",
        f"output tokens:  expected {e.output_tokens_expected} ({e.expected_output_basis}), "
        f"worst {e.output_tokens_worst}",
        f"cache:          {e.cached_tokens_expected} input tokens expected to hit: {e.cache_basis}",
        f"cost:           {cost}",
        f"duration:       about {hours}h{rest // 60:02d}m{rest % 60:02d}s, limited by {e.limited_by}",
        *(f"warning:        {w}" for w in e.warnings),
    ]
    return "\n".join(lines)
