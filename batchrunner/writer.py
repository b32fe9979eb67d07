"""The checkpoint writer: groups finished rows and attempts into one commit every few ms.

Workers hand results over with `add_result` / `add_attempt` (no I/O on their path). A single
writer task wakes when something arrives, waits `interval_s` so a group can form, and commits
the group in one transaction on a dedicated thread, so the event loop never waits on disk.
A SIGKILL therefore loses at most the answers of the last interval; `close()` commits
whatever is left on every orderly exit (end of job, Ctrl-C, SIGTERM, abort).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .store import Store


class CheckpointWriter:
    """Buffers results in memory and commits them in groups."""

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float,
        on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.on_commit = on_commit
        self.commits = 0
        self._results: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._resume: tuple[int, int] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrunner-store")

    def add_result(self, result: dict[str, Any]) -> None:
        self._results.append(result)
        self._wake.set()

    def add_attempt(self, attempt: dict[str, Any]) -> None:
        self._attempts.append(attempt)
        self._wake.set()

    def set_resume_point(self, run_id: int, offset: int) -> None:
        """Record the run's resume point with the next commit (only the writer writes)."""
        self._resume = (run_id, offset)
        self._wake.set()

    async def run(self) -> None:
        """The writer task: commit a group every `interval_s` while there is anything to write."""
        while not self._closed:
            await self._wake.wait()
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            self._wake.clear()
            results, self._results = self._results, []
            attempts, self._attempts = self._attempts, []
            resume, self._resume = self._resume, None
            if not results and not attempts and resume is None:
                return
            loop = asyncio.get_running_loop()
            write = functools.partial(self.store.write, results, attempts, resume=resume)
            # Shielded: a cancelled run must still finish writing what it had been paid for.
            await asyncio.shield(loop.run_in_executor(self._executor, write))
            self.commits += 1
            if self.on_commit is not None and results:
                self.on_commit(results)

    async def close(self) -> None:
        """Commit everything still buffered and stop the writer thread."""
        self._closed = True
        self._wake.set()
        await self.flush()
        await self.flush()  # the resume point moved by the last commit
        self._executor.shutdown(wait=True)
