"""Prices and costs: the shipped price table (`prices.toml`), user overrides, and exact money.

Money is counted in whole pico-USD (1e-12 USD): p USD per million tokens is p * 10**6 per
token. Each part of a cost is worked out exactly (`Fraction`) and rounded once to the nearest
pico-USD (ties to even); the total is the sum of the parts, so sums of costs reconcile exactly.

Billing rules (section F and D of the DashScope reference):

    tier          the first tier whose up_to >= input_tokens (else the last tier)
    input         (input_tokens - cached_tokens - cache_creation_input_tokens) at `input`
    cache hits    cached_tokens at the implicit-hit price (20% of input), or at the
                  explicit-hit price (10%) when the request used the explicit cache
    cache writes  cache_creation_input_tokens at the creation price (125% of input)
    output        output_tokens (reasoning included) at `output`, or at `thinking_output`
                  when thinking was on and the tier has such a price

A model's own cache prices win over the ratios. A request used the explicit cache when the
caller says so or its usage reports cache writes or cache_type "ephemeral".
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpecError
from .wire import Usage

PUSD_PER_USD = 10**12
SHIPPED = "prices.toml"

# --------------------------------------------------------------------------- file schema

Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[Decimal, Field(ge=0, le=10, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierEntry(_Strict):
    """One tier as written in a price file: prices in USD per million tokens."""

    up_to: Annotated[int, Field(gt=0)] | None = None
    input: Price
    output: Price
    thinking_output: Price | None = None
    cache_read: Price | None = None
    implicit_cache_read: Price | None = None
    explicit_cache_read: Price | None = None
    cache_creation: Price | None = None


class ModelEntry(_Strict):
    """One model as written in a price file (`[models."name"]`)."""

    aliases: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    tiers: Annotated[list[TierEntry], Field(min_length=1)]
    implicit_cache_hit_ratio: Ratio | None = None
    explicit_cache_creation_ratio: Ratio | None = None
    explicit_cache_hit_ratio: Ratio | None = None
    source: str | None = None
    as_of: Annotated[str, Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")] | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _ordered_tiers(self) -> ModelEntry:
        bounds = [math.inf if t.up_to is None else t.up_to for t in self.tiers]
        if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            got = [t.up_to for t in self.tiers]
            msg = f"tiers must go up by `up_to` and only the last may leave it out (got {got})"
            raise ValueError(msg)
        return self


class MetaEntry(_Strict):
    """The shipped table's `[meta]`: its version, units and the general cache/batch ratios."""

    version: str
    currency: str
    unit: str
    region: str
    implicit_cache_hit_ratio: Ratio
    explicit_cache_creation_ratio: Ratio
    explicit_cache_hit_ratio: Ratio
    batch_discount: Ratio


_M = TypeVar("_M", bound=BaseModel)
ModelName = Annotated[str, Field(min_length=1)]


class OverrideFile(_Strict):
    """An override: a `--prices` file or a job spec's `[pricing]`, i.e. `{"models": {...}}`."""

    models: dict[ModelName, ModelEntry] = Field(default_factory=dict)


