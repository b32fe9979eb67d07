"""Prices and costs: the shipped price table (`prices.toml`), user overrides, and exact money.

Money is counted in whole pico-USD (1e-12 USD): p USD per million tokens is p * 10**6 per
token. Each part of a cost is worked out exactly (`Fraction`) and rounded once to the nearest
pico-USD (ties to even); the total is the sum of the parts, so sums of costs reconcile exactly.

Billing rules (sections F and D of the DashScope reference), read from the answer's usage alone:

    tier          the first tier whose up_to >= input_tokens (else the last tier)
    input         (input_tokens - cached_tokens - cache_creation_input_tokens) at `input`
    cache hits    cached_tokens at the explicit-hit price (10% of input) when the usage shows the
                  explicit cache (cache_type "ephemeral", or cache writes), else at the
                  implicit-hit price (20%): a request that marks a prefix for the explicit cache
                  may still be answered from the implicit one, and its usage says which
    cache writes  cache_creation_input_tokens at the creation price (125% of input)
    output        output_tokens (reasoning included) at `thinking_output` when thinking was on
                  (or the usage reports reasoning tokens) and the tier has such a price, else `output`

A model's own cache prices win over the ratios. The shipped figures are Singapore (intl) list
prices in USD; for `region = "cn"` they are not used (batchrunner ships no Beijing prices), so
only models priced by an override are costed there, and every other request is unpriced.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SpecError
from .frozen import fast_init
from .pricefile import MetaEntry, ModelEntry, OverrideFile, ShippedFile, read_override, validate
from .wire import Usage

PUSD_PER_USD = 10**12
SHIPPED = "prices.toml"
CURRENCY = "USD"  # the only currency batchrunner counts money in
ROUNDING_SLACK = 4  # pico-USD: each of a cost's four parts is rounded once, by at most half a unit

# --------------------------------------------------------------------------- resolved values


@dataclass(frozen=True, slots=True)
class Tier:
    """One input-size band of a model, USD per million tokens, cache prices already resolved.

    `up_to` is the largest input_tokens of a request in this band (None: no bound).
    `thinking_output` is None when thinking output bills at `output`.
    """

    up_to: int | None
    input: Decimal
    output: Decimal
    thinking_output: Decimal | None
    implicit_cache_read: Decimal
    explicit_cache_read: Decimal
    cache_creation: Decimal


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A priced model: its name, other names, tiers in order, the largest input the service
    takes (None: not known), and where the figures come from."""

    name: str
    aliases: tuple[str, ...]
    tiers: tuple[Tier, ...]
    max_input_tokens: int | None = None
    source: str | None = None
    as_of: str | None = None
    notes: str | None = None
    batch_api: bool = False
    batch_chat: bool = False

    def tier_for(self, input_tokens: int) -> Tier:
        """The tier that prices a request with this many input tokens."""
        for tier in self.tiers:
            if tier.up_to is None or input_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]

    def tiers_up_to(self, input_tokens: int) -> tuple[Tier, ...]:
        """Every tier a request with at most this many input tokens can fall in."""
        return self.tiers[: self.tiers.index(self.tier_for(input_tokens)) + 1]


@fast_init
@dataclass(frozen=True, slots=True)
class Cost:
    """What one request cost, in pico-USD, split by what was billed.

    `saved_pusd` is what the cache saved against paying the input price for every cached
    token, less the premium paid for cache writes (so it can be negative).
    `total_pusd` = input + cached + cache_creation + output, exactly.
    `priced` is False only for `Cost.unpriced` placeholders (all amounts zero).
    """

    model: str
    tier_up_to: int | None
    input_pusd: int
    cached_pusd: int
    cache_creation_pusd: int
    output_pusd: int
    total_pusd: int
    saved_pusd: int
    priced: bool = True

    @classmethod
    def unpriced(cls, model: str) -> Cost:
        """A placeholder for a model without a price; its zeros mean "unknown", not "free"."""
        return cls(model, None, 0, 0, 0, 0, 0, 0, priced=False)


