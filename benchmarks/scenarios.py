"""The throughput scenarios. Each starts its own simulator process(es) and job children and
returns a JSON-able dict of figures; `benchmarks.table` turns them into lines of the table.

    S1   overhead-bound: zero latency, no limits, 20,000 rows; batchrunner vs the SDK
    S2   limit-bound: the simulator enforces R rpm (3,000 and 30,000) with 200 ms latency
    S2b  realistic latency: 1 s per call, 64 / 500 / 2,000 in flight

S3 (scale) is in `benchmarks.scale`, the CLI start-up in `benchmarks.startup`.
"""

from __future__ import annotations

import math
from typing import Any

from .data import write_spec
from .harness import CONCURRENCY, HUGE_RPM, Harness, JobRun
from .sample import steady_window

S2_LATENCY_MS = 200.0
S2B_LATENCY_MS = 1000.0


def rate_figures(run: JobRun, per_s: float, latency_s: float, *, pipe: bool = False) -> dict[str, Any]:
    """Rate figures against `per_s`: the arrival rate (limit-bound runs), or with `pipe` the
    throughput from first arrival to last answer (latency-bound runs)."""
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


def s1(h: Harness) -> dict[str, Any]:
    """Zero latency, no limits: end-to-end rows/s and CPU per 1k rows, against the SDK; with
    `[limits] processes = 1` and `2` (the parent's CPU per row is the single-process figure)."""
    rows = h.sizes.s1_rows
    folder = h.workdir / "s1"
    data = folder / "input.csv"
    h.inputs({data: rows})
    runs: dict[int, dict[str, Any]] = {}
    for processes in (1, 2):
        spec = write_spec(
            folder / f"p{processes}",
            name=f"bench-s1-p{processes}",
            input_path=data,
            requests_per_minute=HUGE_RPM,
            concurrency=CONCURRENCY,
            processes=processes,
        )
        h.say(f"S1: batchrunner, {rows} rows, processes = {processes}")
        with h.sim(folder) as sim:
            ours = h.job(spec, sim, rows)
        runs[processes] = {**ours.figures(rows), "sim_cpu_s": sim.exited.cpu_s if sim.exited else None}
    mine = runs[1]
    h.say(f"S1: SDK baseline, {rows} rows")
    with h.sim(folder) as sim:
        base = h.sdk(data, sim, rows)
    theirs = {**base.figures(rows), "sim_cpu_s": sim.exited.cpu_s if sim.exited else None}
    ratio = mine["rows_per_s"] / theirs["rows_per_s"] if theirs["rows_per_s"] else None
    ratio2 = runs[2]["rows_per_s"] / theirs["rows_per_s"] if theirs["rows_per_s"] else None
    cpu_ratio = mine["cpu_s_per_1k_rows"] / theirs["cpu_s_per_1k_rows"] if theirs["cpu_s_per_1k_rows"] else None
    return {
        "rows": rows,
        "concurrency": CONCURRENCY,
        "batchrunner": mine,
        "processes_2": runs[2],
        "baseline": theirs,
        "ratio_rows_per_s": ratio,
        "ratio_rows_per_s_processes_2": ratio2,
        "ratio_cpu_per_row": cpu_ratio,
        "pass": bool(ratio is not None and ratio >= 3.0 and mine["ok"] == rows),
        "pass_processes_2": bool(ratio2 is not None and ratio2 >= 4.0 and runs[2]["ok"] == rows),
    }


