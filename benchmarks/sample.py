"""Watching a run from outside: the simulator's counters and the job child's CPU, sampled
on a thread, and the rates and CPU per request they show.

The simulator keeps counts but no timestamps, so the rate it saw is read from samples taken
every 50 ms while the run goes on: each sample is an exact count at a known moment.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .proc import STOP_TIMEOUT_S, BenchError, SimulatorProcess, Stats

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of a running process, from /proc (None if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


@dataclass(frozen=True)
class Sample:
    """One look at the simulator's counters at monotonic time `t`, with the job child's CPU
    seconds at that moment when known."""

    t: float
    requests: int
    answered: int
    throttled: int
    cpu_s: float | None = None


class StatsSampler:
    """Polls the simulator's counters every `interval_s` on a thread, while a run goes on.

    The simulator keeps no timestamps, so the rate it saw is taken from these samples:
    each is an exact count at a known moment (see `steady_window`). When `pid` is given,
    each sample also reads that child's CPU time, so CPU per request can be taken over the
    same steady window, without the run's fixed start-up and export costs.
    """

    def __init__(
        self, sim: SimulatorProcess, pid: int | None = None, interval_s: float = 0.05, max_s: float = 1800.0
    ) -> None:
        self.sim = sim
        self.pid = pid
        self.interval_s = interval_s
        self.max_samples = int(max_s / interval_s)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-stats", daemon=True)

    def _loop(self) -> None:
        stats = self.sim.stats()
        try:
            while not self._stop.is_set() and len(self.samples) < self.max_samples:
                self.take(stats)
                self._stop.wait(self.interval_s)
        finally:
            stats.close()

    def take(self, stats: Stats, *, with_cpu: bool = True) -> None:
        """Append one sample (a failed poll is skipped)."""
        cpu = process_cpu_s(self.pid) if with_cpu and self.pid is not None else None
        try:
            s = stats.get()
        except (OSError, http.client.HTTPException, BenchError):
            return
        self.samples.append(Sample(time.monotonic(), int(s["requests"]), int(s["answered"]), int(s["throttled"]), cpu))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)
        stats = self.sim.stats()
        try:
            self.take(stats, with_cpu=False)
        finally:
            stats.close()


@dataclass(frozen=True)
class Steady:
    """What the samples show of a run, seen from the simulator.

    arrival_rate_per_s: requests admitted per second between the first and the last answered
    one (answers follow arrivals by the fixed latency, which cancels out) - the pace a rate
    limiter holds. throughput_per_s: answers per second from the first arrival (first answer
    less the latency) to the last answer - how full a pool keeps the pipe when calls are long.
    observed_s: first to last answer. cpu_ms_per_answer: the job child's CPU per answer over
    the steady part (start-up and the final export excluded); None when not measured.
    """

    arrival_rate_per_s: float | None
    throughput_per_s: float | None
    observed_s: float
    cpu_ms_per_answer: float | None


def steady_window(samples: list[Sample], latency_s: float) -> Steady:
    """Rates and CPU per answer from `samples` (see `Steady`).

    A sample's count is exact at its time, so the moment a count was first reached lies
    between two samples: its midpoint is used, which blurs each end by at most half a
    polling interval.
    """
    none = Steady(None, None, 0.0, None)
    if not samples:
        return none
    final = samples[-1].answered
    first = next((i for i, s in enumerate(samples) if s.answered > 0), None)
    reached = next((i for i, s in enumerate(samples) if s.answered >= final), None)
    if first is None or reached is None or final < 2:
        return none
    a, at = samples[first], samples[reached]
    begin = (samples[first - 1].t + a.t) / 2 if first > 0 else a.t
    end = (samples[reached - 1].t + at.t) / 2 if reached > 0 else at.t
    span = end - begin
    if span <= 0.05:
        return Steady(None, None, span, None)
    below = samples[reached - 1] if reached > 0 else a
    cpu = None
    if a.cpu_s is not None and below.cpu_s is not None and below.answered > a.answered:
        cpu = (below.cpu_s - a.cpu_s) / (below.answered - a.answered) * 1000
    return Steady((final - 1) / span, final / (span + latency_s), span, cpu)
