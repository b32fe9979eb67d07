"""The checkpoint writer: group commit of finished requests and attempts, on one thread.

Workers hand records over with `add_result` / `add_attempt` (no I/O on their path). The writer
task sleeps until something arrives, takes everything waiting, commits it in one transaction on
a dedicated thread (so the event loop never waits on disk) and loops: at a low rate each answer
is committed at once, at a high rate commits batch themselves while the previous one runs.
Each commit also records the run's resume point, read from `resume_point()`; after it,
`on_commit` is told which results are stored. A SIGKILL loses only the answers of the commit
under way; `close()` commits whatever is left on every orderly exit.

Records leave the buffer only once their commit succeeded. While another connection holds the
write lock, the writer keeps them and tries again (SQLite's busy timeout, then a backoff). Any
other failure (disk full, I/O error, a read-only file) is reported through `on_error` at once,
so the run stops buying, and the writer keeps trying; if `close()` still cannot commit, the
records go to a side file beside the store (`spill_path`), which the next run loads first.

The buffer is bounded: `paced()` holds the run's intake while MAX_PENDING records wait for a
commit. Without it, a store slower than the answers (a held lock, a loaded disk) let the
buffer grow without end, and each commit grow with it: a commit of a backlog of tens of
thousands of answers overflows SQLite's page cache, spills into the WAL and slows down
further, while the answers keep coming (a million-row run was seen stuck at 1 GB and growing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from .records import Attempt, Result
from .store import Store

log = logging.getLogger("batchrunner")

IDLE_CHECK_S = 1.0  # how often an idle writer looks whether the resume point moved
RETRY_S = (0.05, 0.2, 1.0, 2.0)  # pauses between tries of a failed commit
CLOSE_TRIES_S = 30.0  # how long close() keeps trying a failing commit before spilling
MAX_PENDING = 10_000  # records waiting for a commit before the run's intake waits

T = TypeVar("T")


def is_busy(exc: BaseException) -> bool:
    """Whether a commit failed only because another connection holds the write lock."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


def _spill_dirs(store_path: Path) -> list[Path]:
    """Where unsaved records may be kept: beside the store, else (its disk full) the temp folder."""
    return [store_path.parent, Path(tempfile.gettempdir()) / "batchrunner-unsaved"]


def _spill_stem(store_path: Path) -> str:
    digest = hashlib.blake2b(str(store_path.resolve()).encode(), digest_size=4).hexdigest()
    return f"{store_path.name}.{digest}.unsaved"


