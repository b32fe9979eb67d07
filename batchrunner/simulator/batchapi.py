"""HTTP routes of the Files and Batches APIs under /compatible-mode/v1 (state in batches.py).

    POST /files (multipart file, purpose)   GET /files   GET|DELETE /files/{id}
    GET /files/{id}/content                 POST /batches   GET /batches (filters)
    GET /batches/{id}                       POST /batches/{id}/cancel

Errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}, "request_id"}; a 429
or 503 carries Retry-After when `SimulatorConfig.retry_after_s` is set. Injected faults (see
batchfaults.py): a create whose answer is lost (the connection closes, the batch exists), a
429 create, a 503 get, a 503 download, and a download cut off halfway through its body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from batchrunner.wire import batch as wb

from .batches import BatchApiError, BatchStore
from .batchfaults import DOWNLOAD_503, DOWNLOAD_CUT
from .catalogue import SimError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JSON = "application/json"


def _json(value: Any, request_id: str, status: int = 200) -> web.Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers={"x-request-id": request_id}, content_type=_JSON)


def _error(status: int, code: str, message: str, request_id: str, retry_after: float | None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else code
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}, "request_id": request_id}
    response = _json(payload, request_id, status)
    if status in (429, 503) and retry_after is not None:
        response.headers["Retry-After"] = f"{retry_after:g}"
    return response


def _unavailable(message: str) -> BatchApiError:
    return BatchApiError(503, "service_unavailable", message)


def _hang_up(request: web.Request) -> None:
    """Close the connection (after what was written is flushed): the client gets no answer."""
    if request.transport is not None:
        request.transport.close()


class BatchRoutes:
    """The aiohttp handlers of one simulator's Batch API; `authorize` raises SimError."""

    def __init__(self, store: BatchStore, authorize: Callable[[str | None], None]) -> None:
        self.store = store
        self._authorize = authorize

    def add_to(self, router: web.UrlDispatcher, base: str) -> None:
        files, batches = base + wb.FILES_PATH, base + wb.BATCHES_PATH
        router.add_post(files, self._guard("upload", self._upload))
        router.add_get(files, self._guard("list_files", self._list_files))
        router.add_get(files + "/{id}", self._guard("get_file", self._get_file))
        router.add_delete(files + "/{id}", self._guard("delete_file", self._delete_file))
        router.add_get(files + "/{id}/content", self._guard("content", self._content))
        router.add_post(batches, self._guard("create", self._create))
        router.add_get(batches, self._guard("list", self._list))
        router.add_get(batches + "/{id}", self._guard("get", self._get))
        router.add_post(batches + "/{id}/cancel", self._guard("cancel", self._cancel))

    def _guard(self, route: str, handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
        """`handler` behind the key check, counted as `route` in stats()["batch_calls"]."""
        retry_after = self.store.config.retry_after_s

        async def serve(request: web.Request) -> web.StreamResponse:
            request_id = str(uuid.uuid4())
            self.store.count_call(route)
            try:
                self._authorize(request.headers.get("Authorization"))
                return await handler(request, request_id)
            except SimError as err:
                code = "invalid_api_key" if err.status == 401 else "invalid_request_error"
                return _error(err.status, code, err.message, request_id, retry_after)
            except BatchApiError as err:
                return _error(err.status, err.code, err.message, request_id, retry_after)

        return serve

    async def _upload(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            form = await request.post()
        except ValueError:
            form = None
        upload = form.get("file") if form is not None else None
        if not isinstance(upload, web.FileField):
            raise BatchApiError(400, "invalid_request_error", "A multipart field 'file' is required.")
        purpose = str(form.get("purpose", "")) if form is not None else ""
        data = upload.file.read()
        return _json(self.store.add_file(upload.filename, purpose, data), request_id)

    async def _list_files(self, request: web.Request, request_id: str) -> web.StreamResponse:
        return _json(self.store.list_files(), request_id)

    async def _get_file(self, request: web.Request, request_id: str) -> web.StreamResponse:
        return _json(self.store.get_file(request.match_info["id"]), request_id)

    async def _delete_file(self, request: web.Request, request_id: str) -> web.StreamResponse:
        return _json(self.store.delete_file(request.match_info["id"]), request_id)

    async def _content(self, request: web.Request, request_id: str) -> web.StreamResponse:
        file_id = request.match_info["id"]
        data = self.store.file_content(file_id)
        fault = self.store.faults.download(file_id)
        if fault == DOWNLOAD_503:
            raise _unavailable("The file service is busy; try the download again.")
        headers = {"x-request-id": request_id}
        if fault != DOWNLOAD_CUT:
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        response = web.StreamResponse(headers=headers)  # promises every byte, sends half
        response.content_type = "application/octet-stream"
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        _hang_up(request)
        return response

    async def _create(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BatchApiError(400, "invalid_request_error", "The body must be a JSON object.")
        created = self.store.create(body)
        if self.store.faults.drop_create():  # the batch exists; its answer is lost
            _hang_up(request)
            return web.Response(status=200)
        return _json(created, request_id)

    async def _list(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            return _json(self.store.list(dict(request.query)), request_id)
        except ValueError:
            raise BatchApiError(400, "invalid_request_error", "limit must be an integer.") from None

    async def _get(self, request: web.Request, request_id: str) -> web.StreamResponse:
        if self.store.faults.fail_get():
            raise _unavailable("The batch service is busy; try again.")
        return _json(self.store.get(request.match_info["id"]), request_id)

    async def _cancel(self, request: web.Request, request_id: str) -> web.StreamResponse:
        return _json(self.store.cancel(request.match_info["id"]), request_id)