class ShippedFile(OverrideFile):
    meta: MetaEntry


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
    """A priced model: its name, other names, tiers in order, and where the figures come from."""

    name: str
    aliases: tuple[str, ...]
    tiers: tuple[Tier, ...]
    source: str | None = None
    as_of: str | None = None
    notes: str | None = None

    def tier_for(self, input_tokens: int) -> Tier:
        """The tier that prices a request with this many input tokens."""
        for tier in self.tiers:
            if tier.up_to is None or input_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]


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
def _per_token(price: Decimal) -> Fraction:
    return Fraction(price) * 10**6  # USD per million tokens -> pico-USD per token


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class PriceTable:
    """The price table in force: shipped figures with any overrides applied.

    `version` is the shipped table's version, with "+overrides" when an override changed it;
    `meta` the shipped `[meta]` (units, region, ratios); `models` each model's prices by name.
    """

    version: str
    meta: MetaEntry
    models: Mapping[str, ModelPrice]
    _index: Mapping[str, ModelPrice] = field(repr=False, compare=False)

    @classmethod
    def load(cls, overrides: Sequence[Mapping[str, Any] | Path] = ()) -> PriceTable:
        """The shipped table, then each override in order (a TOML file or a `[pricing]` dict).

        A model named in an override replaces the shipped entry of that name whole (names are
        matched ignoring case). Raises SpecError naming the file and key of bad data.
        """
        text = resources.files("batchrunner").joinpath(SHIPPED).read_text(encoding="utf-8")
        shipped = _validate(ShippedFile, tomllib.loads(text, parse_float=Decimal), f"batchrunner/{SHIPPED}")
        entries: dict[str, tuple[str, ModelEntry]] = {k.lower(): (k, v) for k, v in shipped.models.items()}
        changed = False
        for override in overrides:
            raw, label = _read_override(override)
            parsed = _validate(OverrideFile, raw, label)
            for name, entry in parsed.models.items():
                entries[name.lower()] = (name, entry)
                changed = True
        meta = shipped.meta
        models = {name: _resolve(name, entry, meta) for name, entry in entries.values()}
        index: dict[str, ModelPrice] = {}
        for price in models.values():
            index.update({alias.lower(): price for alias in price.aliases})
        index.update({name.lower(): price for name, price in models.items()})
        return cls(meta.version + ("+overrides" if changed else ""), meta, models, index)

    def lookup(self, model: str) -> ModelPrice | None:
        """The prices of a model by name or alias, ignoring case; None when it has none."""
        return self._index.get(model.strip().lower())

    def cost(self, model: str, usage: Usage, *, thinking: bool, explicit_cache: bool) -> Cost | None:
        """What a request with this usage cost (rules in the module docstring); None if unpriced."""
        price = self.lookup(model)
        if price is None:
            return None
        tier = price.tier_for(usage.input_tokens)
        explicit = explicit_cache or _used_explicit_cache(usage)
        cached = usage.cached_tokens
        created = usage.cache_creation_input_tokens
        uncached = max(0, usage.input_tokens - cached - created)
        hit = tier.explicit_cache_read if explicit else tier.implicit_cache_read
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
        """The largest input a request to `model` can have, where the price tiers bound it."""
        price = self.lookup(model)
        return price.tiers[-1].up_to if price is not None and price.tiers else None

    def worst_case(self, model: str, input_tokens: int, max_output_tokens: int, *, thinking: bool) -> int | None:
        """The most a request can cost in pico-USD: no cache hit, every allowed output token."""
        price = self.lookup(model)
        if price is None:
            return None
        tier = price.tier_for(input_tokens)
        out = _output_price(tier, thinking)
        return round(input_tokens * _per_token(tier.input)) + round(max_output_tokens * _per_token(out))


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
    return ModelPrice(name, tuple(entry.aliases), tiers, entry.source, entry.as_of, entry.notes)


# --------------------------------------------------------------------------- reading overrides


def _read_override(override: Mapping[str, Any] | Path) -> tuple[Any, str]:
    """The raw data of an override and the label its errors carry."""
    if not isinstance(override, Path):
        return dict(override), "[pricing]"
    try:
        return tomllib.loads(override.read_text(encoding="utf-8"), parse_float=Decimal), str(override)
    except FileNotFoundError:
        msg = f"{override}: price file not found"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{override}: cannot read the price file as UTF-8 TOML: {exc}"
    raise SpecError(msg)


_KEYS = {kind: list(schema.model_fields) for kind, schema in (("top", OverrideFile), ("model", ModelEntry))}
_KEYS["tier"] = list(TierEntry.model_fields)


def _describe(err: Any) -> str:
    """One validation problem, located by key path, e.g. models."qwen-plus".tiers[0].input."""
    loc = tuple(err["loc"])
    keys = (f"[{p}]" if isinstance(p, int) else f'."{p}"' if i == 1 else f".{p}" for i, p in enumerate(loc))
    where = "".join(keys).removeprefix(".") or "(top level)"
    if err["type"] == "extra_forbidden":
        kind = "tier" if len(loc) > 1 and isinstance(loc[-2], int) else "model" if len(loc) == 3 else "top"
        return f"{where}: unknown key (known keys: {', '.join(_KEYS[kind])})"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {str(err['msg']).removeprefix('Value error, ')}{shown}"


def _validate(schema: type[_M], raw: Any, label: str) -> _M:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        msg = f"{label}: {exc.error_count()} problem(s) in the price table:\n  {problems}"
        raise SpecError(msg) from None


def load_prices(
    model: str,
    *,
    spec_models: Mapping[str, Mapping[str, Any]] | None = None,
    prices_file: Path | None = None,
    budget_usd: float | None = None,
) -> PriceTable:
    """The shipped price table with a spec's `[pricing.models]` and a --prices file applied.

    A budget needs a price: with `budget_usd` set and no price for `model`, SpecError.
    """
    overrides: list[Mapping[str, Any] | Path] = []
    if spec_models:
        overrides.append({"models": dict(spec_models)})
    if prices_file is not None:
        overrides.append(prices_file)
    table = PriceTable.load(overrides)
    if budget_usd is not None and table.lookup(model) is None:
        msg = (
            f"[limits] max_cost_usd: model {model!r} has no price in the price table; "
            f"add it under [pricing.models] or pass --prices FILE"
        )
        raise SpecError(msg)
    return table