def s2_rate(h: Harness, rpm: int) -> dict[str, Any]:
    """One rate of S2: batchrunner, then the SDK, against a simulator enforcing `rpm`."""
    rows = max(50, int(rpm * h.sizes.s2_rows_per_rpm))
    concurrency = max(64, math.ceil(rpm / 60 * S2_LATENCY_MS / 1000 * 3))
    folder = h.workdir / f"s2-{rpm}"
    data = folder / "input.parquet"
    h.inputs({data: rows})
    spec = write_spec(folder, name=f"bench-s2-{rpm}", input_path=data, requests_per_minute=rpm, concurrency=concurrency)
    per_s, latency_s = rpm / 60, S2_LATENCY_MS / 1000
    h.say(f"S2: batchrunner at R={rpm}, {rows} rows, concurrency {concurrency}")
    with h.sim(folder, rpm=rpm, latency_ms=S2_LATENCY_MS) as sim:
        ours = h.job(spec, sim, rows, sample=True)
    # How long the job's event loop and the simulator's could not run for want of a CPU: a
    # stalled simulator counts what arrived meanwhile at once, and the second after it must
    # then go short (see the README's Performance notes).
    mine = {**ours.figures(rows), **rate_figures(ours, per_s, latency_s), "sim_cpu_wait_s": sim.cpu_wait_s}
    h.say(f"S2: SDK baseline at R={rpm}")
    with h.sim(folder, rpm=rpm, latency_ms=S2_LATENCY_MS) as sim:
        base = h.sdk(data, sim, rows, sample=True)
    theirs = {**base.figures(rows), **rate_figures(base, per_s, latency_s)}
    ok = mine["rate_ratio"] is not None and mine["rate_ratio"] >= 0.98 and mine["sim_throttled"] == 0
    # Side by side: useful answers per second of each whole run (the SDK drops every
    # throttled row, so its own arrival rate says little about what it got done).
    ratio = mine["goodput_per_s"] / theirs["goodput_per_s"] if theirs["goodput_per_s"] else None
    return {
        "rpm": rpm,
        "rows": rows,
        "concurrency": concurrency,
        "latency_ms": S2_LATENCY_MS,
        "batchrunner": mine,
        "baseline": theirs,
        "ratio_goodput": ratio,
        "pass": bool(ok and mine["ok"] == rows),
    }


def s2(h: Harness) -> dict[str, Any]:
    """The simulator enforces R rpm at 200 ms latency: achieved rate / R and 429s."""
    out = {str(rpm): s2_rate(h, rpm) for rpm in h.sizes.s2_rates}
    return {"rates": out, "pass": all(v["pass"] for v in out.values())}


def s2b_run(h: Harness, concurrency: int) -> dict[str, Any]:
    """One concurrency of S2b: a job of `concurrency` x s2b_seconds rows at 1 s per call."""
    rows = concurrency * h.sizes.s2b_seconds
    folder = h.workdir / f"s2b-{concurrency}"
    data = folder / "input.parquet"
    h.inputs({data: rows})
    spec = write_spec(
        folder,
        name=f"bench-s2b-{concurrency}",
        input_path=data,
        requests_per_minute=HUGE_RPM,
        concurrency=concurrency,
    )
    h.say(f"S2b: {concurrency} in flight, {rows} rows")
    with h.sim(folder, latency_ms=S2B_LATENCY_MS) as sim:
        run = h.job(spec, sim, rows, sample=True)
    latency_s = S2B_LATENCY_MS / 1000
    figures = {**run.figures(rows), **rate_figures(run, concurrency / latency_s, latency_s, pipe=True)}
    attempts = max(1, int(figures["attempts"]))
    figures["cpu_ms_per_request"] = float(figures["cpu_s"]) / attempts * 1000
    return {"concurrency": concurrency, "rows": rows, "batchrunner": figures}


def s2b(h: Harness) -> dict[str, Any]:
    """1 s per call, no limit: achieved rate / concurrency and CPU per request."""
    out = {str(c): s2b_run(h, c) for c in h.sizes.s2b_concurrency}
    # Flatness is judged on the steady part of each run (start-up and export excluded);
    # the whole-run figure is kept beside it.
    per_request = [
        v["batchrunner"]["steady_cpu_ms_per_answer"] or v["batchrunner"]["cpu_ms_per_request"] for v in out.values()
    ]
    spread = max(per_request) / min(per_request) if min(per_request) > 0 else None
    headline = out[str(h.sizes.s2b_concurrency[1])]["batchrunner"]
    rate_ok = headline["rate_ratio"] is not None and headline["rate_ratio"] >= 0.9
    flat_ok = spread is not None and spread <= 1.5
    return {
        "latency_ms": S2B_LATENCY_MS,
        "runs": out,
        "headline_concurrency": h.sizes.s2b_concurrency[1],
        "cpu_per_request_spread": spread,
        "rate_pass": bool(rate_ok),
        "flat_pass": bool(flat_ok),
        "pass": bool(rate_ok and flat_ok),
    }
