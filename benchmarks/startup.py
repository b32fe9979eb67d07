"""Start-up: what a short `batchrunner` command costs in CPU before it does any work, over
a bare interpreter (target: at most 0.3 CPU-s more than `python -c pass`).

A tiny job is first run with `--simulate` so that `status` and `runs` have a store to read.
Then `python -c pass`, `batchrunner --help`, `batchrunner status JOB` and `batchrunner runs
JOB` run `startup_repeats` times each, taking turns (so a busy moment on a shared machine
falls on all of them alike). Each figure is the child's own user + system CPU from wait4;
a command's excess is its median less the median of `python -c pass`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from .data import write_spec
from .harness import HUGE_RPM, Harness
from .proc import BenchError, Exited, child_env, run_child

TARGET_EXCESS_CPU_S = 0.3
TINY_ROWS = 20
BASELINE = "python -c pass"
COMMAND_TIMEOUT_S = 120.0


def cli_args() -> tuple[str, list[str]]:
    """How the CLI is started, and the arguments after `python` that start it: the
    `batchrunner` console script beside this interpreter, else `python -m batchrunner`."""
    script = Path(sys.executable).with_name("batchrunner")
    if script.is_file():
        return "batchrunner", [str(script)]
    return "python -m batchrunner", ["-m", "batchrunner"]


def _run(args: list[str], folder: Path, what: str) -> Exited:
    done = run_child(args, env=child_env(), cwd=folder, log=folder / "startup.log", timeout_s=COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        msg = f"`{what}` exited {done.returncode} (see {folder / 'startup.log'})"
        raise BenchError(msg)
    return done


def tiny_job(h: Harness, cli: list[str]) -> Path:
    """Run a job of TINY_ROWS rows with --simulate; returns its spec (the store is beside it)."""
    folder = h.workdir / "startup"
    data = folder / "input.csv"
    h.inputs({data: TINY_ROWS})
    spec = write_spec(folder, name="bench-startup", input_path=data, requests_per_minute=HUGE_RPM, concurrency=8)
    _run([*cli, "run", str(spec), "--simulate", "--quiet"], folder, "batchrunner run --simulate")
    return spec


def _summary(runs: list[Exited]) -> dict[str, Any]:
    cpu = [r.cpu_s for r in runs]
    return {
        "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu),
        "median_wall_s": statistics.median(r.wall_s for r in runs),
        "median_maxrss_mb": statistics.median(r.maxrss_mb for r in runs),
    }


def startup(h: Harness) -> dict[str, Any]:
    """Median CPU seconds of each command, and its excess over `python -c pass`."""
    name, cli = cli_args()
    h.say(f"startup: a {TINY_ROWS}-row job with --simulate for `status` and `runs`")
    spec = tiny_job(h, cli)
    commands = {
        BASELINE: ["-c", "pass"],
        "--help": [*cli, "--help"],
        "status JOB": [*cli, "status", str(spec)],
        "runs JOB": [*cli, "runs", str(spec)],
    }
    repeats = h.sizes.startup_repeats
    h.say(f"startup: {len(commands)} commands x {repeats}")
    runs: dict[str, list[Exited]] = {label: [] for label in commands}
    for _ in range(repeats):
        for label, args in commands.items():
            what = label if label == BASELINE else f"{name} {label}"
            runs[label].append(_run(args, spec.parent, what))
    figures = {label: _summary(done) for label, done in runs.items()}
    base = figures[BASELINE]["median_cpu_s"]
    for label, f in figures.items():
        if label != BASELINE:
            f["excess_cpu_s"] = f["median_cpu_s"] - base
    worst = max(f["excess_cpu_s"] for label, f in figures.items() if label != BASELINE)
    return {
        "cli": name,
        "repeats": repeats,
        "target_excess_cpu_s": TARGET_EXCESS_CPU_S,
        "baseline": BASELINE,
        "commands": figures,  # by the arguments after the CLI (`cli`), and the baseline
        "worst_excess_cpu_s": worst,
        "pass": bool(worst <= TARGET_EXCESS_CPU_S),
    }
