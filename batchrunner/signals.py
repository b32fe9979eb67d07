"""Signals and the watchdog: how a run is stopped from outside, and how it is sure to end.

First SIGINT/SIGTERM: the run stops dispatching and cancels what is in flight after
`grace_s`. Second: it cancels at once. A watchdog thread ends the process (exit 130) if the
run has not ended by then (grace_s plus a margin after the first signal, the margin after the
second), whatever the event loop is doing: the handlers are Python-level, so they run even
while a callback blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ExitCode

WATCHDOG_MARGIN_S = 5.0  # how long an orderly stop may take beyond the grace period


def hard_exit(reason: str, last_words: Callable[[], None] | None = None) -> None:
    """The watchdog's last resort: the run did not end in time, so the process ends now.
    `last_words` first keeps what is not committed yet (the writer's side file); answers
    already committed are safe; the next run resumes from the store."""
    if last_words is not None:
        try:
            last_words()
        except Exception as exc:  # the exit must happen whatever goes wrong here
            os.write(2, f"batchrunner: could not keep the unsaved answers ({exc})\n".encode())
    os.write(2, f"batchrunner: {reason}; exiting now (exit 130). Run again to resume.\n".encode())
    os._exit(int(ExitCode.INTERRUPTED))


@contextlib.contextmanager
def handled(
    interrupt: Callable[[bool], None],
    grace_s: float,
    *,
    enabled: bool,
    last_words: Callable[[], None] | None = None,
) -> Iterator[None]:
    """While inside: the first SIGINT/SIGTERM calls `interrupt(True)`, the second
    `interrupt(False)`, on the event loop; each also arms the watchdog, which calls
    `last_words` before it ends the process. Off when not `enabled` (or not on the main thread)."""
    loop = asyncio.get_running_loop()
    hits = [0]
    watchdogs: list[threading.Timer] = []

    def watchdog(after_s: float, reason: str) -> None:
        timer = threading.Timer(after_s, hard_exit, args=(reason, last_words))
        timer.daemon = True
        timer.start()
        watchdogs.append(timer)

    def on_signal(signum: int, frame: object) -> None:
        hits[0] += 1
        first = hits[0] == 1
        after = grace_s + WATCHDOG_MARGIN_S if first else WATCHDOG_MARGIN_S
        watchdog(after, f"still running {after:g} s after {'a' if first else 'a second'} signal")
        loop.call_soon_threadsafe(interrupt, first)

    previous: dict[signal.Signals, Any] = {}
    if enabled and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in watchdogs:
            timer.cancel()
