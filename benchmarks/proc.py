"""Benchmark processes: the simulator in its own process, job children, and their rusage.

Every process the benchmark starts is a direct child, reaped with `os.wait4` so that its own
CPU time and peak RSS are read exactly (never mixed with the simulator's). Every wait has a
deadline, and every child is held by a context manager that kills it on the way out, so an
error, a timeout or an interrupt never leaves one running. Children stay in the benchmark's
process group: whoever kills that group takes them all.

This module never imports batchrunner (the parent's RSS is inherited by each child's peak
RSS figure, so the parent stays small); it only finds where the library lives.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

API_KEY = "sk-bench"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parent.parent


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


def library_root() -> Path | None:
    """The folder that holds the `batchrunner` package this interpreter would import (found
    without importing it), or None when it is not importable."""
    spec = importlib.util.find_spec("batchrunner")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent.parent


def cpu_wait_s(pid: int | str = "self") -> float | None:
    """Seconds the main thread of process `pid` has spent ready to run but waiting for a CPU
    (the second field of /proc/PID/schedstat): on a shared machine, how much of a run the
    process could not run at all. None where that is unreadable."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text(encoding="ascii").split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def child_env(base_url: str | None = None) -> dict[str, str]:
    """The environment of a benchmark child: this checkout (for `benchmarks`) and the library
    the parent imports first on the path, the bench key, and the simulator's URL when given."""
    env = dict(os.environ)
    roots = [str(REPO_ROOT)]
    library = library_root()
    if library is not None and library != REPO_ROOT:
        roots.append(str(library))
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
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
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            # Already reaped: by a wait4 whose result was lost to an exception raised right
            # after it (a signal handler's), or by Popen. Its exit code and figures are gone.
            proc.returncode = -1
            return Exited(-1, time.monotonic() - started, 0.0, 0.0, 0.0)
        if pid == proc.pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code
            return Exited(code, time.monotonic() - started, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


class Child:
    """One started `python ARGS...` child. As a context manager it is always ended on exit:
    killed if still running, then reaped."""

    def __init__(self, proc: subprocess.Popen[bytes], started: float, what: str) -> None:
        self.proc = proc
        self.started = started
        self.what = what
        self.exited: Exited | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout_s: float) -> Exited:
        """Reap the child; kill it (and raise BenchError) if it overstays `timeout_s`."""
        if self.exited is None:
            self.exited = reap(self.proc, self.started, timeout_s)
        if self.exited is None:
            self.stop()
            msg = f"{self.what} did not finish within {timeout_s:.0f}s and was killed"
            raise BenchError(msg)
        return self.exited

    def stop(self, grace_s: float = 0.0) -> Exited | None:
        """End the child if it still runs: SIGTERM and `grace_s` seconds to exit when `grace_s`
        is positive, SIGKILL after that (even if the wait is interrupted); then reap it."""
        try:
            if self.exited is None and grace_s > 0:
                self.proc.send_signal(signal.SIGTERM)  # SIGINT may be ignored in a background job
                self.exited = reap(self.proc, self.started, grace_s)
        finally:
            if self.exited is None:
                self.proc.kill()
                self.exited = reap(self.proc, self.started, STOP_TIMEOUT_S)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return self.exited

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def launch(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path, what: str = "", pipe_stdout: bool = False
) -> Child:
    """Start `python args...`, stderr (and stdout unless `pipe_stdout`) going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else sink,
            stderr=sink,
        )
    return Child(proc, started, what or f"`python {' '.join(args[:3])} ...`")


def run_child(args: list[str], *, env: dict[str, str], cwd: Path, log: Path, timeout_s: float) -> Exited:
    """Run `python args...` to its end (bounded by `timeout_s`) and return its rusage."""
    with launch(args, env=env, cwd=cwd, log=log) as child:
        return child.wait(timeout_s)


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


class SimulatorProcess:
    """`python -m batchrunner simulate` on 127.0.0.1 in its own process, for one scenario.

    A context manager; `base_url` is what DASHSCOPE_BASE_URL is set to. On exit - also when
    start-up fails or the block raises - the simulator gets SIGTERM, then SIGKILL if it
    lingers; `exited` then holds its own CPU time.
    """

    def __init__(self, log: Path, *, rpm: int | None = None, latency_ms: float = 0.0) -> None:
        self.log = log
        self.rpm = rpm
        self.latency_ms = latency_ms
        self.base_url = ""
        self.port = 0
        self.cpu_wait_s: float | None = None  # from ready to exit (see `cpu_wait_s`)
        self._waited_before: float | None = None
        self._child: Child | None = None

    @property
    def exited(self) -> Exited | None:
        return self._child.exited if self._child is not None else None

    def __enter__(self) -> Self:
        args = ["-m", "batchrunner", "simulate", "--host", "127.0.0.1", "--port", "0"]
        if self.rpm is not None:
            args += ["--rpm", str(self.rpm)]
        args += ["--latency-ms", str(self.latency_ms)]
        self._child = launch(
            args, env=child_env(), cwd=self.log.parent, log=self.log, what="the simulator", pipe_stdout=True
        )
        try:
            line = self._ready_line(self._child)
            url = next((w for w in line.split() if w.startswith("http://")), "")
            if not url:
                msg = f"unexpected simulator ready line: {line!r}"
                raise BenchError(msg)
        except BaseException:
            self._child.stop()
            raise
        self.base_url = url
        self.port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self._waited_before = cpu_wait_s(self._child.pid)
        return self

    def _ready_line(self, child: Child) -> str:
        stdout = child.proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
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

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._child is not None:
            waited = cpu_wait_s(self._child.pid) if self._child.exited is None else None
            if waited is not None and self._waited_before is not None:
                self.cpu_wait_s = waited - self._waited_before
            self._child.stop(grace_s=STOP_TIMEOUT_S)
