"""The HTTP client: httpx.AsyncClient speaking DashScope, over a transport chosen by measurement.

`DashScopeClient.generate(request)` sends one call and returns a wire.Completion, or raises
one of two exceptions that carry everything the pool needs to decide what to do:

    CallFailed(error: wire.ServiceError)   the service answered with an error status
    TransportFailed(code, possibly_billed)     no usable answer: timeout, dropped connection,
                                               malformed body

The transport is chosen in `make_transport`, and only there. httpx's own connection pool
spends most of a core managing hundreds of in-flight requests; the httpx-aiohttp transport
keeps the httpx API and runs the same load at a fraction of the CPU (see the benchmark).
"""

from __future__ import annotations

import errno
from typing import Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from . import wire
from .records import Failure
from .render import Request
from .wire import NativeWire, SSEParser, StreamError, Wire


class CallFailed(Exception):
    """The service answered with a non-200 status."""

    def __init__(self, error: wire.ServiceError) -> None:
        super().__init__(f"HTTP {error.status} {error.code}: {error.message}")
        self.error = error


class TransportFailed(Exception):
    """No usable answer. `possibly_billed` is true when the request had been sent in full;
    `unreachable` when no connection was made at all (refused, unknown host, TLS failure, out
    of file descriptors): on a run's first requests, that is a configuration error."""

    def __init__(self, code: str, message: str, *, possibly_billed: bool, unreachable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.possibly_billed = possibly_billed
        self.unreachable = unreachable


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The one place that picks the HTTP transport (see the module docstring)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return AiohttpTransport(limits=limits)


NOT_SENT: dict[str, bool] = {"possibly_billed": False, "unreachable": True}


def _transport_failure(exc: Exception) -> TransportFailed:
    """Classify a transport exception. The only place that inspects them.

    httpx-aiohttp maps every aiohttp connection error to httpx.ConnectTimeout, so the aiohttp
    exception it chains is what tells a refused connection (nothing sent) from one dropped
    or reset after the request went out (possibly billed).
    """
    cause = exc.__cause__
    name = type(exc).__name__
    if isinstance(exc, httpx.ReadTimeout) or isinstance(cause, aiohttp.SocketTimeoutError):
        return TransportFailed("ReadTimeout", "no answer within timeout_s", possibly_billed=True)
    if isinstance(cause, aiohttp.ClientSSLError):
        return TransportFailed(
            "TLSError", f"TLS handshake failed ({cause}): is the base URL's scheme right?", **NOT_SENT
        )
    if isinstance(cause, aiohttp.ClientConnectorError) and cause.os_error.errno in (errno.EMFILE, errno.ENFILE):
        msg = "too many open files: lower [limits] concurrency or raise the limit (ulimit -n)"
        return TransportFailed("TooManyOpenFiles", msg, **NOT_SENT)
    if isinstance(cause, aiohttp.ClientConnectorError) or (cause is None and isinstance(exc, httpx.ConnectError)):
        return TransportFailed("ConnectError", str(cause or exc) or name, **NOT_SENT)
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return TransportFailed("ConnectionDropped", str(cause) or type(cause).__name__, possibly_billed=True)
    if isinstance(exc, httpx.TimeoutException) and cause is None:
        return TransportFailed("Timeout", str(exc) or name, possibly_billed=False)
    return TransportFailed("TransportError", f"{name}: {exc}", possibly_billed=True)


class Sender(Protocol):
    """What sends one request: `DashScopeClient`, or `workers.WorkerPool` (several processes)."""

    async def generate(self, request: Request) -> wire.Completion: ...


class DashScopeClient:
    """One keep-alive HTTP client for a whole run. Use `async with`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        wire: Wire | None = None,
        stream: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.wire = wire or NativeWire()
        self.stream = stream
        self._stream_headers = self.wire.headers(True)
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": "batchrunner",
        }
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0), pool=None)
        self._transport = transport or make_transport(max_connections)
        self._http = httpx.AsyncClient(transport=self._transport, headers=headers, timeout=timeout)
        # The plain path sends prebuilt requests straight to the transport: the client's
        # per-request URL merging, cookie handling and redirect logic cost more CPU than the
        # transport itself at thousands of requests per second, and none of it applies here.
        self._headers = httpx.Headers(headers)
        self._extensions = {"timeout": timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}

    async def __aenter__(self) -> DashScopeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    async def generate(self, request: Request) -> wire.Completion:
        content = request.payload
        if self.stream:
            return await self._generate_streamed(request, content)
        outgoing = httpx.Request(
            "POST", self._url(request.path), headers=self._headers, content=content, extensions=self._extensions
        )
        try:
            response = await self._transport.handle_async_request(outgoing)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise _transport_failure(exc) from None
        if response.status_code != 200:
            raise CallFailed(wire.parse_error(response.status_code, body, dict(response.headers)))
        try:
            return self.wire.parse(body)
        except wire.MalformedResponse as exc:
            raise TransportFailed("MalformedResponse", str(exc), possibly_billed=True) from None

    async def _generate_streamed(self, request: Request, content: bytes) -> wire.Completion:
        """Read an SSE answer to its end; an error event or a cut stream raises like any failure."""
        assembler = self.wire.assembler(request.body)
        parser = SSEParser()
        url = self.base_url + request.path
        opened = False
        try:
            async with self._http.stream("POST", url, content=content, headers=self._stream_headers) as response:
                opened = True
                if response.status_code != 200:
                    body = await response.aread()
                    raise CallFailed(wire.parse_error(response.status_code, body, dict(response.headers)))
                async for chunk in response.aiter_bytes():  # decoded from gzip etc. by httpx
                    for event in parser.feed(chunk):
                        assembler.feed(event)
                for event in parser.close():
                    assembler.feed(event)
            return assembler.result()
        except httpx.TransportError as exc:
            failure = _transport_failure(exc)
            if not opened:
                raise failure from None
            raise TransportFailed(failure.code, f"mid-stream: {failure.message}", possibly_billed=True) from None
        except StreamError as exc:
            raise CallFailed(exc.error) from None
        except wire.MalformedResponse as exc:
            raise TransportFailed("StreamCut", str(exc), possibly_billed=True) from None


def transient_code(answer: wire.Completion | CallFailed | TransportFailed) -> str | None:
    """The error code of an attempt that failed for a transient reason (for the breaker)."""
    if isinstance(answer, TransportFailed):
        return answer.code
    if isinstance(answer, CallFailed) and answer.error.status >= 500:
        return f"HTTP {answer.error.status} {answer.error.code}"
    return None


def failure_of(exc: CallFailed | TransportFailed) -> Failure:
    """The Failure an exception from `DashScopeClient.generate` describes."""
    if isinstance(exc, CallFailed):
        e = exc.error
        return Failure(e.code, e.message, e.status, e.request_id)
    return Failure(exc.code, exc.message, possibly_billed=exc.possibly_billed)
