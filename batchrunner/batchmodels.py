"""Which models the batch APIs serve, by the price table's `batch_api` / `batch_chat` flags.

A model the table marks as not served is an error before anything is uploaded or sent; a model
the table does not know at all gets a warning (the user may know better than the table).
"""

from __future__ import annotations

from .errors import SpecError
from .pricing import PriceTable
from .wire import batch as wb


def served(prices: PriceTable, *, chat: bool) -> list[str]:
    """The models the table marks as served by the Batch API (or, `chat`, the Batch Chat API)."""
    names = []
    for name in sorted(prices.models):
        flags = prices.batch_support(name)
        if flags is not None and flags[1 if chat else 0] and name != wb.TEST_MODEL:
            names.append(name)
    return names


def check_batch_model(prices: PriceTable, model: str, *, chat: bool) -> str | None:
    """SpecError when the table says the API does not serve `model`; a warning (text) when the
    table does not know it; None when it is served."""
    api = "Batch Chat API" if chat else "Batch API"
    flags = prices.batch_support(model)
    if flags is None:
        return (
            f"model {model!r} is unknown to the price table, which cannot say whether the {api} serves it; "
            "a refusal from the service will say so"
        )
    if not flags[1 if chat else 0]:
        msg = (
            f"[model] name: {model!r} is not served by the {api} (served: {', '.join(served(prices, chat=chat))}); "
            f'use one of those, or [api] mode = "online" (a [pricing.models] entry with '
            f"batch_{'chat' if chat else 'api'} = true overrides the table)"
        )
        raise SpecError(msg)
    return None
