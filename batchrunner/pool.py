"""The worker pool: a bounded queue of requests and `concurrency` workers in one TaskGroup.

The producer reads requests from an async iterator into a queue no longer than the pool (so
it never runs ahead of what can be sent); each worker takes one request at a time and hands
it to `work` (one request's whole life, see attempts.py). `Stop.request()` ends the intake:
the producer stops reading, and the workers drain the queue without sending. The first
exception a worker raises (an AuthError, or a bug) cancels the others and is raised as itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Stop:
    """A run's stop flag: set by a signal, the budget guard or the circuit breaker."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True


class Pool(Generic[T]):
    """Runs `work` over the items of an async iterator with `concurrency` workers."""

    def __init__(self, work: Callable[[T], Awaitable[None]], *, concurrency: int, stop: Stop | None = None) -> None:
        self.work = work
        self.concurrency = concurrency
        self.stopping = stop or Stop()

    def stop(self) -> None:
        """Stop taking new items; items already being worked on run to their end."""
        self.stopping.request()

    async def run(self, items: AsyncIterator[T]) -> None:
        queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=self.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce(items, queue))
                for _ in range(self.concurrency):
                    group.create_task(self._drain(queue))
        except BaseExceptionGroup as eg:
            # Surface the first real error (an AuthError, or a bug) rather than the group.
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    async def _produce(self, items: AsyncIterator[T], queue: asyncio.Queue[T | None]) -> None:
        try:
            async for item in items:
                if self.stopping.requested:
                    break
                await queue.put(item)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        # Only on a normal end: a cancelled producer must not wait for room in the queue (the
        # workers may be gone), so the end-of-work markers are sent here, not in `finally`.
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _drain(self, queue: asyncio.Queue[T | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if not self.stopping.requested:  # once stopping, drain the queue without sending
                await self.work(item)