class CheckpointWriter:
    """Buffers records in memory and commits them in groups, losing none."""

    def __init__(
        self,
        store: Store,
        *,
        run_id: int,
        min_interval_s: float = 0.0,
        resume_point: Callable[[], int] | None = None,
        on_commit: Callable[[Sequence[Result]], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.min_interval_s = min_interval_s
        self.resume_point = resume_point
        self.on_commit = on_commit
        self.on_error = on_error
        self.commits = 0
        self.error: BaseException | None = None  # the last failure that was not a held lock
        self.spilled: Path | None = None
        self._results: list[Result] = []
        self._attempts: list[Attempt] = []
        self._saved_point: int | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever a commit (or a failure) may have made room
        self._lock = asyncio.Lock()
        self._closed = False
        self._failures = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrunner-store")

    @property
    def pending(self) -> int:
        """Records received and not committed yet."""
        return len(self._results) + len(self._attempts)

    async def room(self) -> None:
        """Wait while MAX_PENDING records wait for a commit (not after a failure that stops
        the run, nor once closed: then nothing is taken anyway)."""
        while self.pending >= MAX_PENDING and self.error is None and not self._closed:
            self._drained.clear()
            await self._drained.wait()

    async def paced(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """`items`, each taken only when the buffer has room (see `room`)."""
        try:
            async for item in items:
                await self.room()
                yield item
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    def add_result(self, result: Result) -> None:
        self._results.append(result)
        self._wake.set()

    def add_attempt(self, attempt: Attempt) -> None:
        self._attempts.append(attempt)
        self._wake.set()

    async def run(self) -> None:
        """The writer task: commit whatever is waiting, as soon as the previous commit is done."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_CHECK_S)
            if self._closed:
                return
            if not await self.flush():
                await asyncio.sleep(RETRY_S[min(self._failures, len(RETRY_S)) - 1])
            elif self.min_interval_s:
                await asyncio.sleep(self.min_interval_s)

    def _moved_point(self) -> tuple[int, int] | None:
        if self.resume_point is None:
            return None
        point = self.resume_point()
        if point == self._saved_point:
            return None
        return self.run_id, point

    async def flush(self) -> bool:
        """Commit everything waiting; False if the commit failed (the records are kept)."""
        async with self._lock:
            self._wake.clear()
            results, attempts = list(self._results), list(self._attempts)
            resume = self._moved_point()
            if not results and not attempts and resume is None:
                return True
            loop = asyncio.get_running_loop()
            write = functools.partial(self.store.write, results, attempts, resume=resume)
            try:
                # Shielded: a cancelled run must still finish writing what it had been paid for.
                await asyncio.shield(loop.run_in_executor(self._executor, write))
            except Exception as exc:  # any failure to commit keeps the records
                self._failed(exc)
                return False
            del self._results[: len(results)]
            del self._attempts[: len(attempts)]
            self._drained.set()
            self._failures = 0
            if resume is not None:
                self._saved_point = resume[1]
            self.commits += 1
            if self.on_commit is not None and results:
                self.on_commit(results)
            return True

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        if is_busy(exc):
            if self._failures == 1:
                log.warning(
                    "%s: the store is locked by another connection; keeping answers until it is free", self.store.path
                )
            return
        if self.error is None:
            log.error("%s: cannot commit to the store (%s); the run stops sending", self.store.path, exc)
            if self.on_error is not None:
                self.on_error(exc)
        self.error = exc
        self._drained.set()

    async def close(self) -> None:
        """Commit everything still buffered (trying for a while), spill what cannot be, stop."""
        self._closed = True
        self._wake.set()
        self._drained.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TRIES_S
        while not (await self.flush() and await self.flush()):  # the 2nd: the point the 1st moved
            if loop.time() >= deadline or (self.error is not None and self._failures >= len(RETRY_S)):
                self.spill()
                break
            await asyncio.sleep(RETRY_S[min(self._failures, len(RETRY_S)) - 1])
        self._executor.shutdown(wait=True)

    def spill(self) -> None:
        """Keep the records that could not be committed in a side file the next run loads."""
        results, attempts = list(self._results), list(self._attempts)  # may run on another thread
        if not results and not attempts:
            return
        lines = [json.dumps({"result": asdict(r)}) for r in results]
        lines += [json.dumps({"attempt": asdict(a)}) for a in attempts]
        text = "\n".join(lines) + "\n"
        for folder in _spill_dirs(self.store.path):
            path = folder / f"{_spill_stem(self.store.path)}-run{self.run_id}.jsonl"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
            except OSError as exc:
                log.error("%s: cannot keep %d unsaved records in %s (%s)", self.store.path, len(lines), path, exc)
                path.unlink(missing_ok=True)
                continue
            self.spilled = path
            log.error("%s: %d records kept in %s; the next run loads them", self.store.path, len(lines), path)
            return


def load_spilled(store: Store) -> int:
    """Commit the records earlier runs could not (their side files), then remove the files.
    Returns how many records were loaded."""
    loaded = 0
    found = [p for folder in _spill_dirs(store.path) for p in folder.glob(f"{_spill_stem(store.path)}-run*.jsonl")]
    for path in sorted(found):
        results: list[Result] = []
        attempts: list[Attempt] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if "result" in item:
                results.append(Result(**item["result"]))
            else:
                attempts.append(Attempt(**item["attempt"]))
        store.write(results, attempts)
        path.unlink()
        loaded += len(results) + len(attempts)
        log.warning("%s: loaded %d records an earlier run could not save (%s)", store.path, loaded, path.name)
    return loaded
