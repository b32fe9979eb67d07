"""The simulator itself: aiohttp handlers for the generation endpoints, plus counters.

Native endpoints: text and multimodal generation under /api/v1. OpenAI-compatible endpoint:
/compatible-mode/v1/chat/completions, translated to the native call it stands for (see
compat.py) and answered by the same path. The Batch API (files and batches under
/compatible-mode/v1) is routed by batchapi.py, its state in batches.py.
Per request, in this order: API key (401), body and
parameter validation (400/404/500), rate limits on admitted requests (429), scripted then
random faults, `latency_ms`, answer. Everything runs on the serving loop; `stats`,
`wait_for_requests` and `reset` may be called from other threads.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from batchrunner.wire import MULTIMODAL_PATH, SSE_HEADER, TEXT_PATH

from . import compat, reply, stream
from .answers import request_key
from .batchapi import BatchRoutes
from .batches import BatchStore
from .cache import PrefixCache
from .catalogue import SimError, error_for_code
from .config import DROP, MALFORMED, SLOW, Fault, SimulatorConfig
from .ledger import Ledger
from .limits import SlidingWindow
from .record import RequestRecord
from .site import serve_app
from .validate import Call, check_request, parse_body

API_PREFIX = "/api/v1"
CONTROL_PREFIX = "/_simulator"
MAX_BODY_BYTES = 64 * 1024 * 1024
_JSON = "application/json"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _body_key(body: dict[str, Any]) -> str:
    return request_key(body.get("model"), body.get("input"), body.get("parameters") or {})


class Simulator:
    """A deterministic DashScope stand-in driven by a `SimulatorConfig`; serve it with `serve`
    (inside a running loop), `serve_in_thread` or `run_simulator`."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._fault_table = self.config.random_faults()
        self._cond = threading.Condition()  # guards the rate windows against reset()
        self._cache = PrefixCache()
        self._ledger = Ledger(self.config.keep_log)
        self._rpm = SlidingWindow.per_minute(self.config.rpm) if self.config.rpm else None
        self._tpm = SlidingWindow(self.config.tpm / 60.0) if self.config.tpm else None
        self._need_key = self.config.keep_log or bool(self.config.faults)
        self.batches = BatchStore(self.config)
        self.reset()

    # ------------------------------------------------------------------ observation

    def reset(self) -> None:
        """Forget the log, counters, rate windows, cached prefixes and fault arrivals;
        re-seed the random faults. The config stays."""
        with self._cond:
            self._rng = random.Random(self.config.rng_seed)
            self._cache.clear()
            self._arrivals: dict[str, int] = {}
            for window in (self._rpm, self._tpm):
                if window is not None:
                    window.clear()
            self._ledger.clear()
        self.batches.reset()

    @property
    def log(self) -> list[RequestRecord]:
        """The request log itself (empty when `keep_log` is off); do not mutate it."""
        return self._ledger.log

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_status ("0" = dropped), throttled, faults_injected, plus
        answered (valid 200 answers) and the input/output tokens of those answers; and the
        Batch API's batches_created, lines_billed, batch_input_tokens, batch_output_tokens,
        batch_calls (requests by route: create, get, list, content, ...) and the faults it
        injected: creates_dropped, creates_throttled, gets_failed, downloads_failed."""
        return {**self._ledger.stats(), **self.batches.counters()}

    def wait_for_in_flight(self, n: int, timeout: float) -> bool:
        """Block until at least `n` requests are being served at once; False on timeout."""
        return self._ledger.wait_held(n, timeout)

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Block until at least `n` requests got a valid 200 answer; False on timeout."""
        return self._ledger.wait_for(n, timeout)

    # ------------------------------------------------------------------ serving

    def app(self) -> web.Application:
        """A new aiohttp application routed to this simulator (state is shared)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(API_PREFIX + TEXT_PATH, self._text)
        app.router.add_post(API_PREFIX + MULTIMODAL_PATH, self._multimodal)
        app.router.add_post(compat.COMPAT_PATH, self._compat)
        BatchRoutes(self.batches, self._authorize).add_to(app.router, compat.COMPAT_BASE)
        for prefix in (CONTROL_PREFIX, API_PREFIX + CONTROL_PREFIX):
            app.router.add_get(prefix + "/stats", self._stats_endpoint)
            app.router.add_get(prefix + "/log", self._log_endpoint)
            app.router.add_post(prefix + "/reset", self._reset_endpoint)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on the running loop; yields the base URL, e.g. http://127.0.0.1:5432/api/v1
        (the OpenAI-compatible base is the same host + /compatible-mode/v1)."""
        async with serve_app(self.app(), host, port, API_PREFIX) as base_url:
            yield base_url

    # ------------------------------------------------------------------ control endpoints

    async def _stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), headers={"x-request-id": str(uuid.uuid4())})

    async def _log_endpoint(self, request: web.Request) -> web.Response:
        records = [r.to_dict() for r in list(self._ledger.log)]
        return web.json_response(records, headers={"x-request-id": str(uuid.uuid4())})

    async def _reset_endpoint(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True}, headers={"x-request-id": str(uuid.uuid4())})

    # ------------------------------------------------------------------ generation

    async def _text(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, TEXT_PATH)

    async def _multimodal(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, MULTIMODAL_PATH)

    async def _compat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, None)

    def _authorize(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        valid = self.config.valid_keys
        if scheme.lower() != "bearer" or not (key in valid if valid is not None else key.startswith("sk-")):
            raise error_for_code("InvalidApiKey")

    def _admit(self, tokens: int) -> None:
        rpm, tpm = self._rpm, self._tpm
        if rpm is None and tpm is None:
            return
        with self._cond:  # reset() may clear the windows from another thread
            now = time.monotonic()
            if rpm is not None and not rpm.fits(now):
                raise error_for_code("Throttling.RateQuota")
            if tpm is not None and not tpm.fits(now, tokens):
                raise error_for_code("Throttling.AllocationQuota")
            if rpm is not None:
                rpm.add(now)
            if tpm is not None:
                tpm.add(now, tokens)

    def _pick_fault(self, call: Call, key: str) -> Fault | None:
        roll = self._rng.random() if self._fault_table else 1.0
        for rule in self.config.faults:
            if rule.match in call.prompt:
                arrival = self._arrivals.get(key, 0)
                self._arrivals[key] = arrival + 1
                fault = rule.fault_at(arrival)
                if fault is not None:
                    return fault
                break
        for edge, fault in self._fault_table:
            if roll < edge:
                return fault
        return None

    def _error(self, err: SimError, request_id: str, openai: bool) -> web.Response:
        headers = {"x-request-id": request_id}
        if err.status == 429 and self.config.retry_after_s is not None:
            headers["Retry-After"] = f"{self.config.retry_after_s:g}"
        if openai:
            payload = compat.error(err, request_id)
        else:
            payload = {"code": err.code, "message": err.message, "request_id": request_id}
        return web.Response(body=_dumps(payload), status=err.status, headers=headers, content_type=_JSON)

    async def _handle(self, request: web.Request, path: str | None) -> web.StreamResponse:
        """Serve one generation request; `path` None means the OpenAI-compatible endpoint."""
        self._ledger.enter()
        try:
            return await self._serve(request, path)
        finally:
            self._ledger.leave()

    async def _serve(self, request: web.Request, path: str | None) -> web.StreamResponse:
        arrived = time.time()
        request_id = str(uuid.uuid4())
        openai = path is None
        body: dict[str, Any] | None = None
        call: Call | None = None
        options: compat.Options | None = None
        key = ""
        try:
            self._authorize(request.headers.get("Authorization"))
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise error_for_code("BadRequest.TooLarge") from None
            body = parse_body(raw)
            if openai:
                body, path, sse, options = compat.to_native(body, int(arrived))
            else:
                sse = request.headers.get(SSE_HEADER, "").lower() == "enable"
            if self._need_key:
                key = _body_key(body)
            assert path is not None
            call = checked = check_request(path, body, sse, self.config.max_output_tokens)
            answer = reply.compose(checked)
            self._admit(answer.input_tokens + answer.output_tokens)
        except SimError as err:
            self._ledger.record(err.status, request_id, body, key, call, None, arrived)
            return self._error(err, request_id, openai)
        return await self._respond(request, checked, answer, body, key, request_id, arrived, options)

    async def _respond(
        self,
        request: web.Request,
        call: Call,
        answer: reply.Answer,
        body: dict[str, Any],
        key: str,
        request_id: str,
        arrived: float,
        options: compat.Options | None,
    ) -> web.StreamResponse:
        """Answer an admitted call, or inject the fault the config picks for it."""
        config = self.config
        fault = self._pick_fault(call, key)
        label = fault.label if fault is not None else None
        kind = fault.kind if fault is not None else None
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000.0)
        if fault is not None and fault.error is not None:
            self._ledger.record(fault.error.status, request_id, body, key, call, label, arrived)
            return self._error(fault.error, request_id, options is not None)
        if kind == DROP:
            if request.transport is not None:
                request.transport.close()
            self._ledger.record(0, request_id, body, key, call, label, arrived)
            return web.Response(status=200)
        if kind == SLOW:
            await asyncio.sleep(config.slow_s)
        details = self._cache.details(call.model, call.messages, answer.counts, answer.input_tokens)
        malformed = kind == MALFORMED
        response: web.StreamResponse
        if call.stream:
            if options is not None:
                chunks = compat.chunks(call, answer, details, request_id, options)
            else:
                chunks = stream.frames(call, answer, details, request_id)
            response = await stream.write(request, chunks, request_id, config, malformed)
        else:
            if options is not None:
                payload = _dumps(compat.body(call, answer, details, request_id, options))
            else:
                payload = _dumps(reply.body(call, answer, details, request_id))
            if malformed:
                payload = payload[: len(payload) // 2]
            response = web.Response(body=payload, headers={"x-request-id": request_id}, content_type=_JSON)
        self._ledger.record(200, request_id, body, key, call, label, arrived, answer if not malformed else None)
        return response
