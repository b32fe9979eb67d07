"""Which models the batch APIs serve, judged before anything is sent or uploaded.

The price table flags each model it knows with `batch_api` (the Batch API: files and batches)
and `batch_chat` (the synchronous Batch Chat API); a spec's `[pricing.models]` or a --prices
file may set them for models the table lacks. A model the table knows but does not flag is
refused (the service would answer every request with a 4xx). A model it does not know at all
only earns a warning: the service's lists change faster than the table, and the user may
know better.
"""

from __future__ import annotations

import functools

from .errors import SpecError
from .pricing import PriceTable


def check_batch_model(prices: PriceTable, model: str, *, chat: bool) -> str | None:
    """Whether the Batch Chat API (`chat`) or the Batch API serves `model`, by the table's flags.

    None when it does; a warning to log when the table does not know the model; SpecError
    naming the models it does serve when the table says it does not."""
    api, mode = ("Batch Chat API", "batch-chat") if chat else ("Batch API", "batch")
    support = prices.batch_support(model)
    flag = "batch_chat" if chat else "batch_api"
    if support is None:
        return (
            f"model {model!r} is not in the price table, so whether the {api} serves it is not known; "
            f"its requests are sent anyway (a [pricing.models] entry for it with {flag} = true says it is)"
        )
    if support[1 if chat else 0]:
        return None
    served = ", ".join(served_models(prices, chat=chat)) or "none known"
    msg = (
        f'[model] name: the {api} ([api] mode = "{mode}") does not serve {model!r}, by the price table; '
        f"it serves {served}. Pick one of those or another [api] mode (if the service serves it now, give "
        f"it a [pricing.models] entry with {flag} = true)"
    )
    raise SpecError(msg)


def served_models(prices: PriceTable, *, chat: bool) -> list[str]:
    """The models (by their own names, not aliases) the table flags as served by the Batch
    Chat API (`chat`) or the Batch API, sorted."""
    names = set(prices.models) | set(_shipped().models)
    flagged = ((name, prices.batch_support(name)) for name in names)
    return sorted(name for name, support in flagged if support is not None and support[1 if chat else 0])


@functools.cache
def _shipped() -> PriceTable:
    """The shipped table as region intl has it: the names of every model it flags (the flags
    hold in every region, while a region-cn table lists only the models priced by overrides)."""
    return PriceTable.load()
