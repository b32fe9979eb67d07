"""The benchmark's scenarios. Each starts its own simulator process(es) and job children and
returns a JSON-able dict of figures; `batchrunner.bench` turns them into the table.

    S1   overhead-bound: zero latency, no limits, 20,000 rows; batchrunner vs the SDK
    S2   limit-bound: the simulator enforces R rpm (3,000 and 30,000) with 200 ms latency
    S2b  realistic latency: 1 s per call, 64 / 500 / 2,000 in flight
    S3   scale: 1% / 10% / 100% of --rows-s3 rows, store size, export time, resume start-up
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench_data import write_spec
from .bench_proc import BenchError, Exited, SimulatorProcess, child_env, launch, reap_or_kill, run_child
from .bench_sample import Sample, StatsSampler, steady_window
from .bench_scale import CONCURRENCY as S1_CONCURRENCY
from .bench_scale import HUGE_RPM

SDK_THREADS = 64
S2_LATENCY_MS = 200.0
S2B_LATENCY_MS = 1000.0


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; `quick` shrinks everything for the test."""

    s1_rows: int
    s2_rates: tuple[int, ...]
    s2_rows_per_rpm: float  # rows = R * this (1/3: about 20 s at R)
    s2b_concurrency: tuple[int, int, int]  # low, headline, high
    s2b_seconds: int  # rows = concurrency * this (1 s per call)
    s3_rows: int

    @classmethod
    def for_run(cls, *, quick: bool, rows_s3: int | None) -> Sizes:
        if quick:
            return cls(2_000, (3_000, 30_000), 1 / 30, (16, 64, 256), 3, rows_s3 or 20_000)
        return cls(20_000, (3_000, 30_000), 1 / 3, (64, 500, 2_000), 8, rows_s3 or 1_000_000)


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


