"""The performance benchmark: batchrunner against a simulator in another process, side by side
with the official dashscope SDK, printed as one table (and written as JSON).

    python -m batchrunner.bench [--quick] [--only S1,S2,S2b,S3] [--rows-s3 N] [--json PATH]

Every scenario starts `python -m batchrunner simulate` on 127.0.0.1 in its own process and
runs each job (and the SDK baseline) in a fresh child process, whose own CPU time and peak
RSS are read with getrusage / wait4 (never the simulator's). The machine may be shared and
noisy, so the figures that matter are ratios measured in the same run. Targets (from the
performance issue) are printed beside the figures and marked PASS or MISS; a missed target
does not make the command fail, an error in a scenario does (exit code 1).

The default run's length is dominated by S3's million rows, so it follows the job's own
speed: about 19 minutes on two cores at ~1,800 rows/s (S1-S2b take about 3 of them); it
fits the 15-minute budget once rows/s and resume start-up meet their targets. `--quick`
shrinks every scenario to seconds (the test uses it); `--rows-s3` shrinks S3 alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench_proc import BenchError
from .bench_scenarios import Bench, Sizes

SCENARIOS = ("S1", "S2", "S2b", "S3")
COLUMNS = ("scenario", "batchrunner", "baseline (dashscope SDK)", "ratio", "target", "verdict")


@dataclass(frozen=True)
class Line:
    """One line of the printed table."""

    scenario: str
    ours: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    verdict: str = ""

    def cells(self) -> tuple[str, ...]:
        return (self.scenario, self.ours, self.baseline, self.ratio, self.target, self.verdict)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def s1_lines(r: dict[str, Any]) -> list[Line]:
    """S1: rows/s and CPU per 1k rows, batchrunner vs the SDK."""
    ours, base = r["batchrunner"], r["baseline"]

    def figures(f: dict[str, Any]) -> str:
        return f"{f['rows_per_s']:,.0f} rows/s, {f['cpu_s_per_1k_rows']:.2f} CPU-s/1k rows ({f['ok']:,} ok)"

    return [
        Line(
            f"S1 overhead-bound ({r['rows']:,} rows, c={r['concurrency']})",
            figures(ours),
            figures(base),
            f"{_x(r['ratio_rows_per_s'])} rows/s, {_x(r['ratio_cpu_per_row'])} CPU/row",
            ">= 3x baseline rows/s (~2,900 rows/s)",
            _verdict(r["pass"]),
        )
    ]


def s2_lines(r: dict[str, Any]) -> list[Line]:
    """S2: achieved rate / R and 429s at each R; the ratio compares ok rows per second of run
    (goodput), and says how many rows the SDK dropped (it does not retry a 429)."""
    lines = []
    for v in r["rates"].values():
        ours, base = v["batchrunner"], v["baseline"]

        def figures(f: dict[str, Any], rows: int) -> str:
            return (
                f"{_pct(f['rate_ratio'])} of R, {f['sim_throttled']} x 429, "
                f"{f['ok']:,}/{rows:,} ok in {f['wall_s']:.1f} s"
            )

        dropped = v["rows"] - base["ok"]
        lines.append(
            Line(
                f"S2 limit-bound R={v['rpm']:,}/min ({v['rows']:,} rows, c={v['concurrency']})",
                figures(ours, v["rows"]),
                figures(base, v["rows"]),
                f"{_x(v['ratio_goodput'])} goodput" + (f"; SDK dropped {dropped:,} rows" if dropped else ""),
                ">= 98% of R, zero 429s",
                _verdict(v["pass"]),
            )
        )
    return lines


def s2b_lines(r: dict[str, Any]) -> list[Line]:
    """S2b: rate / concurrency and CPU per request at each concurrency, then flatness."""
    lines = []
    headline = r["headline_concurrency"]
    for v in r["runs"].values():
        f = v["batchrunner"]
        c = v["concurrency"]
        is_headline = c == headline
        lines.append(
            Line(
                f"S2b 1 s latency, c={c:,} ({v['rows']:,} rows)",
                f"{_pct(f['rate_ratio'])} of {c:,}/s, {_ms(f['steady_cpu_ms_per_answer'])} CPU-ms/request steady "
                f"({f['cpu_ms_per_request']:.2f} whole run), {f['cpu_s']:.1f} CPU-s",
                target=f">= 90% of {c:,}/s" if is_headline else "(CPU flatness)",
                verdict=_verdict(r["rate_pass"]) if is_headline else "",
            )
        )
    spread = r["cpu_per_request_spread"]
    lines.append(
        Line(
            "S2b steady CPU per request, max/min",
            "n/a" if spread is None else f"{spread:.2f}",
            target="flat (max/min <= 1.5)",
            verdict=_verdict(r["flat_pass"]),
        )
    )
    return lines


def s3_lines(r: dict[str, Any]) -> list[Line]:
    """S3: run time, peak RSS, store and export per size, then the resume start-up."""
    lines = []
    n = r["rows"]
    for v in r["sizes"].values():
        size = v["rows"]
        text = (
            f"run {v['run_s']:.1f} s ({v['us_per_row']:.0f} us/row), peak RSS {v['peak_rss_mb']:.0f} MB, "
            f"store {v['store_mb']:.0f} MB, export {v['export_s']:.1f} s, ok {v['ok_rows']:,}"
        )
        top = size == n
        lines.append(
            Line(
                f"S3 scale {size:,} rows" + (" (90% + resume)" if top else ""),
                text,
                target="peak RSS < 500 MB" if top else "(growth)",
                verdict=_verdict(r["rss_pass"]) if top else "",
            )
        )
    growth = r.get("time_per_row_growth")
    lines.append(
        Line(
            "S3 time per row, largest/smallest",
            "n/a" if growth is None else f"{growth:.2f}x",
            target="(linear or better: about 1x)",
        )
    )
    top = r["sizes"][str(n)]
    start = top.get("resume_startup_s")
    lines.append(
        Line(
            f"S3 resume start-up at 90% of {n:,}",
            f"no request within {r.get('resume_cap_s', 120):.0f} s (the cap)"
            if start is None
            else f"first request after {start:.2f} s",
            target="< 5 s",
            verdict=_verdict(r["resume_pass"]),
        )
    )
    return lines


RENDER: dict[str, Callable[[dict[str, Any]], list[Line]]] = {
    "S1": s1_lines,
    "S2": s2_lines,
    "S2b": s2b_lines,
    "S3": s3_lines,
}


def render_table(lines: list[Line]) -> str:
    """A plain aligned text table of `lines`."""
    rows = [COLUMNS, *(line.cells() for line in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    out = []
    for number, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if number == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


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
    only: list[str], *, quick: bool, rows_s3: int | None, workdir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run the chosen scenarios; returns the whole report (meta, scenarios, table lines)."""
    sizes = Sizes.for_run(quick=quick, rows_s3=rows_s3)
    bench = Bench(workdir, sizes, log=say)
    started = time.monotonic()
    results: dict[str, Any] = {}
    lines: list[Line] = []
    for name in only:
        t0 = time.monotonic()
        try:
            result = getattr(bench, name.lower())()
        except (BenchError, OSError, KeyError, ValueError) as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            lines.append(
                Line(name, f"ERROR: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", verdict="ERROR")
            )
            say(f"{name}: error: {exc}")
            continue
        result["duration_s"] = time.monotonic() - t0
        results[name] = result
        lines.extend(RENDER[name](result))
    return {
        "meta": {
            "command": " ".join([os.path.basename(sys.executable), "-m", "batchrunner.bench", *sys.argv[1:]]),
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


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (1 if a scenario could not be run)."""
    parser = argparse.ArgumentParser(prog="python -m batchrunner.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (for the test)")
    parser.add_argument("--only", type=parse_only, default=None, help="comma-separated: S1,S2,S2b,S3")
    parser.add_argument("--rows-s3", type=int, default=None, help="S3 row count (default 1,000,000; quick 20,000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (inputs, stores, logs)")
    args = parser.parse_args(argv)
    if args.rows_s3 is not None and args.rows_s3 < 100:
        parser.error("--rows-s3 must be at least 100")
    only = args.only or list(SCENARIOS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="batchrunner-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    report = run_bench(only, quick=args.quick, rows_s3=args.rows_s3, workdir=workdir, say=say)
    errors = [name for name, r in report["scenarios"].items() if "error" in r]
    print(report["table_text"], flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if errors or args.keep or args.workdir is not None:
        say(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