def pusd_to_usd(pusd: int) -> float:
    """Pico-USD as a float amount of USD, for people and float columns (sums stay in pico-USD)."""
    return pusd / PUSD_PER_USD


def usd_to_pusd(amount: float | str | Decimal) -> int:
    """A USD amount (as a user wrote it) in whole pico-USD, exactly: 0.1 is 10**11."""
    return int(Fraction(str(amount)) * PUSD_PER_USD)


def usd(pusd: int) -> Decimal:
    """Pico-USD as an exact Decimal amount of USD (twelve decimal places)."""
    return Decimal(pusd).scaleb(-12)


def format_usd(pusd: int, places: int = 6) -> str:
    """Pico-USD as a plain USD string with `places` decimals (ties to even); 12 is exact."""
    return f"{usd(pusd).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):f}"


@functools.lru_cache(maxsize=256)
def _per_token(price: Decimal) -> Fraction | int:
    """USD per million tokens -> pico-USD per token: a plain int when it is whole (list prices
    are), which keeps the per-answer arithmetic in fast integers; exact either way."""
    value = Fraction(price) * 10**6
    return value.numerator if value.denominator == 1 else value


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class PriceTable:
    """The price table in force: shipped figures with any overrides applied.

    `version` is the shipped table's version, with "+overrides" when an override changed it
    (for region cn, where the shipped figures do not apply, "overrides (region cn)");
    `meta` the shipped `[meta]` (units, ratios); `region` the API region the table prices;
    `models` each model's prices by name. Every amount is in `CURRENCY` (USD).
    """

    version: str
    meta: MetaEntry
    models: Mapping[str, ModelPrice]
    _index: Mapping[str, ModelPrice] = field(repr=False, compare=False)
    region: str = "intl"
    _limits: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    _batch: Mapping[str, tuple[bool, bool]] = field(default_factory=dict, repr=False, compare=False)
    batch: bool = False  # the Batch API's prices (see `for_batch`)

    @classmethod
    def load(cls, overrides: Sequence[Mapping[str, Any] | Path] = (), *, region: str = "intl") -> PriceTable:
        """The shipped table (not for region cn), then each override in order (a TOML file or a
        `[pricing]` dict).

        A model named in an override replaces the shipped entry of that name whole (names are
        matched ignoring case). Raises SpecError naming the file and key of bad data.
        """
        text = resources.files("batchrunner").joinpath(SHIPPED).read_text(encoding="utf-8")
        shipped = validate(ShippedFile, tomllib.loads(text, parse_float=Decimal), f"batchrunner/{SHIPPED}")
        everything = {k.lower(): (k, v) for k, v in shipped.models.items()}
        entries = dict(everything) if region == "intl" else {}
        changed = False
        for override in overrides:
            raw, label = read_override(override)
            parsed = validate(OverrideFile, raw, label)
            for name, entry in parsed.models.items():
                entries[name.lower()] = everything[name.lower()] = (name, entry)
                changed = True
        meta = shipped.meta
        models = {name: _resolve(name, entry, meta) for name, entry in entries.values()}
        # The input limits hold in every region, even where the shipped prices do not apply.
        limits = {n.lower(): e.max_input_tokens for name, e in everything.values() for n in (*e.aliases, name)}
        version = meta.version + ("+overrides" if changed else "")
        if region != "intl":
            version = f"overrides (region {region})"
        # So do the flags of what the batch APIs serve.
        batch = {n.lower(): (e.batch_api, e.batch_chat) for name, e in everything.values() for n in (*e.aliases, name)}
        return cls(version, meta, models, _index(models), region, {k: v for k, v in limits.items() if v}, batch)

    def batch_support(self, model: str) -> tuple[bool, bool] | None:
        """(the Batch API serves it, the Batch Chat API serves it) by the price table's flags;
        None when the table does not know the model at all."""
        return self._batch.get(model.strip().lower())

    def for_batch(self) -> PriceTable:
        """The same table at the batch APIs' prices: input and output at `[meta] batch_discount`
        of the real-time price, with no cache discount on top (a cache hit costs an input token)."""
        if self.batch:
            return self
        d = self.meta.batch_discount

        def cut(tier: Tier) -> Tier:
            inp = tier.input * d
            thinking = None if tier.thinking_output is None else tier.thinking_output * d
            return Tier(tier.up_to, inp, tier.output * d, thinking, inp, inp, inp)

        models = {
            name: dataclasses.replace(price, tiers=tuple(cut(t) for t in price.tiers))
            for name, price in self.models.items()
        }
        version = f"{self.version}+batch"
        return PriceTable(version, self.meta, models, _index(models), self.region, self._limits, self._batch, True)

    def lookup(self, model: str) -> ModelPrice | None:
        """The prices of a model by name or alias, ignoring case; None when it has none."""
        return self._index.get(model.strip().lower())

    def nearest(self, model: str, n: int = 3) -> list[str]:
        """The priced names (or aliases) closest to `model`, for a misspelled model name."""
        return difflib.get_close_matches(model.strip().lower(), list(self._index), n=n, cutoff=0.6)

    def cost(self, model: str, usage: Usage, *, thinking: bool = False) -> Cost | None:
        """What a request with this usage cost (rules in the module docstring); None if unpriced."""
        price = self.lookup(model)
        if price is None:
            return None
        tier = price.tier_for(usage.input_tokens)
        cached = usage.cached_tokens
        created = usage.cache_creation_input_tokens
        uncached = max(0, usage.input_tokens - cached - created)
        hit = tier.explicit_cache_read if _used_explicit_cache(usage) else tier.implicit_cache_read
        inp = _per_token(tier.input)
        parts = (
            round(uncached * inp),
            round(cached * _per_token(hit)),
            round(created * _per_token(tier.cache_creation)),
            round(usage.output_tokens * _per_token(_output_price(tier, thinking or usage.reasoning_tokens > 0))),
        )
        saved = cached * (inp - _per_token(hit)) - created * (_per_token(tier.cache_creation) - inp)
        return Cost(price.name, tier.up_to, *parts, total_pusd=sum(parts), saved_pusd=round(saved))

    def context_tokens(self, model: str) -> int | None:
        """The largest input the service takes for `model`, where the price table knows it
        (also for a region whose prices it does not hold)."""
        return self._limits.get(model.strip().lower())

    def worst_case(
        self, model: str, input_tokens: int, max_output_tokens: int, *, thinking: bool | None, cache_writes: bool
    ) -> int | None:
        """The most a request can cost in pico-USD, given at most `input_tokens` input (a bound)
        and `max_output_tokens` output: every input token at the highest input-side price of any
        tier it could fall in (the cache-creation price when it may write the explicit cache),
        every output token at the highest output price (thinking's unless `thinking` is False;
        None: the model may think by default). None when the model has no price."""
        price = self.lookup(model)
        if price is None:
            return None
        tiers = price.tiers_up_to(input_tokens)
        inp = max(max(t.input, t.implicit_cache_read, t.explicit_cache_read) for t in tiers)
        if cache_writes:
            inp = max(inp, *(t.cache_creation for t in tiers))
        out = max(max(t.output, _output_price(t, thinking is not False)) for t in tiers)
        return (
            math.ceil(input_tokens * _per_token(inp)) + math.ceil(max_output_tokens * _per_token(out)) + ROUNDING_SLACK
        )


