"""What a run still has to send, and where the next run may start reading.

`Pending.requests()` reads the input a slice at a time (off the event loop), looks each
slice's request keys up in the store, and yields only the requests not settled yet (settled =
answered ok, or failed for a reason a rerun would not fix). Identical requests in one table are
sent once: `claimed` holds the keys sent and not yet committed, `recent` the keys committed
since the current slice was looked up.

The resume point: a slice is done once every request yielded from it has been committed as
settled. `Frontier.point` is the first slice that is not done (or not yet read); the checkpoint
writer records it with each commit, so that a run killed at 90% leaves a point near 90%, and
the next run of the same spec over the same input file starts reading there, not at row 0.

Nothing here keeps a thing per row for the life of a run: `claimed` and the frontier's
per-request map hold only requests in flight (at most `concurrency` plus the queue), `recent`
at most what was committed while one slice was being sent, the open slices are those with a
request in flight, and a slice left for a later run only lowers one number. Identical requests
further apart than that are found by the slice's lookup in the store (its primary key). The
slices are read on one long-lived thread (`asyncio.to_thread` would spread the reads over a
pool of threads, each of which may get a malloc arena of its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .records import Result, settled
from .render import Request, Skipped
from .source import Source
from .store import Store

BATCH_ROWS = 5000
SURVEY_SLICES = 2  # a resume looks this many slices past its resume point before it sends
log = logging.getLogger("batchrunner")


@dataclass
class Survey:
    """Rows (requests) a run found needing nothing before it sent anything."""

    settled: int = 0  # answered ok, or failed for a reason a rerun would not fix
    skipped: int = 0  # rows the template skips
    live: int = 0  # out in a batch that may still answer them
    partial: bool = False  # rows beyond the surveyed slices were not looked at

    @property
    def quiet(self) -> int:
        return self.settled + self.skipped + self.live


class Frontier:
    """The first input row that a later run still has to read."""

    def __init__(self, start: int) -> None:
        self.scanned = start  # every slice before this offset has been read in full
        self._open: dict[int, int] = {}  # slice offset -> requests yielded and not yet settled
        self._blocked: int | None = None  # the first slice with a request that a rerun sends again
        self._slice_of: dict[str, int] = {}  # request in flight -> its slice

    def sent(self, offset: int, key: str) -> None:
        self._open[offset] = self._open.get(offset, 0) + 1
        self._slice_of[key] = offset

    def block(self, offset: int) -> None:
        """A request of this slice is left for a later run."""
        self._blocked = offset if self._blocked is None else min(self._blocked, offset)

    def read_through(self, offset: int) -> None:
        self.scanned = offset

    def committed(self, results: Sequence[Result]) -> None:
        for result in results:
            offset = self._slice_of.pop(result.key, None)
            if offset is None:
                continue
            if not result.settled:
                self.block(offset)
            self._open[offset] -= 1
            if self._open[offset] == 0:
                del self._open[offset]

    def point(self) -> int:
        """The first input row a later run still has to read."""
        point = min(self._open, default=self.scanned)
        return min(point, self.scanned, self.scanned if self._blocked is None else self._blocked)

    def sizes(self) -> tuple[int, int]:
        """(open slices, requests in flight) held now: both bounded by the requests in flight."""
        return len(self._open), len(self._slice_of)


class Pending:
    """The requests of one run still to send."""

    def __init__(
        self, source: Source, store: Store, *, retry_failed: bool, limit: int | None, remember: bool = True
    ) -> None:
        """Requests a batch may still answer are never pending: sending them would buy them twice.
        `remember` = False keeps no key of what was yielded (the batch planner records its lines
        in the store instead, so memory does not grow with the table)."""
        self.source = source
        self.remember = remember
        self.store = store
        self.retry_failed = retry_failed
        self.limit = limit
        self.claimed: set[str] = set()
        self.recent: set[str] = set()
        self.already_done = 0
        self.skipped = 0
        self.live = 0  # requests skipped because a batch may still answer them
        self._credited: dict[int, int] = {}  # slice offset -> rows `survey` counted as needing nothing
        self._surveyed = False

    def committed(self, results: Sequence[Result]) -> None:
        keys = [result.key for result in results]
        self.claimed.difference_update(keys)
        self.recent.update(keys)

    def checked_start(self, start: int, samples: int = 16) -> int:
        """`start` if the rows before it are still settled in the store, else 0.

        A resume point is only valid while the rows before it render to the same requests as
        when it was recorded; a changed context file, media file or anything else that goes
        into a request makes new keys. So a sample of those rows (the first, the last, and
        some spread between) is rendered again and looked up before the point is trusted."""
        if start <= 0:
            return 0
        n = min(samples, start)
        offsets = sorted({0, start - 1, *(start * k // n for k in range(n))})
        items = [i for o in offsets for i in self.source.requests(self.source.batch_at(o, 1))]
        keys = [i.key for i in items if isinstance(i, Request)]
        stored = self.store.lookup(keys)
        if all(settled(*stored.get(key, ("", 0))) for key in keys):
            return start
        return 0

    def _needs_nothing(self, item: Request | Skipped, stored: dict[str, tuple[str, int]]) -> str | None:
        """Why this run sends nothing for `item` (the Survey field that counts it), else None."""
        if isinstance(item, Skipped):
            return "skipped"
        status, retryable = stored.get(item.key, ("", 0))
        if status == "live":  # out in a batch that may still answer it
            return "live"
        return "settled" if settled(status, retryable or self.retry_failed) else None

    def _prepare(
        self, offset: int, *, count_live: bool = True
    ) -> tuple[list[Request | Skipped], dict[str, tuple[str, int]]]:
        items = list(self.source.requests(self.source.batch_at(offset, BATCH_ROWS)))
        keys = [i.key for i in items if isinstance(i, Request)]
        stored = self.store.lookup(keys)
        for key in self.store.live_keys(keys):  # out in a batch: neither done nor to send
            self.live += count_live
            stored[key] = ("live", 1)
        return items, stored

    def survey(self, start: int) -> Survey:
        """What a resumed run finds before it sends anything: the rows (requests, with `repeat`)
        from the first on that are settled, skipped or out in a batch, so that its display can
        start where the job is. The rows before `start` are settled (the resume point says so);
        the next SURVEY_SLICES slices are read once more, keeping one number per slice
        (`requests` then reports only the rows beyond those). Further slices are counted as the
        run reads them, so a resume of a huge table starts sending in about a second; the line
        says "at least" when rows beyond the survey were not looked at. Blocking: call it off
        the loop."""
        repeat = self.source.spec.job.repeat
        found = Survey(settled=start * repeat)
        stop = min(self.source.n_rows, start + SURVEY_SLICES * BATCH_ROWS)
        found.partial = stop < self.source.n_rows
        for offset in range(start, stop, BATCH_ROWS):
            items, stored = self._prepare(offset, count_live=False)
            quiet = 0
            for item in items:
                kind = self._needs_nothing(item, stored)
                if kind is not None:
                    setattr(found, kind, getattr(found, kind) + 1)
                    quiet += 1
            self._credited[offset] = quiet
        self._surveyed = True
        return found

    async def surveyed(self, start: int, rows_total: int) -> int:
        """On a resume, `survey` (off the loop) and say what it found in one line; the rows
        that need nothing. A first run (nothing settled in the store) reads nothing twice."""
        if not self.store.any_settled(self.source.spec.job.name):
            return 0
        found = await asyncio.get_running_loop().run_in_executor(None, self.survey, start)
        if found.settled:
            left = max(0, rows_total - found.quiet)
            also = [f"{n:,} {what}" for n, what in ((found.skipped, "skipped"), (found.live, "out in a batch")) if n]
            log.info(
                "%s: resuming: %s%s of %s rows already done, %s to send%s",
                self.source.spec.job.name,
                "at least " if found.partial else "",
                f"{found.settled:,}",
                f"{rows_total:,}",
                f"at most {left:,}" if found.partial else f"{left:,}",
                f" ({', '.join(also)})" if also else "",
            )
        return found.quiet

    async def requests(
        self, frontier: Frontier, advance: Callable[[int], None] = lambda n: None
    ) -> AsyncIterator[Request]:
        """Requests to send, in input order, from the frontier's starting row on.

        `advance(n)` is told of rows that need nothing (done, skipped, duplicates).
        """
        start = frontier.scanned
        repeat = self.source.spec.job.repeat
        if start:
            self.already_done += start * repeat  # settled when an earlier run read them
            if not self._surveyed:
                advance(start * repeat)
        sent = 0
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrunner-read")
        try:
            for offset in range(start, self.source.n_rows, BATCH_ROWS):
                self.recent.clear()
                items, stored = await loop.run_in_executor(reader, self._prepare, offset)
                quiet = 0  # rows that need nothing: done, skipped, duplicates
                for item in items:
                    kind = self._needs_nothing(item, stored)
                    if kind is not None:
                        if kind == "skipped":
                            self.skipped += 1
                        elif kind == "live":
                            frontier.block(offset)  # a later run may have to send it
                        else:
                            self.already_done += 1
                        quiet += 1
                        continue
                    assert isinstance(item, Request)
                    if item.key in self.claimed or item.key in self.recent:  # sent once per run
                        quiet += 1
                        continue
                    if self.limit is not None and sent >= self.limit:
                        return
                    if self.remember:
                        self.claimed.add(item.key)
                        frontier.sent(offset, item.key)
                    sent += 1
                    yield item
                del items, stored
                advance(max(0, quiet - self._credited.pop(offset, 0)))  # the surveyed ones were shown
                frontier.read_through(min(offset + BATCH_ROWS, self.source.n_rows))
        finally:
            reader.shutdown(wait=False)
