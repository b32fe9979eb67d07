"""The performance benchmark: batchrunner against a simulator in another process, side by side
with the official dashscope SDK, printed as one table (and written as JSON).

    python -m benchmarks.bench [--quick] [--only S1,S2,S2b,S3,S4,S5,startup] [--rows-s3 N] [--rows-s4 N]
        [--json PATH]

Every scenario starts `python -m batchrunner simulate` on 127.0.0.1 in its own process and
runs each job (and the SDK baseline) in a fresh child process, whose own CPU time and peak
RSS are read with getrusage / wait4 (never the simulator's). The machine may be shared and
noisy, so the figures that matter are ratios measured in the same run. Targets (from the
performance issue) are printed beside the figures and marked PASS or MISS; a missed target
does not make the command fail, an error in a scenario does (exit code 1).

Without S4, the default run's length is dominated by S3's million rows, so it follows the
job's own speed: about 19 minutes on two cores at ~1,800 rows/s (S1-S2b take about 3 of
them). S4 (10 million rows, made without HTTP, see `bigstore`) adds about 20 minutes on two
shared cores: making the job takes 10 of them, and its `report` and `export` (8 more) read
the whole store. `--quick` shrinks every scenario to seconds
(the test uses it); `--rows-s3` and `--rows-s4` shrink S3 or S4 alone. The `startup` scenario
(CPU of short CLI commands over a bare interpreter) takes under a minute, S5 (the S1 job on
a local Ray of 1 and 2 CPUs beside `processes = 2`, see `raybench`) about 3 minutes.
Run it from a checkout's root (where `benchmarks` is importable); the children it starts get
that root on their PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .bigstore import s4
from .harness import Harness, Sizes
from .proc import BenchError
from .raybench import s5
from .scale import s3
from .scenarios import s1, s2, s2b
from .startup import startup
from .table import (
    COLUMNS,
    Line,
    error_line,
    render_table,
    s1_lines,
    s2_lines,
    s2b_lines,
    s3_lines,
    s4_lines,
    s5_lines,
    startup_lines,
)

Scenario = Callable[[Harness], dict[str, Any]]
Render = Callable[[dict[str, Any]], list[Line]]

SCENARIOS: dict[str, tuple[Scenario, Render]] = {
    "S1": (s1, s1_lines),
    "S2": (s2, s2_lines),
    "S2b": (s2b, s2b_lines),
    "S3": (s3, s3_lines),
    "S4": (s4, s4_lines),
    "S5": (s5, s5_lines),
    "startup": (startup, startup_lines),
}


def parse_only(value: str | None) -> list[str]:
    """The scenarios named by --only (case-insensitive), in the order of SCENARIOS."""
    if not value:
        return list(SCENARIOS)
    wanted = {v.strip().lower() for v in value.split(",") if v.strip()}
    unknown = wanted - {s.lower() for s in SCENARIOS}
    if unknown:
        msg = f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}"
        raise argparse.ArgumentTypeError(msg)
    return [s for s in SCENARIOS if s.lower() in wanted]


def run_bench(
    only: list[str],
    *,
    quick: bool,
    rows_s3: int | None,
    workdir: Path,
    say: Callable[[str], None],
    rows_s4: int | None = None,
) -> dict[str, Any]:
    """Run the chosen scenarios; returns the whole report (meta, scenarios, table lines)."""
    sizes = Sizes.for_run(quick=quick, rows_s3=rows_s3, rows_s4=rows_s4)
    harness = Harness(workdir, sizes, log=say)
    started = time.monotonic()
    results: dict[str, Any] = {}
    lines: list[Line] = []
    for name in only:
        scenario, render = SCENARIOS[name]
        t0 = time.monotonic()
        try:
            result = scenario(harness)
        except (BenchError, OSError, KeyError, ValueError) as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            lines.append(error_line(name, exc))
            say(f"{name}: error: {exc}")
            continue
        result["duration_s"] = time.monotonic() - t0
        results[name] = result
        lines.extend(render(result))
    return {
        "meta": {
            "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.bench", *sys.argv[1:]]),
            "quick": quick,
            "scenarios": only,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "duration_s": time.monotonic() - started,
            "sizes": sizes.__dict__,
        },
        "scenarios": results,
        "table": [dict(zip(COLUMNS, line.cells(), strict=True)) for line in lines],
        "table_text": render_table(lines),
    }


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like an error, so every child is ended by its context manager (and
    further SIGTERMs are ignored, so as not to cut that short)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (1 if a scenario could not be run)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (for the test)")
    parser.add_argument("--only", type=parse_only, default=None, help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument("--rows-s3", type=int, default=None, help="S3 row count (default 1,000,000; quick 20,000)")
    parser.add_argument("--rows-s4", type=int, default=None, help="S4 row count (default 10,000,000; quick 20,000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (inputs, stores, logs)")
    args = parser.parse_args(argv)
    if args.rows_s3 is not None and args.rows_s3 < 100:
        parser.error("--rows-s3 must be at least 100")
    if args.rows_s4 is not None and args.rows_s4 < 100:
        parser.error("--rows-s4 must be at least 100")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    only: list[str] = args.only or list(SCENARIOS)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="batchrunner-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_bench(only, quick=args.quick, rows_s3=args.rows_s3, rows_s4=args.rows_s4, workdir=workdir, say=_say)
    errors = [name for name, r in report["scenarios"].items() if "error" in r]
    print(report["table_text"], flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if errors or args.keep or args.workdir is not None:
        _say(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
