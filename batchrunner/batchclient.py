"""The HTTP client of the Batch API: upload input files, create, poll, find and cancel
batches, download and delete result files. Paths and shapes come from `wire.batch`.

Every call but `create` is idempotent, so it is sent again after a transient failure (408,
409, 429, 5xx, a timeout, a refused or dropped connection, an unreadable answer, a download
cut short) up to `tries` times, waiting an exponential, jittered, capped backoff (or what a
Retry-After header asks, capped the same way) through the injected `sleep`. When every try
failed, the call raises BatchUnavailable. Any other error answer raises BatchCallFailed.

`create` is sent exactly once, never again by this client or by httpx (the default transport
has retries=0): a create sent twice makes two batches and both are billed. An answer lost
after the request may have gone out raises CreateUnknown; the caller then looks for the batch
with `find(ds_name)` before creating it again.

No message or exception built here contains the API key.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpcore
import httpx

from .wire import ServiceError, parse_error
from .wire import batch as wb

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

TRANSIENT_STATUSES = frozenset({408, 409, 429})  # and every status >= 500
USER_AGENT = "batchrunner"
PAGE_SIZE = 100  # batches asked for per page by `find`


def _is_transient(status: int) -> bool:
    return status in TRANSIENT_STATUSES or status >= 500


class BatchCallFailed(Exception):
    """The service answered with an error status: `status`, `code`, `message`, `request_id`
    (None when not given) and `retry_after` (seconds, when the answer asked for a wait)."""

    def __init__(
        self, status: int, code: str, message: str, request_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """True for 408, 409, 429 and 5xx: sending the same call later may work."""
        return _is_transient(self.status)


class BatchUnavailable(Exception):
    """A call failed transiently on every try (5xx, 429, timeouts, dropped or refused
    connections, unreadable answers). `status` is the last try's HTTP status, None when it
    got no answer. From `create`: the connection could not even be opened (nothing was sent)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class CreateUnknown(Exception):
    """POST /batches may or may not have made a batch: its answer was lost (a transport error
    or timeout after the request could have gone out, a 5xx, an unreadable answer). The client
    never sends a create again by itself: list the batches by ds_name to adopt the one it may
    have made before creating another. `status` is the HTTP status, None without an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _TryFailed(Exception):
    """One try of a retried call failed transiently (internal to this module)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _never_sent(exc: httpx.TransportError) -> bool:
    """True when the connection could not be opened, so no byte of the request went out.

    httpx's own transport raises ConnectError / ConnectTimeout only while connecting. The
    httpx-aiohttp transport raises ConnectTimeout for every aiohttp error, so there only a
    chained aiohttp connector error counts."""
    if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return False
    cause = exc.__cause__
    return isinstance(cause, httpcore.ConnectError | httpcore.ConnectTimeout | aiohttp.ClientConnectorError)


def _read(parse: Callable[[bytes], T], body: bytes) -> T:
    """`parse(body)`, or _TryFailed when the wire cannot read the answer."""
    try:
        return parse(body)
    except (ValueError, TypeError, AttributeError) as exc:  # MalformedResponse is a ValueError
        raise _TryFailed(f"unreadable answer: {exc}", 200) from None