def _index(models: Mapping[str, ModelPrice]) -> dict[str, ModelPrice]:
    """Each model by its name and its aliases, ignoring case (names win over aliases)."""
    index: dict[str, ModelPrice] = {}
    for price in models.values():
        index.update({alias.lower(): price for alias in price.aliases})
    index.update({name.lower(): price for name, price in models.items()})
    return index


def _output_price(tier: Tier, thinking: bool) -> Decimal:
    if thinking and tier.thinking_output is not None:
        return tier.thinking_output
    return tier.output


def _used_explicit_cache(usage: Usage) -> bool:
    if usage.cache_creation_input_tokens > 0:
        return True
    details = usage.raw.get("prompt_tokens_details")
    return isinstance(details, dict) and details.get("cache_type") == "ephemeral"


def _resolve(name: str, entry: ModelEntry, meta: MetaEntry) -> ModelPrice:
    """A validated entry with every cache price worked out from its own figures or the ratios."""

    def ratio(key: str) -> Decimal:
        own: Decimal | None = getattr(entry, key)
        return own if own is not None else getattr(meta, key)

    def first(*prices: Decimal | None) -> Decimal:
        return next(p for p in prices if p is not None)

    hit_i, hit_e = ratio("implicit_cache_hit_ratio"), ratio("explicit_cache_hit_ratio")
    write = ratio("explicit_cache_creation_ratio")
    tiers = tuple(
        Tier(
            up_to=t.up_to,
            input=t.input,
            output=t.output,
            thinking_output=t.thinking_output,
            implicit_cache_read=first(t.implicit_cache_read, t.cache_read, t.input * hit_i),
            explicit_cache_read=first(t.explicit_cache_read, t.cache_read, t.input * hit_e),
            cache_creation=first(t.cache_creation, t.input * write),
        )
        for t in entry.tiers
    )
    return ModelPrice(
        name,
        tuple(entry.aliases),
        tiers,
        entry.max_input_tokens,
        entry.source,
        entry.as_of,
        entry.notes,
        entry.batch_api,
        entry.batch_chat,
    )


