"""What a run still has to send, and where the next run may start reading.

`Pending.requests()` reads the input a slice at a time (off the event loop), looks each
slice's request keys up in the store, and yields only the requests not settled yet (settled =
answered ok, or failed for a reason a rerun would not fix). Identical requests in one table are
sent once: `claimed` holds the keys sent and not yet committed, `recent` the keys committed
since the current slice was looked up.

The resume point: a slice is done once every request yielded from it has been committed as
settled. The first slice that is not done (or not yet read) is written to the run's row in
the store whenever it moves, so that a run killed at 90% leaves a point near 90%, and the next
run of the same spec over the same input file starts reading there instead of at row 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from .source import Request, Skipped, Source
from .store import Store

BATCH_ROWS = 5000


class Frontier:
    """The first input row that a later run still has to read."""

    def __init__(self, start: int, save: Callable[[int], None]) -> None:
        self.scanned = start  # every slice before this offset has been read in full
        self._open: dict[int, int] = {}  # slice offset -> requests yielded and not yet settled
        self._blocked: set[int] = set()  # slices with a request that a rerun will send again
        self._slice_of: dict[str, int] = {}
        self._save = save
        self._saved: int | None = None

    def sent(self, offset: int, key: str) -> None:
        self._open[offset] = self._open.get(offset, 0) + 1
        self._slice_of[key] = offset

    def read_through(self, offset: int) -> None:
        self.scanned = offset
        self.save()

    def committed(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            offset = self._slice_of.pop(row["key"], None)
            if offset is None:
                continue
            if row["status"] == "failed" and row.get("retryable"):
                self._blocked.add(offset)
            self._open[offset] -= 1
            if self._open[offset] == 0:
                del self._open[offset]
        self.save()

    @property
    def point(self) -> int:
        return min([self.scanned, *self._open, *self._blocked])

    def save(self) -> None:
        point = self.point
        if point != self._saved:
            self._saved = point
            self._save(point)


class Pending:
    """The requests of one run still to send."""

    def __init__(self, source: Source, store: Store, *, retry_failed: bool, limit: int | None) -> None:
        self.source = source
        self.store = store
        self.retry_failed = retry_failed
        self.limit = limit
        self.claimed: set[str] = set()
        self.recent: set[str] = set()
        self.already_done = 0
        self.skipped = 0

    def committed(self, rows: list[dict[str, Any]]) -> None:
        keys = [row["key"] for row in rows]
        self.claimed.difference_update(keys)
        self.recent.update(keys)

    def _prepare(self, offset: int) -> tuple[list[Request | Skipped], dict[str, tuple[str, int]]]:
        items = list(self.source.requests(self.source.batch_at(offset, BATCH_ROWS)))
        return items, self.store.lookup([i.key for i in items if isinstance(i, Request)])

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
            advance(start * repeat)
        sent = 0
        for offset in range(start, self.source.n_rows, BATCH_ROWS):
            self.recent.clear()
            items, stored = await asyncio.to_thread(self._prepare, offset)
            settled = 0
            for item in items:
                if isinstance(item, Skipped):
                    self.skipped += 1
                    settled += 1
                    continue
                status, retryable = stored.get(item.key, ("", 0))
                if status == "ok" or (status == "failed" and not (self.retry_failed or retryable)):
                    self.already_done += 1
                    settled += 1
                    continue
                if item.key in self.claimed or item.key in self.recent:  # sent once per run
                    settled += 1
                    continue
                if self.limit is not None and sent >= self.limit:
                    return
                self.claimed.add(item.key)
                frontier.sent(offset, item.key)
                sent += 1
                yield item
            advance(settled)
            frontier.read_through(min(offset + BATCH_ROWS, self.source.n_rows))