class BatchClient:
    """One HTTP client for the Files and Batches APIs under `root`, the OpenAI-compatible
    root URL (`wire.compatible_root` of a native base URL). Use `async with`."""

    def __init__(
        self,
        root: str,
        api_key: str,
        *,
        timeout_s: float = 120.0,
        tries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if tries < 1 or backoff_s < 0 or backoff_max_s < 0 or timeout_s <= 0:
            msg = "BatchClient: tries must be >= 1, backoffs >= 0 and timeout_s > 0"
            raise ValueError(msg)
        self.tries = tries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.page_size = PAGE_SIZE
        self._sleep = sleep
        self._random = random.Random()
        self._secret = api_key
        headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"}
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0), pool=None)
        self._http = httpx.AsyncClient(
            base_url=root.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=0),
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ the calls

    async def upload(self, path: Path, filename: str) -> wb.RemoteFile:
        """Upload a JSONL input file (streamed from disk, purpose=batch). Retried: an upload
        bills nothing, though a lost answer may leave an unused file at the service."""

        async def attempt() -> wb.RemoteFile:
            with path.open("rb") as data:  # httpx reads it in 64 KB chunks while sending
                files = {"file": (filename, data, "application/jsonl")}
                response = await self._http.post(wb.FILES_PATH, files=files, data={"purpose": wb.PURPOSE})
            return _read(wb.parse_file, self._checked(response).content)

        return await self._retried("upload", attempt)

    async def create(self, input_file_id: str, *, window: str, endpoint: str, metadata: dict[str, str]) -> wb.Batch:
        """Create a batch with exactly one POST. A 4xx (429 included) raises BatchCallFailed
        (nothing was made); a lost or unreadable answer or a 5xx raises CreateUnknown; a
        connection that could not be opened raises BatchUnavailable (nothing was sent)."""
        body = wb.create_body(input_file_id, window=window, endpoint=endpoint, **metadata)
        lost = "create: {}; the batch may exist: find it by ds_name before creating it again"
        try:
            response = await self._http.post(wb.BATCHES_PATH, json=body)
        except httpx.TransportError as exc:
            if _never_sent(exc):
                raise BatchUnavailable(self._clean(f"create: could not connect ({_describe(exc)})")) from None
            raise CreateUnknown(self._clean(lost.format(f"no answer ({_describe(exc)})"))) from None
        if response.status_code >= 500:
            error = self._error(response)
            raise CreateUnknown(lost.format(f"HTTP {error.status} {error.code}: {error.message}"), error.status)
        self._checked(response)
        try:
            return _read(wb.parse_batch, response.content)
        except _TryFailed as exc:
            raise CreateUnknown(self._clean(lost.format(exc.message)), response.status_code) from None

    async def get(self, batch_id: str) -> wb.Batch:
        """The batch as it is now."""
        call = functools.partial(self._call, "GET", wb.batch_path(batch_id), wb.parse_batch)
        return await self._retried("get batch", call)

    async def cancel(self, batch_id: str) -> wb.Batch:
        """Ask the service to cancel a batch (idempotent, so retried); the batch as answered."""
        call = functools.partial(self._call, "POST", wb.cancel_path(batch_id), wb.parse_batch)
        return await self._retried("cancel batch", call)

    async def find(self, ds_name: str, *, input_file_id: str | None = None) -> list[wb.Batch]:
        """Every batch whose metadata.ds_name is exactly `ds_name` (optionally made from
        `input_file_id`), newest first, through every page. The service's ds_name filter
        matches substrings, so the others it returns are left out here."""
        found: dict[str, wb.Batch] = {}
        after: str | None = None
        while True:
            inputs = (input_file_id,) if input_file_id else ()
            query = wb.list_query(limit=self.page_size, after=after, ds_name=ds_name, input_file_ids=inputs)
            page = await self._retried(
                "list batches", functools.partial(self._call, "GET", wb.BATCHES_PATH, wb.parse_batch_list, params=query)
            )
            found.update((b.id, b) for b in page.batches if b.metadata.get("ds_name") == ds_name)
            if not page.has_more:
                return list(found.values())
            if page.last_id is None or page.last_id == after:
                raise BatchUnavailable("list batches: the service said there is more but gave no next page")
            after = page.last_id

    async def download(self, file_id: str, dest: Path) -> int:
        """Save a file's content at `dest` (written beside it, then renamed into place, so
        `dest` is whole or absent); returns the bytes written. A 5xx or a download cut short
        is tried again from the start."""
        return await self._retried("download", functools.partial(self._download_once, file_id, dest))

    async def delete_file(self, file_id: str) -> bool:
        """Delete a file; False when it was already gone (404)."""

        async def attempt() -> bool:
            response = await self._http.delete(wb.file_path(file_id))
            if response.status_code == 404:
                return False
            self._checked(response)
            return True

        return await self._retried("delete file", attempt)

    # ------------------------------------------------------------------ one try

    async def _call(self, method: str, path: str, parse: Callable[[bytes], T], **kwargs: Any) -> T:
        response = await self._http.request(method, path, **kwargs)
        return _read(parse, self._checked(response).content)

    async def _download_once(self, file_id: str, dest: Path) -> int:
        part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            async with self._http.stream("GET", wb.file_content_path(file_id)) as response:
                if not response.is_success:
                    await response.aread()
                    self._checked(response)
                written = 0
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                promised = response.headers.get("Content-Length", "")
                received = response.num_bytes_downloaded  # as sent, before any decoding
                if promised.isdigit() and received < int(promised):
                    raise _TryFailed(f"download cut short: {received} of {promised} bytes", response.status_code)
            os.replace(part, dest)
            return written
        finally:
            part.unlink(missing_ok=True)

    # ------------------------------------------------------------------ answers and retries

    def _clean(self, text: str) -> str:
        """`text` with the API key blotted out, should anything have echoed it."""
        return text.replace(self._secret, "[key]") if self._secret else text

    def _error(self, response: httpx.Response) -> ServiceError:
        error = parse_error(response.status_code, response.content, dict(response.headers))
        return ServiceError(
            error.status, self._clean(error.code), self._clean(error.message), error.request_id, error.retry_after
        )

    def _checked(self, response: httpx.Response) -> httpx.Response:
        """`response` when it is a success, else BatchCallFailed."""
        if response.is_success:
            return response
        e = self._error(response)
        raise BatchCallFailed(e.status, e.code, e.message, e.request_id, e.retry_after)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed try `attempt` (0-based): Retry-After when given, else
        backoff_s doubling each try, with jitter (a half to all of it); never over backoff_max_s."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        full = min(self.backoff_max_s, self.backoff_s * 2.0 ** min(attempt, 60))
        return full * (0.5 + 0.5 * self._random.random())

    async def _retried(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, tried up to `tries` times while it fails transiently."""
        failure = _TryFailed("not tried")
        for n in range(self.tries):
            try:
                return await attempt()
            except BatchCallFailed as exc:
                if not exc.transient:
                    raise
                failure = _TryFailed(str(exc), exc.status, exc.retry_after)
            except httpx.UnsupportedProtocol:  # a wrong root URL: no try can succeed
                raise
            except httpx.TransportError as exc:  # timeouts, refused, dropped or cut connections
                failure = _TryFailed(_describe(exc))
            except _TryFailed as exc:
                failure = exc
            if n + 1 < self.tries:
                await self._sleep(self._delay(n, failure.retry_after))
        message = f"{what} failed {self.tries} times; last: {failure.message}"
        raise BatchUnavailable(self._clean(message), failure.status)
