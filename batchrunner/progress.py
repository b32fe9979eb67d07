"""Progress displays: the callbacks a run makes, a tqdm bar on a terminal, log lines for cron."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from .records import Result, RunCounts

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("batchrunner.progress")


class Progress:
    """Callbacks a display can implement; the default does nothing."""

    def start(self, total_rows: int, counts: RunCounts) -> None: ...
    def advance(self, n: int) -> None: ...
    def row_finished(self, result: Result) -> None: ...
    def batch_state(self, text: str) -> None: ...  # batch mode: files by state, lines, money, next poll
    def close(self) -> None: ...


def _eta(remaining: int, rate: float) -> str:
    if rate <= 0:
        return "?"
    seconds = int(remaining / rate)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class BarProgress(Progress):
    """A tqdm bar: rows done, ok / failed, tokens, rate and ETA."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.bar: tqdm[Any] | None = None
        self.counts = RunCounts()
        self._last = 0.0

    def start(self, total_rows: int, counts: RunCounts) -> None:
        from tqdm import tqdm

        self.counts = counts
        self.bar = tqdm(total=total_rows, unit="row", desc=self.job, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def row_finished(self, result: Result) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            c = self.counts
            self.bar.set_postfix(
                ok=c.ok,
                failed=c.failed,
                tokens=c.input_tokens + c.output_tokens,
                cost=c.cost_text(4),
                retries=c.retries,
                refresh=False,
            )

    def batch_state(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogProgress(Progress):
    """One plain line every `every_s` seconds on the `batchrunner.progress` logger."""

    def __init__(self, job: str, *, every_s: float = 10.0) -> None:
        self.job = job
        self.every_s = every_s
        self.total = 0
        self.done = 0
        self.counts = RunCounts()
        self._t0 = time.monotonic()
        self._last = self._t0
        self._batch_last = 0.0
        self._batch_text = ""

    def start(self, total_rows: int, counts: RunCounts) -> None:
        self.total, self.counts = total_rows, counts
        self._t0 = self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n

    def row_finished(self, result: Result) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.line()

    def batch_state(self, text: str) -> None:
        now = time.monotonic()
        if text != self._batch_text and (now - self._batch_last >= self.every_s or "next poll" not in text):
            self._batch_last, self._batch_text = now, text
            log.info("%s: %s", self.job, text)

    def line(self) -> None:
        c = self.counts
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (c.ok + c.failed) / elapsed
        fields = {
            "job": self.job,
            "done": self.done,
            "total": self.total,
            "ok": c.ok,
            "failed": c.failed,
            "retries": c.retries,
            "tokens": c.input_tokens + c.output_tokens,
            "cost_usd": None if c.unpriced and not c.priced else round(c.cost_usd, 6),
            "rows_per_s": round(rate, 2),
        }
        log.info(
            "%s: %d/%d rows done; this run ok %d, failed %d, retries %d, tokens %d, cost %s, %.1f rows/s, ETA %s",
            self.job,
            self.done,
            self.total,
            c.ok,
            c.failed,
            c.retries,
            c.input_tokens + c.output_tokens,
            c.cost_text(),
            rate,
            _eta(self.total - self.done, rate),
            extra={"fields": fields},
        )

    def close(self) -> None:
        self.line()


class Both(Progress):
    """Feeds two displays."""

    def __init__(self, *displays: Progress) -> None:
        self.displays = displays

    def start(self, total_rows: int, counts: RunCounts) -> None:
        for d in self.displays:
            d.start(total_rows, counts)

    def advance(self, n: int) -> None:
        for d in self.displays:
            d.advance(n)

    def row_finished(self, result: Result) -> None:
        for d in self.displays:
            d.row_finished(result)

    def batch_state(self, text: str) -> None:
        for d in self.displays:
            d.batch_state(text)

    def close(self) -> None:
        for d in self.displays:
            d.close()


def for_terminal(job: str, *, quiet: bool = False, tty: bool | None = None) -> Progress:
    """A bar on a terminal (unless quiet), and progress lines on the `batchrunner.progress` logger."""
    on_tty = sys.stderr.isatty() if tty is None else tty
    lines = LogProgress(job)
    return Both(BarProgress(job), lines) if on_tty and not quiet else lines
