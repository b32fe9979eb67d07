"""The price files as written: the shipped `prices.toml` and user overrides (a `--prices` file
or a job spec's `[pricing]`), validated into frozen models; `pricing` resolves them into prices.

Every problem is reported at once, each located by its key path, e.g.
`models."qwen-plus".tiers[0].input`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpecError

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
    max_input_tokens: Annotated[int, Field(gt=0)] | None = None
    implicit_cache_hit_ratio: Ratio | None = None
    explicit_cache_creation_ratio: Ratio | None = None
    explicit_cache_hit_ratio: Ratio | None = None
    source: str | None = None
    as_of: Annotated[str, Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")] | None = None
    notes: str | None = None
    batch_api: bool = False  # the Batch API (files + batches) serves this model
    batch_chat: bool = False  # the Batch Chat API (synchronous, Beijing) serves this model

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


def read_override(override: Mapping[str, Any] | Path) -> tuple[Any, str]:
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


def validate(schema: type[_M], raw: Any, label: str) -> _M:
    """`raw` as a `schema`, or SpecError listing every problem under `label` (the file)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        msg = f"{label}: {exc.error_count()} problem(s) in the price table:\n  {problems}"
        raise SpecError(msg) from None
