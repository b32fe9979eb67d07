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
