"""Vega-Lite chart specs (built with altair) from the report's aggregated data.

`chart_specs(data)` maps a chart's name to its Vega-Lite dict; `data` is what
htmlreport.gather returns (JSON-ready lists of a few hundred rows each). A chart whose data is
empty is left out (the page says there is nothing to show). The same functions serve any page
that draws these charts from fresh data (a live view can call `chart_specs` on each refresh).

Colours: each model-and-mode series keeps one colour in every chart (`series_colors`), and each
error code likewise, so a model or a code reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

PALETTE = (
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#b279a2",
    "#eeca3b",
    "#9d755d",
    "#ff9da6",
    "#bab0ac",
)
WIDTH = 520
HEIGHT = 220
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CONFIG: dict[str, Any] = {
    "font": FONT,
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 12, "titleFontWeight": 500, "gridColor": "#eceff3"},
    "legend": {"labelFontSize": 11, "titleFontSize": 12, "orient": "bottom", "columns": 4},
    "title": {"fontSize": 14, "fontWeight": 600, "anchor": "start", "offset": 10},
}

# name -> (title, builder); the order is the page's.
Builder = Callable[[Mapping[str, Any]], Any]


def _alt() -> Any:
    import altair as alt

    return alt


def _scale(domain: Sequence[str]) -> Any:
    alt = _alt()
    return alt.Scale(domain=list(domain), range=[PALETTE[i % len(PALETTE)] for i in range(len(domain))])


def _base(values: list[dict[str, Any]], title: str) -> Any:
    alt = _alt()
    return alt.Chart(alt.Data(values=values), title=title, width=WIDTH, height=HEIGHT)


def cost_by_day(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["daily"], f"Cost by day ({data['cards']['currency']})")
        .mark_bar()
        .encode(
            x=alt.X("day:O", title="Day (UTC)", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("sum(cost):Q", title=f"Cost ({data['cards']['currency']})", stack="zero"),
            color=alt.Color("series:N", title="Model · mode", scale=_scale(data["series"])),
            tooltip=["day:O", "series:N", alt.Tooltip("sum(cost):Q", title="cost", format=",.6f")],
        )
    )


def tokens_by_day(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["daily"], "Tokens by day (input + output)")
        .mark_bar()
        .encode(
            x=alt.X("day:O", title="Day (UTC)", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("sum(tokens):Q", title="Tokens", stack="zero"),
            color=alt.Color("series:N", title="Model · mode", scale=_scale(data["series"])),
            tooltip=["day:O", "series:N", alt.Tooltip("sum(input_tokens):Q", title="input", format=","),
                     alt.Tooltip("sum(output_tokens):Q", title="output", format=","),
                     alt.Tooltip("sum(cached_tokens):Q", title="cached", format=",")],
        )
    )  # fmt: skip


def _run_line(data: Mapping[str, Any], field: str, title: str, axis: str) -> Any:
    alt = _alt()
    line = (
        _base(data["timeline"], title)
        .mark_line(interpolate="step-after", strokeWidth=1.6)
        .encode(
            x=alt.X("t:Q", title="Seconds since the run started", scale=alt.Scale(zero=True)),
            y=alt.Y(f"{field}:Q", title=axis),
            color=alt.Color("run:N", title="Run", scale=_scale(data["run_labels"])),
            tooltip=["run:N", alt.Tooltip("t:Q", title="s"), alt.Tooltip(f"{field}:Q", format=",.2f")],
        )
    )
    ends = (
        alt.Chart(alt.Data(values=data["run_ends"]))
        .mark_rule(strokeDash=[4, 3], strokeWidth=1)
        .encode(x="end:Q", color=alt.Color("run:N", scale=_scale(data["run_labels"]), legend=None),
                tooltip=["run:N", alt.Tooltip("end:Q", title="ended at s"), "exit:N", "status:N", "started:N"])
    )  # fmt: skip
    return alt.layer(line, ends)


def run_rate(data: Mapping[str, Any]) -> Any:
    return _run_line(data, "rows_per_s", "Each run: rows finished per second (dashed: run end)", "Rows / s")


def run_throttling(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["throttling"], "Each run: 429 answers and retries per minute")
        .mark_line(interpolate="step-after", strokeWidth=1.6)
        .encode(
            x=alt.X("t:Q", title="Seconds since the run started", scale=alt.Scale(zero=True)),
            y=alt.Y("per_min:Q", title="Per minute"),
            color=alt.Color("run:N", title="Run", scale=_scale(data["run_labels"])),
            strokeDash=alt.StrokeDash("what:N", title="Counted"),
            tooltip=["run:N", "what:N", alt.Tooltip("t:Q", title="s"), alt.Tooltip("per_min:Q", format=",.1f")],
        )
    )


def run_in_flight(data: Mapping[str, Any]) -> Any:
    return _run_line(data, "in_flight", "Each run: requests in flight (mean over each step)", "Requests in flight")


def latency(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    bars = (
        _base(data["latency"], "Latency of answered requests (p50 / p90 / p99 marked)")
        .mark_bar(color=PALETTE[0], binSpacing=0)
        .encode(
            x=alt.X("start:Q", bin="binned", title="Latency (ms)"),
            x2="end:Q",
            y=alt.Y("n:Q", title="Requests"),
            tooltip=[alt.Tooltip("start:Q", title="from ms"), alt.Tooltip("end:Q", title="to ms"), "n:Q"],
        )
    )
    marks = alt.Chart(alt.Data(values=data["latency_marks"]))
    rules = marks.mark_rule(color="#e45756", strokeWidth=1.5).encode(x="ms:Q", tooltip=["label:N", "ms:Q"])
    text = marks.mark_text(align="left", dx=3, dy=-4, color="#e45756", fontSize=11).encode(
        x="ms:Q", y=alt.Y("y:Q", scale=None), text="label:N"
    )
    return alt.layer(bars, rules, text)


def _tokens_hist(kind: str) -> Builder:
    def build(data: Mapping[str, Any]) -> Any:
        alt = _alt()
        rows = [r for r in data["token_bins"] if r["kind"] == kind]
        low, high = min(r["start"] for r in rows), max(r["end"] for r in rows)
        pad = 5 * (high - low) if len(rows) < 3 else 0  # one or two bins: show them as bars, not a wall
        scale = alt.Scale(domain=[max(0, low - pad), high + pad]) if pad else alt.Scale(zero=False)
        return (
            _base(rows, f"{kind.capitalize()} tokens per answered row")
            .mark_bar(color=PALETTE[0 if kind == "input" else 1], binSpacing=0)
            .encode(
                x=alt.X("start:Q", bin="binned", title=f"{kind.capitalize()} tokens", scale=scale),
                x2="end:Q",
                y=alt.Y("rows:Q", title="Rows"),
                tooltip=[alt.Tooltip("start:Q", title="from"), alt.Tooltip("end:Q", title="to"), "rows:Q"],
            )
        )

    return build


def errors_by_code(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["errors"], f"Errors by code over time ({data['errors_step']} steps)")
        .mark_bar()
        .encode(
            x=alt.X("t:T", title="Time (UTC)", axis=alt.Axis(format="%m-%d %H:%M:%S", labelOverlap=True)),
            y=alt.Y("n:Q", title="Failed attempts", stack="zero"),
            color=alt.Color("code:N", title="Error code", scale=_scale(data["codes"])),
            tooltip=[alt.Tooltip("t:T", format="%Y-%m-%d %H:%M:%S"), "code:N", "n:Q"],
        )
    )


def failed_rows(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["failed_rows"], "Rows that failed most (attempts per row)")
        .mark_bar()
        .encode(
            y=alt.Y("row:N", title="Row id", sort="-x"),
            x=alt.X("attempts:Q", title="Attempts"),
            color=alt.Color("code:N", title="Error code", scale=_scale(data["codes"])),
            tooltip=["row:N", "code:N", "message:N", "attempts:Q"],
        )
    )


def cache_hit_rate(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    return (
        _base(data["cache"], f"Cache hit rate over time ({data['cache_step']} steps)")
        .mark_line(point=True, color=PALETTE[2])
        .encode(
            x=alt.X("t:T", title="Time (UTC)", axis=alt.Axis(format="%m-%d %H:%M:%S", labelOverlap=True)),
            y=alt.Y("rate:Q", title="Cached / input tokens", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            tooltip=[alt.Tooltip("t:T", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip("rate:Q", format=".1%"),
                     alt.Tooltip("input_tokens:Q", format=","), alt.Tooltip("cached_tokens:Q", format=",")],
        )
    )  # fmt: skip


def expensive_rows(data: Mapping[str, Any]) -> Any:
    alt = _alt()
    currency = data["cards"]["currency"]
    return (
        _base(data["expensive"], f"The {len(data['expensive'])} most expensive rows ({currency}, all attempts)")
        .mark_bar()
        .encode(
            y=alt.Y("row:N", title="Row id", sort="-x"),
            x=alt.X("cost:Q", title=f"Cost ({currency})"),
            color=alt.Color("series:N", title="Model · mode", scale=_scale(data["series"])),
            tooltip=["row:N", "series:N", alt.Tooltip("cost:Q", format=",.6f"), "input_tokens:Q", "output_tokens:Q"],
        )
    )


# A shard's state -> its colour in the Shards chart (a state not named here: grey-brown).
STATE_COLORS = {
    "merged": "#54a24b",
    "running": "#4c78a8",
    "planned": "#bab0ac",
    "failed": "#e45756",
    "outage": "#b279a2",
    "budget": "#eeca3b",
    "interrupted": "#f58518",
}
SHARDS = "shards"  # drawn only for a sharded job, so not in CHARTS (every page has those)


def shards(data: Mapping[str, Any]) -> Any:
    """Rows done per shard, coloured by state, over a pale bar of the shard's rows."""
    alt = _alt()
    rows = data["shards"]
    order = list(STATE_COLORS)
    states = sorted({r["state"] for r in rows}, key=lambda s: (order.index(s) if s in order else len(order), s))
    scale = alt.Scale(domain=states, range=[STATE_COLORS.get(s, "#9d755d") for s in states])
    labels = [r["label"] for r in rows]
    x = alt.X("label:N", title="Shard", sort=labels, axis=alt.Axis(labels=len(rows) <= 60, labelAngle=-45))
    tooltip = ["label:N", "state:N", "node_short:N", alt.Tooltip("rows_done:Q", format=","),
               alt.Tooltip("rows:Q", format=","), alt.Tooltip("ok:Q", format=","),
               alt.Tooltip("failed:Q", format=","), alt.Tooltip("cost:Q", title="cost", format=",.6f")]  # fmt: skip
    color = alt.Color("state:N", title="State", scale=scale, legend=alt.Legend(symbolOpacity=1))
    base = _base(rows, "Rows done per shard, by state (pale: the shard's rows)")
    planned = base.mark_bar(opacity=0.25).encode(x=x, y=alt.Y("rows:Q", title="Rows"), color=color, tooltip=tooltip)
    done = base.mark_bar().encode(x=x, y="rows_done:Q", color=color, tooltip=tooltip)
    return alt.layer(planned, done)


