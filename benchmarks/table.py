"""The benchmark's table: one or more lines per scenario, figures beside their targets.

Each `*_lines` function turns one scenario's JSON-able result into `Line`s; `render_table`
aligns them as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        ),
        *(
            [
                Line(
                    "S1 with [limits] processes = 2",
                    figures(r["processes_2"]),
                    figures(base),
                    f"{_x(r['ratio_rows_per_s_processes_2'])} rows/s",
                    ">= 4x baseline rows/s",
                    _verdict(r["pass_processes_2"]),
                )
            ]
            if "processes_2" in r
            else []
        ),
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
        waited = ""
        if ours.get("cpu_wait_s") is not None and ours.get("sim_cpu_wait_s") is not None and ours["wall_s"]:
            share = [ours[k] / ours["wall_s"] for k in ("cpu_wait_s", "sim_cpu_wait_s")]
            waited = f"; waiting for a CPU: job {_pct(share[0])}, simulator {_pct(share[1])} of the run"
        lines.append(
            Line(
                f"S2 limit-bound R={v['rpm']:,}/min ({v['rows']:,} rows, c={v['concurrency']})",
                figures(ours, v["rows"]) + waited,
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
            f"store {v['store_mb']:.0f} MB, export {v['export_s']:.1f} s (peak RSS "
            f"{v.get('export_peak_rss_mb', 0):.0f} MB), ok {v['ok_rows']:,}"
        )
        top = size == n
        lines.append(
            Line(
                f"S3 scale {size:,} rows" + (" (90% + resume)" if top else ""),
                text,
                target="peak RSS <= 400 MB, export <= 15 s" if top else "(growth)",
                verdict=_verdict(r["rss_pass"] and r.get("export_pass", True)) if top else "",
            )
        )
    if "rss_slope_mb" in r:
        small, large = r["rss_slope_rows"]
        lines.append(
            Line(
                f"S3 peak RSS added by {large // max(small, 1)}x the rows",
                f"run {r['rss_slope_mb']:+.0f} MB, export {r['export_rss_slope_mb']:+.0f} MB "
                f"({small:,} -> {large:,} rows)",
                target="<= 60 MB (flat)",
                verdict=_verdict(r["rss_slope_pass"]),
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


def s4_lines(r: dict[str, Any]) -> list[Line]:
    """S4: the fabricated job, the resume start-up, then status, report and export."""
    n, f, res = r["rows"], r["fabricate"], r["resume"]
    start = res["startup_s"]
    lines = [
        Line(
            f"S4 fabricate {n:,} rows, {r['done']:,} done (no HTTP)",
            f"{f['wall_s']:.0f} s with {f['workers']} workers, input {f['input_mb']:,.0f} MB, "
            f"store {f['store_mb']:,.0f} MB",
            target="(minutes)",
        ),
        Line(
            f"S4 resume start-up at {r['done'] / n:.0%} of {n:,}",
            ("no request within the cap" if start is None else f"first request after {start:.2f} s")
            + f", peak RSS {res['peak_rss_mb']:.0f} MB (stopped after {res['requests']:,} requests; "
            f"found {res['already_done']:,} done)",
            target="<= 3 s, <= 600 MB",
            verdict=_verdict(res["pass"]),
        ),
    ]
    for name in ("status", "report", "export"):
        c = r[name]
        lines.append(
            Line(
                f"S4 `{name}` at {n:,} rows",
                f"{c['wall_s']:.2f} s, {c['cpu_s']:.2f} CPU-s, peak RSS {c['peak_rss_mb']:.0f} MB"
                + (f", ok {c['ok_rows']:,}" if "ok_rows" in c else ""),
                target="<= 600 MB" if name == "export" else "<= 5 s, <= 600 MB",
                verdict=_verdict(c["pass"]),
            )
        )
    return lines


def startup_lines(r: dict[str, Any]) -> list[Line]:
    """Start-up: CPU of each short CLI command over a bare interpreter, in CPU-seconds."""
    commands = {label: f for label, f in r["commands"].items() if label != r["baseline"]}
    excess = ", ".join(f"{label} +{f['excess_cpu_s']:.2f}" for label, f in commands.items())
    base = r["commands"][r["baseline"]]["median_cpu_s"]
    return [
        Line(
            f"CLI start-up CPU over `{r['baseline']}` (`{r['cli']}`, median of {r['repeats']})",
            f"{excess} CPU-s ({r['baseline']}: {base:.2f} CPU-s)",
            target=f"<= {r['target_excess_cpu_s']:.1f} CPU-s over",
            verdict=_verdict(r["pass"]),
        )
    ]


S5_LABELS = {
    "processes_2": "S5 [limits] processes = 2 (no Ray)",
    "ray_1cpu": "S5 local Ray, 1 CPU",
    "ray_2cpu": "S5 local Ray, 2 CPUs",
    "ray_2cpu_2shards": "S5 local Ray, 2 CPUs, shards = 2",
}


def s5_lines(r: dict[str, Any]) -> list[Line]:
    """S5: the S1 job on a local Ray of 1 and 2 CPUs against `processes = 2`, every process's
    CPU counted; the Ray start-up apart."""
    if "skipped" in r:
        return [Line("S5 S1 job on local Ray", r["skipped"], verdict="SKIP")]
    ref = r["variants"]["processes_2"]

    def figures(f: dict[str, Any]) -> str:
        text = f"{f['rows_per_s']:,.0f} rows/s, {f['cpu_s_per_1k_rows']:.2f} CPU-s/1k rows all processes"
        if f.get("shards"):
            text += (
                f", {f['shards']} shards; Ray start-up {f['ray_start_wall_s']:.1f} s, "
                f"{f['ray_start_cpu_s']:.1f} CPU-s ({f['rows_per_s_with_start']:,.0f} rows/s with it)"
            )
        return text + f" ({f['ok']:,} ok)"

    lines = []
    for key, f in r["variants"].items():
        label = f"{S5_LABELS.get(key, key)} ({r['rows']:,} rows, c={r['concurrency']})"
        is_ref = key == "processes_2"
        lines.append(
            Line(
                label,
                figures(f),
                "-" if is_ref else f"processes = 2: {ref['rows_per_s']:,.0f} rows/s",
                "-"
                if is_ref
                else f"{_x(f['ratio_rows_per_s'])} rows/s ({_x(f['ratio_rows_per_s_with_start'])} with start-up), "
                f"{_x(f['ratio_cpu_per_row'])} CPU/row",
                "all rows ok (no speed target)",
                _verdict(f["correct"]),
            )
        )
    return lines


def error_line(scenario: str, exc: BaseException) -> Line:
    """The line of a scenario that could not be run."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Line(scenario, f"ERROR: {text}", verdict="ERROR")


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
