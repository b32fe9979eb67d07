"""S5: the S1 job (zero latency, no limits) on a local Ray, side by side with `processes = 2`.

    (a) `[limits] processes = 2`, one machine, no Ray (the reference of every ratio)
    (b) `[scale] engine = "ray"` on a new local Ray of 1 CPU (4 shards: the default 4 per CPU)
    (c) the same on 2 CPUs (8 shards)
    (d) 2 CPUs with `[scale] shards = 2` (one shard per CPU; not in --quick)

Each run is a fresh `benchmarks.raychild` process (which starts Ray itself, in-process, with
`ray.init(address="local", num_cpus=K)`, so the driver reuses it) against a fresh simulator
process, with a new store. The child reads the CPU of its whole process tree (the driver,
Ray's daemons and workers, or the two worker processes of (a)) and times Ray's start-up apart
from the job. The variants are run in interleaved rounds (a b c d, a b c d); each figure is
the median over the rounds, and the ratios compare medians of the same run. Every run must
leave all its rows ok in the output table.
"""

from __future__ import annotations

import importlib.util
import statistics
from typing import Any

from .data import write_spec
from .harness import CONCURRENCY, HUGE_RPM, Harness

NO_RAY = "Ray is not installed (pip install 'batchrunner[ray]'): S5 skipped"


def ray_installed() -> bool:
    """Whether this interpreter (and so the children it starts) can import Ray."""
    return importlib.util.find_spec("ray") is not None


def variants(quick: bool) -> list[tuple[str, int | None, dict[str, Any]]]:
    """(key, Ray CPUs or None, spec changes) of each variant, the reference first."""
    out: list[tuple[str, int | None, dict[str, Any]]] = [
        ("processes_2", None, {"processes": 2}),
        ("ray_1cpu", 1, {"scale": {"engine": "ray"}}),
        ("ray_2cpu", 2, {"scale": {"engine": "ray"}}),
    ]
    if not quick:
        out.append(("ray_2cpu_2shards", 2, {"scale": {"engine": "ray", "shards": 2}}))
    return out


def _figures(run: dict[str, Any], rows: int, sim_cpu_s: float | None) -> dict[str, Any]:
    job, start, total = run["job"], run["ray_start"], run["total"]
    check = run["output_check"]
    return {
        "job_wall_s": job["wall_s"],
        "job_cpu_s": job["cpu_s"],
        "rows_per_s": rows / job["wall_s"] if job["wall_s"] > 0 else 0.0,
        "cpu_s_per_1k_rows": job["cpu_s"] / rows * 1000,
        "driver_job_cpu_s": run["driver_job_cpu_s"],
        "ray_start_wall_s": start["wall_s"],
        "ray_start_cpu_s": start["cpu_s"],
        "shutdown_wall_s": run["shutdown"]["wall_s"],
        "total_wall_s": total["wall_s"],
        "total_cpu_s": total["cpu_s"],
        "rows_per_s_with_start": rows / (start["wall_s"] + job["wall_s"]),
        "sim_cpu_s": sim_cpu_s,
        "shards": run["shards"],
        "ok": run["ok"],
        "exit_code": run["exit_code"],
        "correct": bool(
            run["exit_code"] == 0
            and run["ok"] == rows
            and check["rows"] == check["ids"] == rows
            and check["by_status"] == {"ok": rows}
        ),
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def s5(h: Harness) -> dict[str, Any]:
    """Run every variant in interleaved rounds; figures, medians and ratios vs processes = 2."""
    if not ray_installed():
        h.say(NO_RAY)
        return {"skipped": NO_RAY}
    quick = h.sizes.s1_rows < 20_000
    rows, rounds = h.sizes.s1_rows, 1 if quick else 2
    folder = h.workdir / "s5"
    data = folder / "input.csv"
    h.inputs({data: rows})
    chosen = variants(quick)
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in chosen}
    for round_no in range(rounds):
        for key, cpus, changes in chosen:
            spec = write_spec(
                folder / f"{key}-{round_no}",
                name=f"bench-s5-{key}",
                input_path=data,
                requests_per_minute=HUGE_RPM,
                concurrency=CONCURRENCY,
                **changes,
            )
            h.say(f"S5 round {round_no + 1}/{rounds}: {key}, {rows} rows")
            with h.sim(folder) as sim:
                run = h.tree_job(spec, sim, rows, ray_cpus=cpus)
            sim_cpu = sim.exited.cpu_s if sim.exited else None
            raw[key].append({**_figures(run.result, rows, sim_cpu), "detail": run.result})
    medians = {key: _medians(runs) for key, runs in raw.items()}
    ref = medians["processes_2"]
    for key, m in medians.items():
        m["ratio_rows_per_s"] = m["rows_per_s"] / ref["rows_per_s"] if ref["rows_per_s"] else None
        m["ratio_rows_per_s_with_start"] = (
            m["rows_per_s_with_start"] / ref["rows_per_s_with_start"] if ref["rows_per_s_with_start"] else None
        )
        m["ratio_cpu_per_row"] = m["cpu_s_per_1k_rows"] / ref["cpu_s_per_1k_rows"] if ref["cpu_s_per_1k_rows"] else None
        m["key"] = key
    return {
        "rows": rows,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "variants": medians,
        "runs": raw,
        "pass": all(m["correct"] for m in medians.values()),
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, float | int) and not isinstance(v, bool)]
    out: dict[str, Any] = {k: _median(runs, k) for k in keys}
    out["shards"] = runs[0]["shards"]
    out["correct"] = all(r["correct"] for r in runs)
    out["ok"] = min(int(r["ok"]) for r in runs)
    out["by_name"] = runs[-1]["detail"]["points"]["end"]["by_name"]
    return out
