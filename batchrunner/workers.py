"""`[limits] processes = N`: N worker processes send the requests, the parent does the rest.

The parent reads the source, paces every start (rate and token limits, exactly, in one place),
books the budget, classifies answers, retries and writes the one store; a worker only sends:
it holds its own event loop and HTTP connections, takes (id, path, body) messages from its pipe,
and answers each with the completion or the failure, as `DashScopeClient.generate` would raise
it in the parent. So a server faster than one core gets N cores' worth of HTTP and JSON work,
while everything that must be single (limits, store, writer) stays single.

A worker that dies (killed, crashed) is replaced, and the requests it had in flight, and only
those, are sent again through the new one (the dead one may have sent them: they are counted
as possibly billed by the normal retry path only if they fail). Workers ignore SIGINT (the
parent decides how a run stops) and end when their pipe closes, so a parent killed with
SIGKILL takes its workers down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from . import wire
from .client import CallFailed, DashScopeClient, TransportFailed
from .render import Request

if TYPE_CHECKING:
    from .route import Route
    from .spec import JobSpec

log = logging.getLogger("batchrunner")

_CONTEXT = multiprocessing.get_context("spawn")  # no fork: the parent runs threads (writer, loop)


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to send: where, with which key, how (never logged: it holds the key)."""

    base_url: str
    api_key: str = field(repr=False)
    timeout_s: float
    max_connections: int
    protocol: str
    stream: bool


def processes_for(setting: int | str) -> int:
    """`[limits] processes`: a number, or "auto" for the machine's cores."""
    if setting == "auto":
        return max(1, os.cpu_count() or 1)
    return int(setting)


# ----------------------------------------------------------------- the worker side


def worker_main(conn: Connection, settings: WorkerSettings) -> None:
    """A worker process: serve the pipe until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(conn, settings))


async def _serve(conn: Connection, settings: WorkerSettings) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, str, bytes, dict[str, Any] | None] | None] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(None)

    tasks: set[asyncio.Task[None]] = set()
    async with DashScopeClient(
        settings.base_url,
        settings.api_key,
        timeout_s=settings.timeout_s,
        max_connections=settings.max_connections,
        wire=wire.for_protocol(settings.protocol),
        stream=settings.stream,
    ) as client:
        loop.add_reader(conn.fileno(), readable)
        while (message := await inbox.get()) is not None:
            task = asyncio.create_task(_send(client, conn, *message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _send(
    client: DashScopeClient, conn: Connection, ident: int, path: str, content: bytes, body: dict[str, Any] | None
) -> None:
    request = Request("", 0, "", path, body or {}, 0, content=content)
    reply: tuple[Any, ...]
    try:
        reply = (ident, "ok", await client.generate(request))
    except CallFailed as exc:
        reply = (ident, "call", exc.error)
    except TransportFailed as exc:
        reply = (ident, "transport", (exc.code, exc.message, exc.possibly_billed, exc.unreachable))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a failed attempt
        reply = (ident, "transport", ("WorkerError", f"{type(exc).__name__}: {exc}", True, False))
    with contextlib.suppress(OSError):
        conn.send(reply)


# ----------------------------------------------------------------- the parent side


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    in_flight: dict[int, tuple[asyncio.Future[wire.Completion], Request]] = field(default_factory=dict)
    sent: int = 0


class WorkerPool:
    """N worker processes behind `generate(request)`, the interface of `DashScopeClient`."""

    def __init__(self, processes: int, settings: WorkerSettings) -> None:
        self.size = processes
        self.settings = settings
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers that died and were started again
        self._ids = itertools.count()
        self._closing = False

    async def __aenter__(self) -> WorkerPool:
        for _ in range(self.size):
            self.workers.append(self._start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _start(self) -> _Worker:
        parent, child = _CONTEXT.Pipe(duplex=True)
        process = _CONTEXT.Process(
            target=worker_main, args=(child, self.settings), daemon=True, name="batchrunner-worker"
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, worker)
        return worker

    def _readable(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                ident, kind, value = worker.conn.recv()
                entry = worker.in_flight.pop(ident, None)
                if entry is not None and not entry[0].done():
                    _settle(entry[0], kind, value)
        except (EOFError, OSError):
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """A worker's pipe closed: start another and send it what the dead one had in flight."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.conn.fileno())
        worker.conn.close()
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        worker.process.join(timeout=5)
        if self._closing:
            for future, _ in worker.in_flight.values():
                if not future.done():
                    future.cancel()
            return
        log.warning(
            "a worker process ended (exit %s) with %d request(s) in flight; starting another to send them again",
            worker.process.exitcode,
            len(worker.in_flight),
        )
        self.replaced += 1
        fresh = self._start()
        self.workers.append(fresh)
        for ident, (future, request) in worker.in_flight.items():
            if not future.done():
                fresh.in_flight[ident] = (future, request)
                self._post(fresh, ident, request)

    def _post(self, worker: _Worker, ident: int, request: Request) -> None:
        body = request.body if self.settings.stream else None
        worker.sent += 1
        with contextlib.suppress(OSError):  # the worker is gone: its reader sees the closed pipe
            worker.conn.send((ident, request.path, request.payload, body))

    async def generate(self, request: Request) -> wire.Completion:
        """Send a request through the least busy worker; raises like DashScopeClient.generate."""
        worker = min(self.workers, key=lambda w: len(w.in_flight))
        ident = next(self._ids)
        future: asyncio.Future[wire.Completion] = asyncio.get_running_loop().create_future()
        worker.in_flight[ident] = (future, request)
        self._post(worker, ident, request)
        return await future

    async def aclose(self) -> None:
        self._closing = True
        loop = asyncio.get_running_loop()
        for worker in list(self.workers):
            loop.remove_reader(worker.conn.fileno())
            worker.conn.close()  # the worker sees its pipe close and ends
        for worker in self.workers:
            await asyncio.to_thread(worker.process.join, 10)
            if worker.process.is_alive():
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)
            for future, _ in worker.in_flight.values():
                if not future.done():
                    future.cancel()
        self.workers.clear()


def _settle(future: asyncio.Future[wire.Completion], kind: str, value: Any) -> None:
    if kind == "ok":
        future.set_result(value)
    elif kind == "call":
        future.set_exception(CallFailed(value))
    else:
        code, message, billed, unreachable = value
        future.set_exception(TransportFailed(code, message, possibly_billed=billed, unreachable=unreachable))


def sender_for(spec: JobSpec, route: Route, api_key: str) -> DashScopeClient | WorkerPool:
    """One HTTP client in this process, or `[limits] processes` workers sending for it."""
    processes = processes_for(spec.limits.processes)
    if processes > 1:
        per_worker = max(1, -(-spec.limits.concurrency // processes))
        settings = WorkerSettings(route.base_url, api_key, route.timeout_s, per_worker, route.wire.name, route.stream)
        return WorkerPool(processes, settings)
    return DashScopeClient(
        route.base_url,
        api_key,
        timeout_s=route.timeout_s,
        max_connections=spec.limits.concurrency,
        wire=route.wire,
        stream=route.stream,
    )