class Bench:
    """Runs scenarios inside one work folder, with sizes from `Sizes`."""

    def __init__(self, workdir: Path, sizes: Sizes, *, log: Callable[[str], None] | None = None) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self._runs = 0
        self.say = log or (lambda message: None)

    # ------------------------------------------------------------------ helpers

    def inputs(self, wanted: dict[Path, int]) -> dict[Path, int]:
        """Write each input table (the first `rows` rows of the deterministic prompt table) in a
        child process, so this process never holds the data (see `bench_data.main`)."""
        folder = next(iter(wanted)).parent
        args = ["-m", "batchrunner.bench_data", *(f"{rows}:{path}" for path, rows in wanted.items())]
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
        return 180.0 + rows / per_s

    def job(
        self, spec: Path, sim: SimulatorProcess, rows: int, *, limit: int | None = None, sample: bool = False
    ) -> JobRun:
        """Run one job in `python -m batchrunner.bench_child job` against `sim`."""
        self._runs += 1
        result = spec.parent / f"result-{self._runs}.json"
        args = ["-m", "batchrunner.bench_child", "job", str(spec), str(result)]
        if limit is not None:
            args += ["--limit", str(limit)]
        return self._child(args, result, sim, rows, sample, f"job {spec.parent.name}")

    def sdk(self, input_path: Path, sim: SimulatorProcess, rows: int, *, sample: bool = False) -> JobRun:
        """Run the dashscope SDK baseline over `input_path` against `sim`."""
        self._runs += 1
        folder = input_path.parent / "sdk"
        folder.mkdir(parents=True, exist_ok=True)
        result = folder / f"result-{self._runs}.json"
        args = ["-m", "batchrunner.bench_child", "sdk", str(input_path), str(result), "--threads", str(SDK_THREADS)]
        return self._child(args, result, sim, rows, sample, f"SDK baseline {input_path.parent.name}")

    def _child(
        self, args: list[str], result: Path, sim: SimulatorProcess, rows: int, sample: bool, what: str
    ) -> JobRun:
        log = result.with_suffix(".log")
        proc, started = launch(args, env=child_env(sim.base_url), cwd=result.parent, log=log)
        samples: list[Sample] = []
        if sample:
            with StatsSampler(sim, proc.pid) as sampler:
                exited = reap_or_kill(proc, started, self.timeout(rows), what)
            samples = sampler.samples
        else:
            exited = reap_or_kill(proc, started, self.timeout(rows), what)
        if not result.is_file():
            tail = log.read_text(encoding="utf-8", errors="replace")[-1500:] if log.is_file() else ""
            msg = f"{what} exited {exited.returncode} without a result (log {log}):\n{tail}"
            raise BenchError(msg)
        return JobRun(json.loads(result.read_text(encoding="utf-8")), exited, samples)

    def sim(self, folder: Path, *, rpm: int | None = None, latency_ms: float = 0.0) -> SimulatorProcess:
        return SimulatorProcess(folder / f"simulator-{time.monotonic_ns()}.log", rpm=rpm, latency_ms=latency_ms)

    @staticmethod
    def _rate(run: JobRun, per_s: float, latency_s: float, *, pipe: bool = False) -> dict[str, Any]:
        """Rate figures against `per_s`: the arrival rate (limit-bound runs), or with `pipe`
        the throughput from first arrival to last answer (latency-bound runs)."""
        steady = steady_window(run.samples, latency_s)
        rate = steady.throughput_per_s if pipe else steady.arrival_rate_per_s
        last = run.samples[-1] if run.samples else None
        wall = float(run.result["wall_s"])
        goodput = int(run.result["ok"]) / wall if wall > 0 else 0.0
        return {
            "goodput_per_s": goodput,
            "goodput_ratio": goodput / per_s,
            "rate_per_s": rate,
            "rate_ratio": rate / per_s if rate is not None else None,
            "rate_kind": "throughput" if pipe else "arrival",
            "observed_s": steady.observed_s,
            "steady_cpu_ms_per_answer": steady.cpu_ms_per_answer,
            "sim_throttled": last.throttled if last else None,
            "sim_requests": last.requests if last else None,
            "sim_answered": last.answered if last else None,
        }

    # ------------------------------------------------------------------ S1

    def s1(self) -> dict[str, Any]:
        """Zero latency, no limits: end-to-end rows/s and CPU per 1k rows, against the SDK."""
        rows = self.sizes.s1_rows
        folder = self.workdir / "s1"
        data = folder / "input.csv"
        self.inputs({data: rows})
        spec = write_spec(
            folder, name="bench-s1", input_path=data, requests_per_minute=HUGE_RPM, concurrency=S1_CONCURRENCY
        )
        self.say(f"S1: batchrunner, {rows} rows")
        with self.sim(folder) as sim:
            ours = self.job(spec, sim, rows)
        mine = {**ours.figures(rows), "sim_cpu_s": sim.exited.cpu_s if sim.exited else None}
        self.say(f"S1: SDK baseline, {rows} rows")
        with self.sim(folder) as sim:
            base = self.sdk(data, sim, rows)
        theirs = {**base.figures(rows), "sim_cpu_s": sim.exited.cpu_s if sim.exited else None}
        ratio = mine["rows_per_s"] / theirs["rows_per_s"] if theirs["rows_per_s"] else None
        return {
            "rows": rows,
            "concurrency": S1_CONCURRENCY,
            "batchrunner": mine,
            "baseline": theirs,
            "ratio_rows_per_s": ratio,
            "ratio_cpu_per_row": (mine["cpu_s_per_1k_rows"] / theirs["cpu_s_per_1k_rows"])
            if theirs["cpu_s_per_1k_rows"]
            else None,
            "pass": bool(ratio is not None and ratio >= 3.0 and mine["ok"] == rows),
        }

    # ------------------------------------------------------------------ S2

    def s2(self) -> dict[str, Any]:
        """The simulator enforces R rpm at 200 ms latency: achieved rate / R and 429s."""
        out: dict[str, Any] = {}
        for rpm in self.sizes.s2_rates:
            rows = max(50, int(rpm * self.sizes.s2_rows_per_rpm))
            concurrency = max(64, math.ceil(rpm / 60 * S2_LATENCY_MS / 1000 * 3))
            folder = self.workdir / f"s2-{rpm}"
            data = folder / "input.parquet"
            self.inputs({data: rows})
            spec = write_spec(
                folder, name=f"bench-s2-{rpm}", input_path=data, requests_per_minute=rpm, concurrency=concurrency
            )
            per_s = rpm / 60
            self.say(f"S2: batchrunner at R={rpm}, {rows} rows, concurrency {concurrency}")
            with self.sim(folder, rpm=rpm, latency_ms=S2_LATENCY_MS) as sim:
                ours = self.job(spec, sim, rows, sample=True)
            mine = {**ours.figures(rows), **self._rate(ours, per_s, S2_LATENCY_MS / 1000)}
            self.say(f"S2: SDK baseline at R={rpm}")
            with self.sim(folder, rpm=rpm, latency_ms=S2_LATENCY_MS) as sim:
                base = self.sdk(data, sim, rows, sample=True)
            theirs = {**base.figures(rows), **self._rate(base, per_s, S2_LATENCY_MS / 1000)}
            ok = (
                mine["rate_ratio"] is not None
                and mine["rate_ratio"] >= 0.98
                and mine["sim_throttled"] == 0
                and mine["ok"] == rows
            )
            # Side by side: useful answers per second of each whole run (the SDK drops every
            # throttled row, so its own arrival rate says little about what it got done).
            ratio = mine["goodput_per_s"] / theirs["goodput_per_s"] if theirs["goodput_per_s"] else None
            out[str(rpm)] = {
                "rpm": rpm,
                "rows": rows,
                "concurrency": concurrency,
                "latency_ms": S2_LATENCY_MS,
                "batchrunner": mine,
                "baseline": theirs,
                "ratio_goodput": ratio,
                "pass": bool(ok),
            }
        return {"rates": out, "pass": all(v["pass"] for v in out.values())}

    # ------------------------------------------------------------------ S2b

    def s2b(self) -> dict[str, Any]:
        """1 s per call, no limit: achieved rate / concurrency and CPU per request."""
        out: dict[str, Any] = {}
        for concurrency in self.sizes.s2b_concurrency:
            rows = concurrency * self.sizes.s2b_seconds
            folder = self.workdir / f"s2b-{concurrency}"
            data = folder / "input.parquet"
            self.inputs({data: rows})
            spec = write_spec(
                folder,
                name=f"bench-s2b-{concurrency}",
                input_path=data,
                requests_per_minute=HUGE_RPM,
                concurrency=concurrency,
            )
            self.say(f"S2b: {concurrency} in flight, {rows} rows")
            with self.sim(folder, latency_ms=S2B_LATENCY_MS) as sim:
                run = self.job(spec, sim, rows, sample=True)
            latency_s = S2B_LATENCY_MS / 1000
            figures = {**run.figures(rows), **self._rate(run, concurrency / latency_s, latency_s, pipe=True)}
            attempts = max(1, int(figures["attempts"]))
            figures["cpu_ms_per_request"] = float(figures["cpu_s"]) / attempts * 1000
            out[str(concurrency)] = {"concurrency": concurrency, "rows": rows, "batchrunner": figures}
        # Flatness is judged on the steady part of each run (start-up and export excluded);
        # the whole-run figure is kept beside it.
        per_request = [
            v["batchrunner"]["steady_cpu_ms_per_answer"] or v["batchrunner"]["cpu_ms_per_request"] for v in out.values()
        ]
        spread = max(per_request) / min(per_request) if min(per_request) > 0 else None
        headline = out[str(self.sizes.s2b_concurrency[1])]["batchrunner"]
        rate_ok = headline["rate_ratio"] is not None and headline["rate_ratio"] >= 0.9
        flat_ok = spread is not None and spread <= 1.5
        return {
            "latency_ms": S2B_LATENCY_MS,
            "runs": out,
            "headline_concurrency": self.sizes.s2b_concurrency[1],
            "cpu_per_request_spread": spread,
            "rate_pass": bool(rate_ok),
            "flat_pass": bool(flat_ok),
            "pass": bool(rate_ok and flat_ok),
        }

    # ------------------------------------------------------------------ S3

    def s3(self) -> dict[str, Any]:
        """Scale: see `batchrunner.bench_scale`."""
        from .bench_scale import s3

        return s3(self)
