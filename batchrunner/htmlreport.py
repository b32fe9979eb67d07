"""`batchrunner report --format html`: one self-contained HTML page of cards and charts.

`gather` reads the stores (report.build for the cards and the daily sums, so the cards equal the
text report's totals; store/charts.py for the rest, aggregated by SQLite) into small JSON-ready
lists; `charts.chart_specs` turns them into Vega-Lite; `htmlpage.page` puts cards, specs and the
Vega bundle into one file. Needs the `html` extra (altair, vl-convert-python): `require` says so
before anything is read or written.

`--since` / `--until` bound the cards and the daily charts (as in the text report); the charts
over time (runs, errors, cache, latency, tokens per row, rows) cover every run in the stores,
and the Shards section (only for jobs sharded over Ray) each job's current manifest.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import report as reporting
from . import shardviews
from .errors import BatchRunnerError
from .pricing import CURRENCY, PriceTable, format_usd
from .store import Store
from .store import charts as queries

MAX_RUNS = 12  # the runs drawn over time: the latest ones
TIME_BUCKETS = 150  # errors and cache hit rate over time
BINS = 40  # histogram bins
TOP = 20
BATCH_MODES = ("batch", "batch-chat")


def require(what: str = "--format html") -> None:
    """Raise BatchRunnerError (exit 2) unless altair and vl-convert-python are installed; `what`
    names the option that needs them."""
    missing = [name for name, mod in (("altair", "altair"), ("vl-convert-python", "vl_convert")) if not _has(mod)]
    if missing:
        msg = f"{what} needs {' and '.join(missing)}: install the html extra, pip install 'batchrunner[html]'"
        raise BatchRunnerError(msg)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def nice(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at least `value` (a bin or step width)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _step_text(ms: int) -> str:
    s = ms // 1000
    return (
        f"{s // 86400} d"
        if s >= 86400
        else f"{s // 3600} h"
        if s >= 3600
        else f"{s // 60} min"
        if s >= 60
        else f"{s} s"
    )


def _series(model: Any, mode: Any) -> str:
    return f"{model or '?'} · {mode or 'online'}"


# --------------------------------------------------------------------------- cards


def cards(built: reporting.Report) -> dict[str, Any]:
    """The summary figures: the text report's totals (exact strings in `exact`), plus pending
    and skipped rows (each job's latest run) and what batch mode saved."""
    t = built.totals
    pending = skipped = 0
    for path in built.stores:
        with Store(path, readonly=True) as store:
            if not queries.has_slim_tables(store.conn):
                continue
            done = queries.settled_by_job(store.conn)
            for run in queries.latest_runs(store.conn):
                skipped += run["skipped"]
                pending += max(0, run["rows_total"] - run["skipped"] - done.get(run["job"], 0))
    discount = PriceTable.load().meta.batch_discount
    mode_at = built.by.index("mode")
    batch_paid = sum((r.cost_pusd or 0) for r in built.rows if r.group[mode_at] in BATCH_MODES)
    batch_saved = round(Decimal(batch_paid) * (1 / Decimal(discount) - 1)) if discount else 0
    money = {"cost_usd": t.cost_pusd, "cache_saved_usd": t.saved_pusd, "batch_saved_usd": batch_paid and batch_saved}
    return {
        "currency": CURRENCY,
        "ok": t.ok,
        "failed": t.failed,
        "pending": pending,
        "skipped": skipped,
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cached_tokens": t.cached_tokens,
        "reasoning_tokens": t.reasoning_tokens,
        "unpriced_requests": t.unpriced_requests,
        "money": {k: None if v is None else format_usd(v, 12) for k, v in money.items()},
        "money_shown": {k: None if v is None else format_usd(v, 6) for k, v in money.items()},
        "batch_discount": str(discount),
        "price_versions": list(built.price_versions),
    }


# --------------------------------------------------------------------------- charts' data


def _runs(stores: Sequence[Store], many: bool) -> tuple[list[dict[str, Any]], ...]:
    found: list[tuple[Store, dict[str, Any]]] = []
    for store in stores:
        found += [(store, run) for run in queries.runs(store.conn) if run["start_ms"] is not None]
    found = sorted(found, key=lambda sr: sr[1]["start_ms"])[-MAX_RUNS:]
    timeline: list[dict[str, Any]] = []
    throttling: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    labels: list[str] = []
    for store in stores:
        mine = [run for s, run in found if s is store]
        for run in mine:
            run["bucket_ms"] = queries.bucket_ms(max(1000, (run["end_ms"] or run["start_ms"]) - run["start_ms"]))
        by_id = {run["id"]: run for run in mine}
        for run in mine:
            exit_code = "-" if run["exit_code"] is None else run["exit_code"]
            where = f"{store.path.stem} " if many else ""
            run["label"] = f"{where}{run['job'] or ''} #{run['id']} (exit {exit_code})".strip()
            labels.append(run["label"])
            end = ((run["end_ms"] or run["start_ms"]) - run["start_ms"]) / 1000
            ends.append({"run": run["label"], "end": end, "exit": str(exit_code), "status": run["status"],
                         "started": _iso(run["start_ms"])})  # fmt: skip
        for row in queries.run_timelines(store.conn, mine):
            run = by_id[row["run_id"]]
            b = run["bucket_ms"]
            t = row["bucket"] * b / 1000
            timeline.append({"run": run["label"], "t": t, "rows_per_s": row["done"] * 1000 / b,
                             "in_flight": (row["busy_ms"] or 0) / b})  # fmt: skip
            for what, n in (("429 answers", row["throttled"]), ("retries", row["retries"])):
                throttling.append({"run": run["label"], "t": t, "what": what, "per_min": n * 60_000 / b})
    return timeline, throttling, ends, [{"label": x} for x in labels]


def _latency(stores: Sequence[Store]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    counts: dict[int, int] = {}
    for store in stores:
        for ms, n in queries.latency_counts(store.conn):
            counts[ms] = counts.get(ms, 0) + n
    if not counts:
        return [], []
    total = sum(counts.values())
    marks: list[dict[str, Any]] = []
    seen, wanted = 0, [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")]
    for ms in sorted(counts):
        seen += counts[ms]
        while wanted and seen >= wanted[0][0] * total:
            name = wanted.pop(0)[1]
            marks.append({"label": f"{name} {ms:,} ms", "ms": ms, "q": name, "y": 10 + 14 * len(marks)})
    width = nice(max(counts) / BINS)
    bins: dict[int, int] = {}
    for ms, n in counts.items():
        bins[ms // width * width] = bins.get(ms // width * width, 0) + n
    return [{"start": s, "end": s + width, "n": n} for s, n in sorted(bins.items())], marks


def _token_bins(stores: Sequence[Store]) -> list[dict[str, Any]]:
    ranges = [queries.token_range(s.conn) for s in stores]

    def width(low: int, high: int) -> int:
        lows = [r[low] for r in ranges]
        return nice((max((r[high] for r in ranges), default=0) - min(lows, default=0)) / BINS)

    w_in, w_out = width(0, 1), width(2, 3)
    merged: dict[tuple[str, int], int] = {}
    for store in stores:
        for row in queries.token_bins(store.conn, w_in, w_out):
            merged[(row["kind"], row["start"])] = merged.get((row["kind"], row["start"]), 0) + row["rows"]
    widths = {"input": w_in, "output": w_out}
    return [{"kind": k, "start": s, "end": s + widths[k], "rows": n} for (k, s), n in sorted(merged.items())]


def _over_time(stores: Sequence[Store]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    spans = [queries.time_span(s.conn) for s in stores]
    firsts = [a for a, _ in spans if a is not None]
    lasts = [b for _, b in spans if b is not None]
    if not firsts:
        return [], [], 1000
    step = queries.bucket_ms(max(lasts) - min(firsts) + 1, TIME_BUCKETS)
    errors: dict[tuple[int, str], int] = {}
    cache: dict[int, list[int]] = {}
    for store in stores:
        for row in queries.errors_over_time(store.conn, step):
            errors[(row["t"], row["code"])] = errors.get((row["t"], row["code"]), 0) + row["n"]
        for row in queries.cache_over_time(store.conn, step):
            sums = cache.setdefault(row["t"], [0, 0])
            sums[0] += row["input_tokens"] or 0
            sums[1] += row["cached_tokens"] or 0
    error_rows = [{"t": _iso(t), "code": code, "n": n} for (t, code), n in sorted(errors.items())]
    cache_rows = [
        {"t": _iso(t), "rate": c / i, "input_tokens": i, "cached_tokens": c} for t, (i, c) in sorted(cache.items()) if i
    ]
    return error_rows, cache_rows, step


def _unique(rows: list[dict[str, Any]]) -> None:
    """Give each row a distinct `row` label (its row id, with its key's start where ids repeat)."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[str(r["row_id"])] = seen.get(str(r["row_id"]), 0) + 1
    for r in rows:
        r["row"] = str(r["row_id"]) if seen[str(r["row_id"])] == 1 else f"{r['row_id']} ({r['key'][:8]})"


def gather(paths: Sequence[Path], since: date | None = None, until: date | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values (see the module docstring)."""
    # One pass over the stores (report.build is the slow part): its totals do not depend on the grouping.
    built = reporting.build(paths, ("day", "model", "mode"), since, until)
    data: dict[str, Any] = {"cards": cards(built), "stores": [str(p) for p in built.stores]}
    data["since"] = since.isoformat() if since else None
    data["until"] = until.isoformat() if until else None
    daily = []
    for row in built.rows:
        day, model, mode = row.group
        daily.append({"day": day or "?", "series": _series(model, mode), "cost": (row.cost_pusd or 0) / 1e12,
                      "tokens": row.input_tokens + row.output_tokens, "input_tokens": row.input_tokens,
                      "output_tokens": row.output_tokens, "cached_tokens": row.cached_tokens})  # fmt: skip
    data["daily"] = daily
    data["shards"] = shardviews.html_rows(built.shards, len(built.stores) > 1)  # none: no Shards section
    stores = [Store(p, readonly=True) for p in built.stores]
    try:
        slim = [s for s in stores if queries.has_slim_tables(s.conn)]
        data["older_stores"] = [str(s.path) for s in stores if s not in slim]
        timeline, throttling, ends, labels = _runs(slim, len(slim) > 1)
        data.update(timeline=timeline, throttling=throttling, run_ends=ends)
        data["run_labels"] = [x["label"] for x in labels]
        data["latency"], data["latency_marks"] = _latency(slim)
        data["token_bins"] = _token_bins(slim)
        data["errors"], data["cache"], step = _over_time(slim)
        data["errors_step"] = data["cache_step"] = _step_text(step)
        failed = [row for s in slim for row in queries.failed_rows(s.conn, TOP)]
        failed = sorted(failed, key=lambda r: -(r["attempts"] or 0))[:TOP]
        expensive = [row for s in slim for row in queries.expensive_rows(s.conn, TOP)]
        expensive = sorted(expensive, key=lambda r: -r["cost_pusd"])[:TOP]
    finally:
        for store in stores:
            store.close()
    _unique(failed)
    _unique(expensive)
    for r in failed:
        r["code"] = r["code"] or "?"
    for r in expensive:
        r.update(series=_series(r["model"], r["mode"]), cost=r["cost_pusd"] / 1e12)
    data["failed_rows"], data["expensive"] = failed, expensive
    series = {d["series"] for d in daily} | {r["series"] for r in expensive}
    data["series"] = sorted(series)
    data["codes"] = sorted({e["code"] for e in data["errors"]} | {r["code"] for r in failed})
    return data


def write_html(
    paths: Sequence[Path], output: Path, since: date | None = None, until: date | None = None
) -> tuple[Path, int]:
    """Gather, draw and write the page to `output` (through a temporary file); (path, bytes)."""
    require()
    from . import charts, htmlpage

    data = gather(paths, since, until)
    html = htmlpage.page(data, charts.chart_specs(data))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(output)
    return output, len(html.encode("utf-8"))


def from_cli(paths: Sequence[Path], output: Path | None, since: date | None, until: date | None) -> str:
    """`report --format html`: check the extra and the output file first, then write; the line to print."""
    if output is None:
        msg = "--format html writes a file: give it with --output FILE"
        raise BatchRunnerError(msg)
    require()
    path, size = write_html(paths, output, since, until)
    return f"html report: {path} ({size / 1e6:.2f} MB)"
