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
output token, the highest price that can apply, no cache hit.

Online and in batch: the same tokens are also priced at the batch APIs' price (`for_batch`:
`[meta] batch_discount` of the real-time prices, no cache discount, so no cache hit is assumed
there; thinking off unless the job turns it on), beside what batch saves (negative when the
online cache hits beat the discount). The headline (`cost_expected_usd`, `cost_worst_usd`) is
the figure of `[api] mode`: online for online, batch for batch, auto and batch-chat. The batch
figure is the Batch API's (the Batch Chat API's in mode batch-chat); for a model the price
table's flags say that API does not serve, `batch_note` says so instead.

The duration is the remaining requests over the slowest of: the request pacing, the token
pacing, and (once rows have finished) concurrency divided by the observed latency. In modes
batch and auto it is `[batch] completion_window` instead: the Batch API promises no sooner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import prompts, tokens, wire
from .budget import Bounds, WorstCase, max_output_tokens
from .pricing import CURRENCY, PriceTable, price_warnings, pusd_to_usd
from .records import settled
from .render import Request
from .source import Source
from .spec import JobSpec
from .store import Store
from .wire import Usage
from .wire import batch as wb

APPROXIMATION_NOTE = (
    "approximate: UTF-8 bytes / 3 per text item plus 4 per message (overestimates; measured "
    "+40% on English and +66% on Chinese prompts against the Qwen tokenizer); install the "
    "`dashscope` package for exact counts"
)
EXPLICIT_MIN_TOKENS = 1024  # the explicit cache's smallest prefix (reference, section D)
WINDOWED = ("batch", "auto")  # the modes whose answers come back from the Batch API's files


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
    cost_expected_usd: float | None  # the headline's figures (online or batch, by the mode)
    cost_worst_usd: float | None
    price_version: str
    duration_s: float  # modes batch and auto: the completion window (an upper bound)
    limited_by: str
    mode: str  # [api] mode
    headline: str  # online | batch: which figures cost_expected_usd and cost_worst_usd are
    online_cost_usd: float | None
    online_cost_worst_usd: float | None
    batch_api: str  # the API the batch figures are for: "Batch API" or "Batch Chat API"
    batch_supported: bool | None  # by the price table's flags; None: it does not know the model
    batch_cost_usd: float | None  # None when unpriced, or not served by `batch_api`
    batch_cost_worst_usd: float | None
    batch_savings_usd: float | None  # online expected - batch expected
    batch_savings_pct: float | None  # of the online expected cost
    batch_note: str  # why there is no batch figure, or what to know about it ("" when nothing)
    batch_price_version: str
    completion_window: str | None  # modes batch and auto
    batch_deadline: str | None  # mode auto: when what the batches have not answered goes online
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


@dataclass
class _Money:
    """The expected and worst-case cost of the remaining requests, online and in batch (pico-USD;
    a worst case is None once a request has no bound)."""

    model: str
    prices: PriceTable
    batch_prices: PriceTable
    thinking: bool
    online: int = 0
    batch: int = 0
    online_worst: int | None = 0
    batch_worst: int | None = 0

    def add(self, usage: Usage, worst: WorstCase, max_out: int) -> None:
        online = self.prices.cost(self.model, usage, thinking=self.thinking)
        self.online += online.total_pusd if online else 0
        flat = Usage(usage.input_tokens, usage.output_tokens)  # the batch price has no cache discount
        batch = self.batch_prices.cost(self.model, flat, thinking=self.thinking)
        self.batch += batch.total_pusd if batch else 0
        if self.online_worst is not None:
            self.online_worst = None if worst.cost_pusd is None else self.online_worst + worst.cost_pusd
        if self.batch_worst is not None and worst.tokens is not None:  # thinking is off unless turned on
            args = (self.model, worst.tokens - max_out, max_out)
            bound = self.batch_prices.worst_case(*args, thinking=self.thinking, cache_writes=False)
            self.batch_worst = None if bound is None else self.batch_worst + bound
        elif worst.tokens is None:
            self.batch_worst = None


def batch_availability(spec: JobSpec, prices: PriceTable) -> tuple[str, bool | None, str]:
    """(the batch API the job's figure is for, whether the price table says it serves the model,
    the note to show beside the figure)."""
    chat = spec.api.mode == "batch-chat"
    api = "Batch Chat API" if chat else "Batch API"
    flags = prices.batch_support(spec.model.name)
    if flags is None:
        return api, None, "(unknown to the price table's batch list)"
    served = flags[1] if chat else flags[0]
    flag = "batch_chat" if chat else "batch_api"
    return api, served, "" if served else f"not served by the {api} (no {flag} = true in the price table)"


