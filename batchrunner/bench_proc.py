"""Benchmark processes: the simulator in its own process, job children, and their rusage.

Every process the benchmark starts is a direct child, reaped with `os.wait4` so that its own
CPU time and peak RSS are read exactly (never mixed with the simulator's). Every wait has a
deadline; a child that overstays is killed and reported as such.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import batchrunner

API_KEY = "sk-bench"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PACKAGE_ROOT = Path(batchrunner.__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark step could not be carried out (a child failed, timed out or never got ready)."""


@dataclass(frozen=True)
class Exited:
    """A reaped child: exit code, wall time from launch to exit, its own CPU and peak RSS."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds of the whole child process (all its threads)."""
        return self.user_s + self.sys_s


def child_env(base_url: str | None = None) -> dict[str, str]:
    """The environment of a benchmark child: this package first on the path, the bench key,
    and the simulator's URL when given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["DASHSCOPE_API_KEY"] = API_KEY
    env["PYTHONUNBUFFERED"] = "1"
    if base_url is not None:
        env["DASHSCOPE_BASE_URL"] = base_url
    else:
        env.pop("DASHSCOPE_BASE_URL", None)
    return env


def reap(proc: subprocess.Popen[bytes], started: float, timeout_s: float) -> Exited | None:
    """Wait up to `timeout_s` for `proc` with os.wait4; None if it is still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code
            return Exited(code, time.monotonic() - started, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def reap_or_kill(proc: subprocess.Popen[bytes], started: float, timeout_s: float, what: str) -> Exited:
    """`reap`, killing the child (and raising BenchError) when it overstays `timeout_s`."""
    done = reap(proc, started, timeout_s)
    if done is not None:
        return done
    proc.kill()
    reap(proc, started, STOP_TIMEOUT_S)
    msg = f"{what} did not finish within {timeout_s:.0f}s and was killed"
    raise BenchError(msg)


def launch(args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start `python args...` with stdout and stderr going to `log`; returns (process, start time)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    return proc, started


def run_child(args: list[str], *, env: dict[str, str], cwd: Path, log: Path, timeout_s: float) -> Exited:
    """Run `python args...` to its end (bounded by `timeout_s`) and return its rusage."""
    proc, started = launch(args, env=env, cwd=cwd, log=log)
    return reap_or_kill(proc, started, timeout_s, f"`python {' '.join(args[:3])} ...`")


class Stats:
    """GET/POST on the simulator's control endpoints over one keep-alive connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: http.client.HTTPConnection | None = None

    def _call(self, method: str, path: str) -> dict[str, Any]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self._conn.request(method, path)
                response = self._conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    msg = f"simulator {path}: HTTP {response.status}"
                    raise BenchError(msg)
                return dict(json.loads(payload))
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get(self) -> dict[str, Any]:
        """The simulator's counters (requests, answered, throttled, by_status, ...)."""
        return self._call("GET", "/_simulator/stats")

    def reset(self) -> None:
        """Zero the simulator's counters and rate windows."""
        self._call("POST", "/_simulator/reset")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class SimulatorProcess:
    """`python -m batchrunner simulate` on 127.0.0.1 in its own process, for one scenario.

    Use as a context manager; `base_url` is what DASHSCOPE_BASE_URL is set to. On exit the
    simulator gets SIGTERM, then SIGKILL if it lingers; `exited` then holds
    its own CPU time.
    """

    log: Path
    rpm: int | None = None
    latency_ms: float = 0.0
    base_url: str = ""
    port: int = 0
    exited: Exited | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _started: float = 0.0

    def __enter__(self) -> Self:
        args = [sys.executable, "-m", "batchrunner", "simulate", "--host", "127.0.0.1", "--port", "0"]
        if self.rpm is not None:
            args += ["--rpm", str(self.rpm)]
        args += ["--latency-ms", str(self.latency_ms)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as errors:
            self._started = time.monotonic()
            self._proc = subprocess.Popen(
                args,
                env=child_env(),
                cwd=self.log.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        try:
            line = self._ready_line()
        except BaseException:
            self._stop()
            raise
        url = next((w for w in line.split() if w.startswith("http://")), "")
        if not url:
            self._stop()
            msg = f"unexpected simulator ready line: {line!r}"
            raise BenchError(msg)
        self.base_url = url
        self.port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return self

    def _ready_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT_S
        buffer = b""
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"the simulator printed no ready line within {READY_TIMEOUT_S:.0f}s (see {self.log})"
                raise BenchError(msg)
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    msg = f"the simulator exited before it was ready (see {self.log})"
                    raise BenchError(msg)
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode("utf-8", "replace")

    def stats(self) -> Stats:
        """A new control-endpoint client for this simulator (one per thread)."""
        return Stats("127.0.0.1", self.port)

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)  # SIGINT may be ignored in a background job
        done = reap(proc, self._started, STOP_TIMEOUT_S)
        if done is None:
            proc.kill()
            done = reap(proc, self._started, STOP_TIMEOUT_S)
        self.exited = done
        if proc.stdout is not None:
            proc.stdout.close()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()


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
