"""What the batch-mode tests share: a clock that jumps instead of sleeping, a simulator on it,
and a job spec in batch mode."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from helpers import write_job

from batchrunner.batchrun import Clock


class JumpClock:
    """Time that moves only when the code under test waits: `sleep(s)` adds s at once."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    def clock(self) -> Clock:
        return Clock(self.time, self.sleep)


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"item number {i}"} for i in range(n)]


def batch_job(folder: Path, n: int = 25, *, batch: dict[str, Any] | None = None, **sections: Any) -> Path:
    """A job spec in batch mode over n rows; polls every 60 s of the clock, at most 600 s."""
    overrides: dict[str, Any] = {
        "api": {"mode": "batch"},
        "batch": {"poll_interval_s": 60, "poll_max_s": 600, **(batch or {})},
        "parameters": {"temperature": 0.5, "max_tokens": 32, "seed": 1, "enable_thinking": False},
        **sections,
    }
    return write_job(folder, rows(n), overrides)
