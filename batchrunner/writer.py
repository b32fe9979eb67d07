"""The checkpoint writer: groups finished requests and attempts into one commit every few ms.

Workers hand records over with `add_result` / `add_attempt` (no I/O on their path). A single
writer task wakes when something arrives, waits `interval_s` so a group can form, and commits
the group in one transaction on a dedicated thread, so the event loop never waits on disk.
Each commit also records the run's resume point, read from `resume_point()`; after it,
`on_commit` is told which results are now stored. A SIGKILL therefore loses at most the
answers of the last interval; `close()` commits whatever is left on every orderly exit (end
of job, Ctrl-C, SIGTERM, abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .records import Attempt, Result
from .store import Store

IDLE_CHECK_S = 1.0  # how often an idle writer looks whether the resume point moved


class CheckpointWriter:
    """Buffers records in memory and commits them in groups."""

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float,
        run_id: int,
        resume_point: Callable[[], int] | None = None,
        on_commit: Callable[[Sequence[Result]], None] | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.run_id = run_id
        self.resume_point = resume_point
        self.on_commit = on_commit
        self.commits = 0
        self._results: list[Result] = []
        self._attempts: list[Attempt] = []
        self._saved_point: int | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrunner-store")

    def add_result(self, result: Result) -> None:
        self._results.append(result)
        self._wake.set()

    def add_attempt(self, attempt: Attempt) -> None:
        self._attempts.append(attempt)
        self._wake.set()

    async def run(self) -> None:
        """The writer task: commit a group every `interval_s` while there is anything to write."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_CHECK_S)
            await asyncio.sleep(self.interval_s)
            await self.flush()

    def _moved_point(self) -> tuple[int, int] | None:
        if self.resume_point is None:
            return None
        point = self.resume_point()
        if point == self._saved_point:
            return None
        return self.run_id, point

    async def flush(self) -> None:
        async with self._lock:
            self._wake.clear()
            results, self._results = self._results, []
            attempts, self._attempts = self._attempts, []
            resume = self._moved_point()
            if not results and not attempts and resume is None:
                return
            loop = asyncio.get_running_loop()
            write = functools.partial(self.store.write, results, attempts, resume=resume)
            # Shielded: a cancelled run must still finish writing what it had been paid for.
            await asyncio.shield(loop.run_in_executor(self._executor, write))
            if resume is not None:
                self._saved_point = resume[1]
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