# name -> (data key that must be non-empty, builder), in the page's order
CHARTS: dict[str, tuple[str, Builder]] = {
    "cost_by_day": ("daily", cost_by_day),
    "tokens_by_day": ("daily", tokens_by_day),
    "run_rate": ("timeline", run_rate),
    "run_throttling": ("throttling", run_throttling),
    "run_in_flight": ("timeline", run_in_flight),
    "latency": ("latency", latency),
    "input_tokens": ("token_bins", _tokens_hist("input")),
    "output_tokens": ("token_bins", _tokens_hist("output")),
    "errors_by_code": ("errors", errors_by_code),
    "failed_rows": ("failed_rows", failed_rows),
    "cache_hit_rate": ("cache", cache_hit_rate),
    "expensive_rows": ("expensive", expensive_rows),
}
EMPTY = {
    "daily": "No usage recorded.",
    "timeline": "No runs with attempts.",
    "throttling": "No runs with attempts.",
    "latency": "No answered requests.",
    "token_bins": "No answered rows.",
    "errors": "No errors: every attempt was answered.",
    "failed_rows": "No failed rows.",
    "cache": "No input tokens recorded.",
    "expensive": "No priced rows.",
}


def chart_specs(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Chart name -> Vega-Lite dict, for every chart with data (see CHARTS for the names)."""
    specs: dict[str, dict[str, Any]] = {}
    for name, (key, build) in CHARTS.items():
        rows = data.get(key) or []
        if name.endswith("_tokens"):
            rows = [r for r in rows if r["kind"] == name.removesuffix("_tokens")]
        if rows:
            specs[name] = build(data).configure(**CONFIG).to_dict()
    if data.get(SHARDS):
        specs[SHARDS] = shards(data).configure(**CONFIG).to_dict()
    return specs


def empty_note(name: str) -> str:
    """What the page says where the chart `name` has no data."""
    return EMPTY[CHARTS[name][0]]
