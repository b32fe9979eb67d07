"""Progress displays: the callbacks a run makes, a tqdm bar on a terminal, log lines for cron."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .pricing import format_usd
from .records import Result, RunCounts

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("batchrunner.progress")


class Progress:
    """Callbacks a display can implement; the default does nothing."""

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        """`done`: rows that needed nothing when the run began (settled by earlier runs, skipped)."""

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


def _rate(counts: RunCounts, elapsed: float) -> float:
    """Rows this run finished (ok or failed) per second since it started: rows that needed
    nothing (already done, skipped, duplicates) are not throughput, and neither is a burst."""
    return (counts.ok + counts.failed) / max(elapsed, 1e-9)


def _short(n: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def fit(fields: Sequence[tuple[str, str]], width: int | None) -> str:
    """The fields (each as (full, abbreviated), most important first) joined by ", " in at most
    `width` characters (None: no limit). Abbreviates from the least important field up, then
    drops from the least important up; a field is shown whole or not at all."""
    parts = [full for full, _ in fields]

    def joined() -> str:
        return ", ".join(p for p in parts if p)

    if width is None or len(joined()) <= width:
        return joined()
    for i in reversed(range(len(parts))):
        parts[i] = fields[i][1]
        if len(joined()) <= width:
            return joined()
    for i in reversed(range(len(parts))):
        parts[i] = ""
        if len(joined()) <= width:
            return joined()
    return ""


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class BarProgress(Progress):
    """A tqdm bar: rows done (from the rows already settled on a resume), then this run's
    ETA, cost, failed, tokens, rate, ok and retries, fitted to the terminal's width."""

    def __init__(
        self,
        job: str,
        *,
        file: TextIO | None = None,
        ncols: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.bar: tqdm[Any] | None = None
        self.counts = RunCounts()
        self.file, self.ncols, self.clock = file, ncols, clock
        self._t0 = self._last = 0.0

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        from tqdm import tqdm

        self.counts = counts
        self._t0 = self._last = self.clock()
        self.bar = tqdm(
            total=total_rows,
            initial=done,
            unit="row",
            desc=self.job,
            file=self.file,
            ncols=self.ncols,
            dynamic_ncols=self.ncols is None,
            bar_format=BAR_FORMAT,
        )

    def advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def fields(self) -> list[tuple[str, str]]:
        """The postfix's fields, most important first: (full, abbreviated)."""
        c = self.counts
        rate = _rate(c, self.clock() - self._t0)
        eta = _eta(int(self.bar.total - self.bar.n), rate) if self.bar is not None and self.bar.total else "?"
        cost = c.cost_text(4)
        tokens = c.input_tokens + c.output_tokens
        return [
            (f"ETA {eta}", f"~{eta}"),
            (
                f"cost={cost}",
                (f"${format_usd(c.cost_pusd, 4)}" + ("+?" if c.unpriced else ""))
                if c.priced or not c.unpriced
                else cost,
            ),
            (f"failed={c.failed:,}", f"fail={c.failed}"),
            (f"tokens={tokens:,}", f"tok={_short(tokens)}"),
            (f"{rate:.1f} rows/s", f"{rate:.0f}/s"),
            (f"ok={c.ok:,}", f"ok={_short(c.ok)}"),
            (f"retries={c.retries:,}", f"retry={_short(c.retries)}"),
        ]

    def room(self) -> int | None:
        """Characters left for the postfix on the bar's line (None: no width to fit)."""
        if self.bar is None:
            return None
        d = self.bar.format_dict
        if not d.get("ncols"):
            return None
        bare = self.bar.format_meter(**{**d, "ncols": None, "postfix": None})  # with a 10-column bar
        return int(d["ncols"]) - len(bare) - len(", ")

    def show(self, fields: Sequence[tuple[str, str]]) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(fit(fields, self.room()), refresh=False)

    def row_finished(self, result: Result) -> None:
        if self.bar is None:
            return
        now = self.clock()
        if now - self._last >= 0.5:
            self._last = now
            self.show(self.fields())
        self.bar.update(1)

    def batch_state(self, text: str) -> None:
        parts = text.split("; ")
        self.show([(part, part) for part in parts])

    def close(self) -> None:
        if self.bar is not None:
            if self.counts.ok or self.counts.failed:
                self.show(self.fields())
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

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        self.total, self.counts, self.done = total_rows, counts, done
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
        rate = _rate(c, time.monotonic() - self._t0)
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

    def start(self, total_rows: int, counts: RunCounts, done: int = 0) -> None:
        for d in self.displays:
            d.start(total_rows, counts, done)

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
