"""What every scenario works with: the run's sizes, its work folder, its input tables, and
batchrunner / SDK child processes measured against a simulator process.

The scenario modules (`scenarios`, `scale`, `bigstore`, `startup`, `raybench`) import this one and never each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .proc import BenchError, Exited, SimulatorProcess, child_env, launch, run_child
from .sample import Sample, StatsSampler

HUGE_RPM = 10_000_000  # "no limit" for the jobs that should not be paced
CONCURRENCY = 64  # requests in flight for the unpaced jobs (S1, S3)
SDK_THREADS = 64


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; `quick` shrinks everything for the test."""

    s1_rows: int
    s2_rates: tuple[int, ...]
    s2_rows_per_rpm: float  # rows = R * this (1/3: about 20 s at R)
    s2b_concurrency: tuple[int, int, int]  # low, headline, high
    s2b_seconds: int  # rows = concurrency * this (1 s per call)
    s3_rows: int
    startup_repeats: int  # runs of each command in the start-up scenario
    s4_rows: int = 10_000_000

    @classmethod
    def for_run(cls, *, quick: bool, rows_s3: int | None, rows_s4: int | None = None) -> Sizes:
        if quick:
            return cls(2_000, (3_000, 30_000), 1 / 30, (16, 64, 256), 3, rows_s3 or 20_000, 3, rows_s4 or 20_000)
        return cls(20_000, (3_000, 30_000), 1 / 3, (64, 500, 2_000), 8, rows_s3 or 1_000_000, 7, rows_s4 or 10_000_000)


@dataclass(frozen=True)
class JobRun:
    """One batchrunner (or SDK) child: what it measured itself, and its process rusage."""

    result: dict[str, Any]
    process: Exited
    samples: list[Sample] = field(default_factory=list)

    def figures(self, rows: int) -> dict[str, Any]:
        """The child's figures, per row and per second, for the JSON output."""
        r = self.result
        wall = float(r["wall_s"])
        return {
            **{k: v for k, v in r.items() if k != "table"},
            "rows": rows,
            "rows_per_s": rows / wall if wall > 0 else 0.0,
            "cpu_s_per_1k_rows": float(r["cpu_s"]) / rows * 1000 if rows else 0.0,
            "process_wall_s": self.process.wall_s,
            "process_cpu_s": self.process.cpu_s,
            "peak_rss_mb": self.process.maxrss_mb,
        }


def _quiet(message: str) -> None:
    """Drop a progress message (when no log is given)."""


class Harness:
    """Runs children inside one work folder, with sizes from `Sizes`."""

    def __init__(self, workdir: Path, sizes: Sizes, *, log: Callable[[str], None] | None = None) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.say = log or _quiet
        self._runs = 0

    def inputs(self, wanted: dict[Path, int]) -> dict[Path, int]:
        """Write each input table (the first `rows` rows of the deterministic prompt table) in a
        child process, so this process never holds the data (see `data.main`)."""
        folder = next(iter(wanted)).parent
        args = ["-m", "benchmarks.data", *(f"{rows}:{path}" for path, rows in wanted.items())]
        done = run_child(
            args,
            env=child_env(),
            cwd=folder.parent,
            log=self.workdir / "inputs.log",
            timeout_s=self.timeout(max(wanted.values()), 20_000),
        )
        missing = [str(p) for p in wanted if not p.is_file()]
        if done.returncode != 0 or missing:
            msg = f"writing the input tables failed (exit {done.returncode}; see {self.workdir / 'inputs.log'})"
            raise BenchError(msg)
        return wanted

    def timeout(self, rows: int, per_s: float = 300.0) -> float:
        """A generous deadline for a child that handles `rows` rows."""
        return 180.0 + rows / per_s

    def sim(self, folder: Path, *, rpm: int | None = None, latency_ms: float = 0.0) -> SimulatorProcess:
        """A simulator process (not started yet: use it in a `with`) logging into `folder`."""
        return SimulatorProcess(folder / f"simulator-{time.monotonic_ns()}.log", rpm=rpm, latency_ms=latency_ms)

    def job(
        self, spec: Path, sim: SimulatorProcess, rows: int, *, limit: int | None = None, sample: bool = False
    ) -> JobRun:
        """Run one job in `python -m benchmarks.child job` against `sim`."""
        self._runs += 1
        result = spec.parent / f"result-{self._runs}.json"
        args = ["-m", "benchmarks.child", "job", str(spec), str(result)]
        if limit is not None:
            args += ["--limit", str(limit)]
        return self._child(args, result, sim, rows, sample=sample, what=f"job {spec.parent.name}")

    def tree_job(self, spec: Path, sim: SimulatorProcess, rows: int, *, ray_cpus: int | None = None) -> JobRun:
        """Run one job in `python -m benchmarks.raychild` (its whole process tree measured; on a
        new local Ray of `ray_cpus` CPUs when given) against `sim`."""
        self._runs += 1
        result = spec.parent / f"result-{self._runs}.json"
        args = ["-m", "benchmarks.raychild", str(spec), str(result), "--rows", str(rows)]
        if ray_cpus is not None:
            args += ["--ray-cpus", str(ray_cpus)]
        return self._child(args, result, sim, rows, sample=False, what=f"job {spec.parent.name}")

    def sdk(self, input_path: Path, sim: SimulatorProcess, rows: int, *, sample: bool = False) -> JobRun:
        """Run the dashscope SDK baseline over `input_path` against `sim`."""
        self._runs += 1
        folder = input_path.parent / "sdk"
        folder.mkdir(parents=True, exist_ok=True)
        result = folder / f"result-{self._runs}.json"
        args = ["-m", "benchmarks.child", "sdk", str(input_path), str(result), "--threads", str(SDK_THREADS)]
        return self._child(args, result, sim, rows, sample=sample, what=f"SDK baseline {input_path.parent.name}")

    def _child(
        self, args: list[str], result: Path, sim: SimulatorProcess, rows: int, *, sample: bool, what: str
    ) -> JobRun:
        log = result.with_suffix(".log")
        samples: list[Sample] = []
        with launch(args, env=child_env(sim.base_url), cwd=result.parent, log=log, what=what) as child:
            if sample:
                with StatsSampler(sim, child.pid) as sampler:
                    exited = child.wait(self.timeout(rows))
                samples = sampler.samples
            else:
                exited = child.wait(self.timeout(rows))
        if not result.is_file():
            tail = log.read_text(encoding="utf-8", errors="replace")[-1500:] if log.is_file() else ""
            msg = f"{what} exited {exited.returncode} without a result (log {log}):\n{tail}"
            raise BenchError(msg)
        return JobRun(json.loads(result.read_text(encoding="utf-8")), exited, samples)
