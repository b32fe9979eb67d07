"""The Batch API's injected faults: which call gets which, and how many were injected.

The counts come from `SimulatorConfig` (batch_drop_creates, batch_throttle_creates,
batch_fail_gets, batch_download_503, batch_cut_downloads) and are used up in arrival order;
scripted `FaultRule`s pick a batch line's outcome by how many times that same line body has
been answered before. Thread-safe: one lock; `reset` starts every count again.
"""

from __future__ import annotations

import threading
from typing import Any

from .batchlines import line_key
from .config import Fault, SimulatorConfig

# What a content download gets instead of its bytes.
DOWNLOAD_503 = "503"
DOWNLOAD_CUT = "cut"


class BatchFaults:
    """Which Batch API calls fail, and counters of the failures injected."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._throttled = 0
            self._dropped = 0
            self._gets_failed = 0
            self._cuts = 0
            self._downloads_failed = 0
            self._downloaded: set[str] = set()
            self._arrivals: dict[str, int] = {}

    def counters(self) -> dict[str, int]:
        """creates_dropped, creates_throttled (every 429 to a create), gets_failed, downloads_failed."""
        with self._lock:
            return {
                "creates_dropped": self._dropped,
                "creates_throttled": self._throttled,
                "gets_failed": self._gets_failed,
                "downloads_failed": self._downloads_failed,
            }

    def throttle_create(self) -> bool:
        """True when this POST /batches is one of the first `batch_throttle_creates`."""
        with self._lock:
            scripted = self._throttled < self.config.batch_throttle_creates
            if scripted:
                self._throttled += 1
            return scripted

    def count_throttled(self) -> None:
        """Count a create refused with 429 for a reason of its own (the test-model limit)."""
        with self._lock:
            self._throttled += 1

    def drop_create(self) -> bool:
        """True when the answer to this (successful) create is to be lost."""
        with self._lock:
            drop = self._dropped < self.config.batch_drop_creates
            if drop:
                self._dropped += 1
            return drop

    def fail_get(self) -> bool:
        """True when this GET /batches/{id} is one of the first `batch_fail_gets` (503)."""
        with self._lock:
            fail = self._gets_failed < self.config.batch_fail_gets
            if fail:
                self._gets_failed += 1
            return fail

    def download(self, file_id: str) -> str | None:
        """DOWNLOAD_503, DOWNLOAD_CUT or None (send the content) for one content download."""
        with self._lock:
            first = file_id not in self._downloaded
            self._downloaded.add(file_id)
            fault = None
            if first and self.config.batch_download_503:
                fault = DOWNLOAD_503
            elif self._cuts < self.config.batch_cut_downloads:
                self._cuts += 1
                fault = DOWNLOAD_CUT
            if fault is not None:
                self._downloads_failed += 1
            return fault

    def line_fault(self, prompt: str, body: dict[str, Any]) -> Fault | None:
        """The scripted fault of this arrival of a batch line, as app.py picks for online calls:
        the first rule whose `match` is in the last user message decides."""
        for rule in self.config.faults:
            if rule.match in prompt:
                key = line_key(body)
                with self._lock:
                    arrival = self._arrivals.get(key, 0)
                    self._arrivals[key] = arrival + 1
                return rule.fault_at(arrival)
        return None
