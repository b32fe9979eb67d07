"""The simulator's counters and request log, shared between the serving loop and other threads."""

from __future__ import annotations

import threading
from typing import Any

from .record import RequestRecord
from .reply import Answer
from .validate import Call


class Ledger:
    """Counts of requests by status, throttling, faults and answered tokens, plus the log.

    Every method may be called from any thread; `cond` is notified on each valid answer.
    """

    def __init__(self, keep_log: bool) -> None:
        self.keep_log = keep_log
        self.cond = threading.Condition()
        self.log: list[RequestRecord] = []
        self._held = 0  # requests being served now (not reset by clear: they are still there)
        self.clear()

    def clear(self) -> None:
        """Forget every count and the log."""
        with self.cond:
            self.log.clear()
            self._requests = 0
            self._answered = 0
            self._throttled = 0
            self._input_tokens = 0
            self._output_tokens = 0
            self._by_status: dict[str, int] = {}
            self._faults: dict[str, int] = {}

    def record(
        self,
        status: int,
        request_id: str,
        body: dict[str, Any] | None,
        key: str,
        call: Call | None,
        fault: str | None,
        arrived: float,
        answer: Answer | None = None,
    ) -> None:
        """Count one finished request; `answer` is given only for a valid 200 answer."""
        with self.cond:
            if answer is not None:
                self._answered += 1
                self._input_tokens += answer.input_tokens
                self._output_tokens += answer.output_tokens
                self.cond.notify_all()
            self._requests += 1
            label = str(status)
            self._by_status[label] = self._by_status.get(label, 0) + 1
            if status == 429 and fault is None:
                self._throttled += 1
            if fault is not None:
                self._faults[fault] = self._faults.get(fault, 0) + 1
            if self.keep_log:
                model = body.get("model") if body is not None else None
                self.log.append(
                    RequestRecord(
                        arrived,
                        model if isinstance(model, str) else None,
                        call.prompt if call is not None else "",
                        status,
                        request_id,
                        key,
                        fault,
                    )
                )

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_status ("0" = dropped), throttled, faults_injected, plus
        answered (valid 200 answers) and the input/output tokens of those answers."""
        with self.cond:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "throttled": self._throttled,
                "faults_injected": dict(self._faults),
                "answered": self._answered,
                "input_tokens": self._input_tokens,
                "output_tokens": self._output_tokens,
            }

    def enter(self) -> None:
        """A request arrived and is being served."""
        with self.cond:
            self._held += 1
            self.cond.notify_all()

    def leave(self) -> None:
        """A request was answered, refused, dropped, or its client went away."""
        with self.cond:
            self._held -= 1
            self.cond.notify_all()

    def wait_held(self, n: int, timeout: float) -> bool:
        """Block until at least `n` requests are being served at once; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: self._held >= n, timeout)

    def wait_for(self, n: int, timeout: float) -> bool:
        """Block until at least `n` valid answers were counted; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: self._answered >= n, timeout)
