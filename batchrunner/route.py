"""Where the online pool sends a run's requests, how long it waits, and at which prices.

Mode online (and the online part of mode auto) sends each request as rendered to the service's
base URL. Mode batch-chat sends the same requests through the same pool (pacing, budget,
retries, breaker, writer) to the Batch Chat API, which takes an ordinary chat/completions
body, queues the request and answers over the open connection within an hour, at the batch
price. A batch-chat run differs from an online one in four things, all decided here:

    where    `[batch] base_url`, else $DASHSCOPE_BATCH_CHAT_URL, else wire.BATCH_CHAT_BASE_URL;
             with --simulate, the simulator's OpenAI-compatible root
    what     each request as the chat/completions body `wire.chat_body` makes of it (never
             streamed, enable_thinking always set), under the key it has online: a row
             answered in one mode is never bought again in the other
    waiting  QUEUE_TIMEOUT_S for an answer, unless `[limits] timeout_s` is set above its
             default: an online timeout would give up on requests that are only queued
    price    the table's batch prices (`PriceTable.for_batch`), for costs and the budget
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import service, wire
from .batchmodels import check_batch_model
from .pricing import PriceTable
from .render import Request, canonical
from .spec import JobSpec, Limits
from .wire import Wire

BATCH_CHAT = "batch-chat"
BATCH_CHAT_URL_ENV = "DASHSCOPE_BATCH_CHAT_URL"
# The Batch Chat API answers within an hour (its own timeout, 3600 s by default): wait a
# minute longer, so that its verdict on a request arrives before ours.
QUEUE_TIMEOUT_S = 3660.0

Work = Callable[[Request], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """Where and how the online pool sends one run's requests. `mode` (online | batch-chat) is
    recorded on the run and on each of its results and attempts."""

    mode: str
    base_url: str
    timeout_s: float
    prices: PriceTable
    wire: Wire
    stream: bool

    def hint(self) -> str:
        """Where a batch-chat run's URL comes from, for a message about reaching it ("" online)."""
        if self.mode != BATCH_CHAT:
            return ""
        return f" (mode batch-chat sends to {self.base_url}: [batch] base_url, else ${BATCH_CHAT_URL_ENV})"

    def work(self, process: Work) -> Work:
        """`process` (one request's life), given each request as this route sends it."""
        if self.mode != BATCH_CHAT:
            return process

        async def as_chat(request: Request) -> None:
            await process(chat_request(request))

        return as_chat


def route_of(spec: JobSpec, svc: service.Service, prices: PriceTable, rendered: Wire) -> Route:
    """The route of a run of `spec` on `svc`; `rendered` is the wire its requests are built for."""
    if spec.api.mode != BATCH_CHAT:
        return Route("online", svc.base_url, spec.limits.timeout_s, prices, rendered, spec.parameters.stream)
    url = _compatible(svc.base_url) if svc.simulated else batch_chat_url(spec)
    return Route(BATCH_CHAT, url, read_timeout_s(spec.limits), prices.for_batch(), wire.OpenAIWire(), False)


def check_route(spec: JobSpec, prices: PriceTable, *, simulate: bool) -> list[str]:
    """What must hold before a batch-chat run sends anything: its model is served (else
    SpecError naming those that are) and its URL may carry the key (else SpecError). Returns
    warnings to log (a model the price table does not know; a region other than Beijing's)."""
    if spec.api.mode != BATCH_CHAT:
        return []
    warnings = [w for w in [check_batch_model(prices, spec.model.name, chat=True)] if w]
    if not simulate:
        service.check_base_url(batch_chat_url(spec), allow_insecure_http=spec.api.allow_insecure_http)
        if spec.api.region != "cn":
            warnings.append(
                f'the Batch Chat API is served in the Beijing region (region "cn"), but [api] region is '
                f'"{spec.api.region}": a key of that region may be refused there, and costs are worked out '
                "from its prices (at the batch discount)"
            )
    return warnings


def batch_chat_url(spec: JobSpec) -> str:
    """The Batch Chat API's root: [batch] base_url, else $DASHSCOPE_BATCH_CHAT_URL, else the default."""
    env = os.environ.get(BATCH_CHAT_URL_ENV, "").strip().rstrip("/")
    return spec.batch.base_url or env or wire.BATCH_CHAT_BASE_URL


def read_timeout_s(limits: Limits) -> float:
    """How long a batch-chat request waits for its answer: `[limits] timeout_s` when it is set
    above its default (a user's deliberate choice), else QUEUE_TIMEOUT_S."""
    default = Limits.model_fields["timeout_s"].default
    return limits.timeout_s if limits.timeout_s > default else QUEUE_TIMEOUT_S


def chat_request(request: Request) -> Request:
    """A request as the Batch Chat API takes it: the chat/completions body and path, the same key."""
    body = wire.chat_body(request.body)
    return dataclasses.replace(request, path=wire.OPENAI_CHAT_PATH, body=body, content=canonical(body))


def _compatible(base_url: str) -> str:
    """The OpenAI-compatible root of a (simulator's) base URL, native or already compatible."""
    return base_url if base_url.endswith(wire.COMPATIBLE_SUFFIX) else wire.compatible_root(base_url)