def load_prices(
    model: str,
    *,
    spec_models: Mapping[str, Mapping[str, Any]] | None = None,
    prices_file: Path | None = None,
    budget_usd: float | None = None,
    region: str = "intl",
) -> PriceTable:
    """The price table of `region` with a spec's `[pricing.models]` and a --prices file applied.

    A budget needs a price: with `budget_usd` set and no price for `model`, SpecError.
    """
    overrides: list[Mapping[str, Any] | Path] = []
    if spec_models:
        overrides.append({"models": dict(spec_models)})
    if prices_file is not None:
        overrides.append(prices_file)
    table = PriceTable.load(overrides, region=region)
    if budget_usd is not None and table.lookup(model) is None:
        reason = unpriced_reason(table, model)
        msg = f"[limits] max_cost_usd: {reason}; add it under [pricing.models] or pass --prices FILE"
        raise SpecError(msg)
    return table


def unpriced_reason(table: PriceTable, model: str) -> str:
    """Why `model` has no price in `table`, naming the nearest priced names."""
    if table.region != "intl":
        return (
            f"model {model!r} has no price for region {table.region!r} (batchrunner ships Singapore list prices "
            f"in {CURRENCY} only, which do not apply there)"
        )
    near = table.nearest(model)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"model {model!r} has no price in the price table{hint}"


def price_warnings(table: PriceTable, model: str) -> list[str]:
    """What a user should know before sending to `model` with `table`: a region whose prices
    batchrunner does not ship, a model without a price (perhaps a misspelled name)."""
    warnings = []
    if table.region != "intl":
        warnings.append(
            f"region {table.region!r}: batchrunner ships no prices for it (its table holds Singapore list prices in "
            f"{CURRENCY}), so the shipped figures are not used: only models priced under [pricing.models] or in "
            f"--prices (figures in {CURRENCY} per million tokens) are costed, every other request is unpriced"
        )
    if table.lookup(model) is None:
        warnings.append(
            f"{unpriced_reason(table, model)}: its requests will show as unpriced (never as costing 0); "
            "price it under [pricing.models] or with --prices FILE"
        )
    return warnings