def estimate(spec: JobSpec, prices: PriceTable) -> Estimate:
    source = Source(spec)
    source.check()
    store = Store(spec.db_path, readonly=True) if spec.db_path.is_file() else None
    count, tokenizer = _counter()
    p = spec.parameters
    max_out = max_output_tokens(p)
    bounds = Bounds(p, prices, priced=True)
    history = _history(store)
    expected_out = history["avg_output"] if history["ok"] else max_out
    basis = f"average of {history['ok']} finished rows" if history["ok"] else "max_tokens (no finished rows yet)"
    total = done = remaining = input_tokens = cached = 0
    bound: int | None = 0
    batch_prices = prices.for_batch()
    money = _Money(spec.model.name, prices, batch_prices, thinking=bool(p.enable_thinking))
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
                    money.add(usage, worst, max_out)
    finally:
        if store is not None:
            store.close()
    duration, limited_by = _duration(spec, remaining, input_tokens, expected_out, history["avg_latency_s"])
    api, supported, note = batch_availability(spec, prices)

    def usd(pusd: int | None, *, batch: bool = False) -> float | None:
        if not priced or pusd is None or (batch and supported is False):
            return None
        return pusd_to_usd(pusd)

    online, batch_cost = usd(money.online), usd(money.batch, batch=True)
    online_worst, batch_worst = usd(money.online_worst), usd(money.batch_worst, batch=True)
    savings = None if batch_cost is None else money.online - money.batch
    headline = "online" if spec.api.mode == "online" else "batch"
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
        cost_expected_usd=online if headline == "online" else batch_cost,
        cost_worst_usd=online_worst if headline == "online" else batch_worst,
        price_version=prices.version,
        duration_s=duration,
        limited_by=limited_by,
        mode=spec.api.mode,
        headline=headline,
        online_cost_usd=online,
        online_cost_worst_usd=online_worst,
        batch_api=api,
        batch_supported=supported,
        batch_cost_usd=batch_cost,
        batch_cost_worst_usd=batch_worst,
        batch_savings_usd=None if savings is None else pusd_to_usd(savings),
        batch_savings_pct=round(100 * savings / money.online, 2) if savings is not None and money.online else None,
        batch_note=note,
        batch_price_version=batch_prices.version,
        completion_window=spec.batch.completion_window if spec.api.mode in WINDOWED else None,
        batch_deadline=spec.batch.deadline if spec.api.mode == "auto" else None,
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
    if spec.api.mode in WINDOWED:
        window = spec.batch.completion_window
        return wb.window_hours(window) * 3600.0, f"[batch] completion_window ({window})"
    limits = spec.limits
    rates = {"requests_per_minute": limits.requests_per_minute * 0.985 / 60}
    if limits.tokens_per_minute:
        per_request = input_tokens / remaining + out_per_request
        rates["tokens_per_minute"] = limits.tokens_per_minute * 0.935 / 60 / max(per_request, 1.0)
    if latency_s > 0:
        rates["concurrency / observed latency"] = limits.concurrency / latency_s
    limited_by = min(rates, key=lambda k: rates[k])
    return remaining / rates[limited_by], limited_by


def _figures(expected: float, worst: float | None, currency: str) -> str:
    shown = "none (a video or audio input has no bound)" if worst is None else f"{worst:.6f} {currency}"
    return f"expected {expected:.6f} {currency}, worst case {shown}"


def _saving(e: Estimate) -> str:
    """What batch saves against online, in words ("" without both figures)."""
    if e.batch_savings_usd is None:
        return ""
    if e.batch_savings_usd < 0:
        return f"{-e.batch_savings_usd:.6f} {e.currency} more than online with its cache hits"
    pct = "" if e.batch_savings_pct is None else f" ({e.batch_savings_pct:.1f}%)"
    return f"saves {e.batch_savings_usd:.6f} {e.currency}{pct} against online"


def cost_lines(e: Estimate) -> list[str]:
    """The cost lines of `render`: the headline figure first, the other beneath it to compare."""
    if e.online_cost_usd is None:
        return ["cost:           no price for this model (add it under [pricing.models] or --prices)"]
    online = f"{_figures(e.online_cost_usd, e.online_cost_worst_usd, e.currency)} (prices {e.price_version})"
    batch = e.batch_note
    if e.batch_cost_usd is not None:
        batch = _figures(e.batch_cost_usd, e.batch_cost_worst_usd, e.currency)
        batch += f" ({e.batch_api} prices {e.batch_price_version}, no cache discount) {e.batch_note}".rstrip()
        batch += f"; {_saving(e)}" if _saving(e) else ""
    if e.headline == "online":
        return [f"cost:           {online}; the worst case assumes no cache hit", f"in batch:       {batch}"]
    return [f"cost (batch):   {batch}", f"online:         {online}, to compare"]


def _duration_line(e: Estimate) -> str:
    if e.completion_window is None or not e.requests_remaining:
        hours, rest = divmod(int(e.duration_s), 3600)
        return f"duration:       about {hours}h{rest // 60:02d}m{rest % 60:02d}s, limited by {e.limited_by}"
    window = f"{e.completion_window} ([batch] completion_window; the Batch API promises no sooner)"
    line = f"duration:       results within {window}"
    if e.batch_deadline is not None:
        line += f"; what is unanswered {e.batch_deadline} after the first submission goes online ([batch] deadline)"
    return line


def render(e: Estimate) -> str:
    bound = "no bound (a video or audio input)" if e.input_tokens_bound is None else str(e.input_tokens_bound)
    lines = [
        f"job {e.job} ({e.model}): {e.requests_remaining} of {e.requests_total} requests to send "
        f"({e.requests_done} already done)",
        f"input tokens:   {e.input_tokens}  [{e.tokenizer}]; at most {bound} (what a budget reserves)",
        f"output tokens:  expected {e.output_tokens_expected} ({e.expected_output_basis}), "
        f"worst {e.output_tokens_worst}",
        f"cache:          {e.cached_tokens_expected} input tokens expected to hit: {e.cache_basis}",
        *cost_lines(e),
        _duration_line(e),
        *(f"warning:        {w}" for w in e.warnings),
    ]
    return "\n".join(lines)
