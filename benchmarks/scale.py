"""S3, scale: a large parquet input through the whole pipeline, against a zero-latency simulator
with no limits.

For 1%, 10% and all of `--rows-s3` rows (10k, 100k and 1M by default): run time, the job
process's peak RSS, the store's size, and the time and peak RSS of a separate `python -m
batchrunner export`. The largest size is run as a resume: first `--limit` 90% of the rows,
then `python -m batchrunner run` on the same spec, timed from its launch until the simulator
counts its first request (the resume start-up), then to its end.

Memory must not grow with the table: the verdicts look at the largest size's peak RSS (run
and export), and at the slope, what ten times the rows add to the peak (largest minus the
size before it).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from .data import write_spec
from .harness import CONCURRENCY, HUGE_RPM, Harness
from .proc import Exited, SimulatorProcess, Stats, child_env, launch, run_child

RESUME_DONE = 0.9
FIRST_REQUEST_TIMEOUT_S = 120.0
RSS_TARGET_MB = 400.0  # peak RSS of the largest size's runs and of its export
RSS_SLOPE_TARGET_MB = 60.0  # what 10x the rows may add to the peak RSS
EXPORT_TARGET_S = 15.0  # a separate export of the largest size
RESUME_TARGET_S = 5.0


def s3(h: Harness) -> dict[str, Any]:
    """Run every size; the verdict looks at the largest (peak RSS and resume start-up)."""
    n = h.sizes.s3_rows
    sizes = sorted({max(100, n // 100), max(100, n // 10), n})
    h.say(f"S3: generating {n} rows")
    inputs = h.inputs({h.workdir / f"s3-{size}" / "input.parquet": size for size in sizes})
    out: dict[str, Any] = {}
    for data, size in inputs.items():
        out[str(size)] = one_size(h, data, size, resume=size == n)
    top = out[str(n)]
    peak = max(top["peak_rss_mb"], top["export_peak_rss_mb"])
    rss_ok = peak <= RSS_TARGET_MB
    start = top.get("resume_startup_s")
    resume_ok = start is not None and start < RESUME_TARGET_S
    smallest = out[str(sizes[0])]
    before = out[str(sizes[-2])] if len(sizes) > 1 else smallest
    slope = top["peak_rss_mb"] - before["peak_rss_mb"]
    export_slope = top["export_peak_rss_mb"] - before["export_peak_rss_mb"]
    slope_ok = max(slope, export_slope) <= RSS_SLOPE_TARGET_MB
    export_ok = top["export_s"] <= EXPORT_TARGET_S
    return {
        "sizes": out,
        "rows": n,
        "resume_cap_s": FIRST_REQUEST_TIMEOUT_S,
        "time_per_row_growth": top["us_per_row"] / smallest["us_per_row"] if smallest["us_per_row"] else None,
        "rss_slope_rows": [before["rows"], n],
        "rss_slope_mb": slope,
        "export_rss_slope_mb": export_slope,
        "rss_pass": bool(rss_ok),
        "rss_slope_pass": bool(slope_ok),
        "export_pass": bool(export_ok),
        "resume_pass": bool(resume_ok),
        "pass": bool(rss_ok and slope_ok and export_ok and resume_ok and top["ok_rows"] == n),
    }


def one_size(h: Harness, data: Path, size: int, *, resume: bool) -> dict[str, Any]:
    """Run one size (straight through, or 90% then a resume), then export it separately."""
    folder = data.parent
    spec = write_spec(
        folder, name=f"bench-s3-{size}", input_path=data, requests_per_minute=HUGE_RPM, concurrency=CONCURRENCY
    )
    figures: dict[str, Any] = {"rows": size, "input_mb": data.stat().st_size / 2**20}
    with h.sim(folder) as sim:
        if not resume:
            h.say(f"S3: {size} rows")
            run = h.job(spec, sim, size)
            figures.update(
                run_s=run.result["wall_s"],
                peak_rss_mb=run.process.maxrss_mb,
                vmhwm_mb=run.result.get("vmhwm_mb"),
                cpu_s=run.result["cpu_s"],
                process_wall_s=run.process.wall_s,
            )
        else:
            done = int(size * RESUME_DONE)
            h.say(f"S3: {size} rows, first {done} (--limit)")
            first = h.job(spec, sim, done, limit=done)
            h.say(f"S3: resuming the last {size - done} rows with `python -m batchrunner run`")
            startup, second = resume_run(h, spec, sim, size - done)
            figures.update(
                run_s=first.result["wall_s"] + second.wall_s,
                first_run_s=first.result["wall_s"],
                resume_run_s=second.wall_s,
                resume_exit_code=second.returncode,
                resume_startup_s=startup,
                peak_rss_mb=max(first.process.maxrss_mb, second.maxrss_mb),
                first_peak_rss_mb=first.process.maxrss_mb,
                first_vmhwm_mb=first.result.get("vmhwm_mb"),
                resume_peak_rss_mb=second.maxrss_mb,
                cpu_s=first.result["cpu_s"] + second.cpu_s,
            )
    store = spec.parent / "out" / f"bench-s3-{size}.sqlite"
    figures["store_mb"] = sum(p.stat().st_size for p in store.parent.glob(store.name + "*") if p.is_file()) / 2**20
    log = folder / "export.log"
    h.say(f"S3: export of {size} rows")
    exported = run_child(
        ["-m", "batchrunner", "export", str(spec)],
        env=child_env(),
        cwd=folder,
        log=log,
        timeout_s=h.timeout(size, 2000),
    )
    text = log.read_text(encoding="utf-8", errors="replace")
    ok = re.search(r"\bok (\d+)", text)
    output = folder / "out" / "output.parquet"
    figures.update(
        export_s=exported.wall_s,
        export_exit_code=exported.returncode,
        export_peak_rss_mb=exported.maxrss_mb,
        ok_rows=int(ok.group(1)) if ok else 0,
        output_mb=output.stat().st_size / 2**20 if output.is_file() else None,
        us_per_row=figures["run_s"] / size * 1e6,
    )
    return figures


def resume_run(h: Harness, spec: Path, sim: SimulatorProcess, rows: int) -> tuple[float | None, Exited]:
    """Launch `python -m batchrunner run SPEC --quiet`; seconds until the simulator sees its
    first request (None if not within FIRST_REQUEST_TIMEOUT_S), and the finished run."""
    log = spec.parent / "resume.log"
    args = ["-m", "batchrunner", "run", str(spec), "--quiet"]
    stats = sim.stats()
    try:
        before = int(stats.get()["requests"])
        with launch(args, env=child_env(sim.base_url), cwd=spec.parent, log=log, what="the resumed run") as child:
            startup = first_request(stats, before, child.pid, child.started)
            return startup, child.wait(h.timeout(rows))
    finally:
        stats.close()


def first_request(stats: Stats, before: int, pid: int, started: float) -> float | None:
    """Seconds from `started` until the simulator counts more than `before` requests; None
    when the child exits first or FIRST_REQUEST_TIMEOUT_S passes (polled every 20 ms)."""
    deadline = started + FIRST_REQUEST_TIMEOUT_S
    while time.monotonic() < deadline:
        if int(stats.get()["requests"]) > before:
            return time.monotonic() - started
        # WNOWAIT: look without reaping, so wait4 can still read the child's rusage.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return None
        time.sleep(0.02)
    return None
