"""S5's child: one job, measured over its whole process tree, on a local Ray or without one.

    python -m benchmarks.raychild SPEC RESULT_JSON [--ray-cpus K]

With `--ray-cpus K` it starts a new local Ray instance of K CPUs in this process
(`ray.init(address="local", num_cpus=K)`, never a cluster found on the machine) and then
calls `batchrunner.run_job(SPEC)`, whose driver reuses that Ray; without it, it just runs the
job (e.g. `[limits] processes = 2`).

Ray's daemons (GCS, raylet, agents) and its worker processes are descendants of this
process, so the CPU of everything the job needed is read over the process tree: a thread
scans /proc every 0.1 s and keeps, for every descendant it ever saw (pid and start time),
the last user+system time it read in /proc/PID/stat (its own time only, never its reaped
children's, so nothing counts twice). The raylet reaps its workers without passing their
time on (their rusage is lost at exit), hence the sampling; what a descendant spends after
its last scan is missed (at most 0.1 s of it). This process's own CPU (less the scanning
thread's, which is reported apart) is added. This process makes itself a child subreaper
(Linux prctl), so a process whose parent dies is re-parented here and stays in the tree.
Points are taken before Ray, when Ray is started, when the job is done, and when every
descendant has exited after `ray.shutdown()` (bounded wait; what is left is then killed).
The simulator is another process, not counted here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
SCAN_S = 0.1
SETTLE_S = 15.0  # the longest wait for Ray's processes to exit after ray.shutdown()
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, int, float] | None:
    """(parent pid, command name, start time, own user+system CPU s) of `pid`."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[k] is field k + 3 of proc(5)
    return int(fields[1]), name, int(fields[19]), (int(fields[11]) + int(fields[12])) / TICK


def descendants() -> dict[tuple[int, int], tuple[str, float]]:
    """Every live descendant of this process: (pid, start time) -> (command name, own CPU s)."""
    table: dict[int, tuple[int, str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                table[int(entry)] = found
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    out: dict[tuple[int, int], tuple[str, float]] = {}
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        _, name, started, cpu = table[pid]
        out[pid, started] = (name, cpu)
        todo.extend(children.get(pid, []))
    return out


class TreeSampler:
    """A thread that scans the process tree every SCAN_S seconds; `point()` reads it now."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}
        self.live: set[tuple[int, int]] = set()
        self.scan_cpu_s = 0.0  # CPU of the scans (this process's, taken off its figure)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.scan()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SCAN_S):
            self.scan()

    def scan(self) -> None:
        with self._lock:
            t0 = time.thread_time()
            now = descendants()
            self.seen.update(now)
            self.live = set(now)
            self.scan_cpu_s += time.thread_time() - t0

    def point(self) -> dict[str, Any]:
        """The tree's CPU so far: this process (less the scans) and every descendant seen."""
        self.scan()
        me = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            by_name: dict[str, float] = {}
            for name, cpu in self.seen.values():
                by_name[name] = by_name.get(name, 0.0) + cpu
            self_cpu = me.ru_utime + me.ru_stime - self.scan_cpu_s
            return {
                "t": time.monotonic(),
                "self_cpu_s": self_cpu,
                "others_cpu_s": sum(by_name.values()),
                "tree_cpu_s": self_cpu + sum(by_name.values()),
                "scan_cpu_s": self.scan_cpu_s,
                "live": len(self.live),
                "seen": len(self.seen),
                "by_name": {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:10]},
            }

    def settle(self, within_s: float) -> None:
        """Wait (bounded) until no descendant is left, or the ones left have not changed for
        a second (e.g. multiprocessing's resource tracker, which exits with this process)."""
        end = time.monotonic() + within_s
        stable_since, last = time.monotonic(), set(self.live)
        while self.live and time.monotonic() < end:
            _reap()
            time.sleep(SCAN_S)  # polling exits of processes this one has no handle on
            self.scan()
            if self.live != last:
                stable_since, last = time.monotonic(), set(self.live)
            elif time.monotonic() - stable_since > 1.0:
                return

    def end_leftovers(self) -> int:
        """SIGKILL every descendant still alive (all started by this job); how many there were."""
        left = [pid for pid, _ in descendants()]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline and _reap():
            time.sleep(0.02)
        return len(left)


def _reap() -> bool:
    """Reap the children that exited (orphans re-parented here among them); False when there
    is no child left at all."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        return False
    return True


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {"wall_s": b["t"] - a["t"], "cpu_s": b["tree_cpu_s"] - a["tree_cpu_s"]}


def run(spec: Path, ray_cpus: int | None) -> dict[str, Any]:
    from batchrunner import run_job

    libc = ctypes.CDLL(None, use_errno=True)
    subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    ray: Any = None
    with TreeSampler() as tree:
        start = tree.point()
        if ray_cpus is not None:
            import ray

            ray.init(address="local", num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        ready = tree.point()
        summary = run_job(spec, handle_signals=True)
        done = tree.point()
        if ray is not None:
            ray.shutdown()
        tree.settle(SETTLE_S)
        end = tree.point()
    leftover = tree.end_leftovers()
    c = summary.counts
    return {
        "ray_cpus": ray_cpus,
        "subreaper": subreaper,
        "ray_start": _delta(start, ready),
        "job": _delta(ready, done),
        "shutdown": _delta(done, end),
        "total": _delta(start, end),
        "driver_job_cpu_s": done["self_cpu_s"] - ready["self_cpu_s"],
        "points": {"start": start, "ready": ready, "done": done, "end": end},
        "leftover": leftover,
        "exit_code": summary.exit_code,
        "status": summary.status,
        "message": summary.message,
        "sent": c.sent,
        "ok": c.ok,
        "failed": c.failed,
        "attempts": c.attempts,
        "throttled": c.throttled,
        "table": summary.table,
        "output": str(summary.output_path) if summary.output_path else None,
        "shards": _shards(summary.db_path, summary.job),
    }


def _shards(db: Path, job: str) -> int | None:
    """How many shards the job's store planned (None: not sharded)."""
    from batchrunner.store import Store

    with Store(db) as store:
        found = store.shard_plan(job)
    return int(found["shards"]) if found else None


def check_output(path: str | None, rows: int) -> dict[str, Any]:
    """The output table: its rows, distinct ids, and rows by status."""
    if path is None:
        return {"rows": 0, "ids": 0, "by_status": {}}
    import polars as pl

    frame = pl.read_parquet(path)
    status = frame["status"].value_counts() if "status" in frame.columns else None
    by_status = {str(k): int(v) for k, v in status.iter_rows()} if status is not None else {}
    return {"rows": frame.height, "ids": frame["id"].n_unique(), "by_status": by_status, "expected": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raychild", description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--ray-cpus", type=int, default=None)
    parser.add_argument("--rows", type=int, default=0, help="rows the output table should hold")
    args = parser.parse_args(argv)
    result = run(args.spec, args.ray_cpus)
    result["output_check"] = check_output(result["output"], args.rows)
    args.result.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
