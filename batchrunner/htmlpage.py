"""The page skeleton of the HTML report: cards, one div per chart, inline style, data and scripts.

`page(data, specs)` gives one self-contained HTML string: the Vega bundle of vl-convert-python
(vega, vega-lite and vega-embed; it sets window.vegaEmbed) inlined once, the chart specs as
JSON, and a small script that draws each chart as SVG into its div (`div.chart[data-chart=name]`).
Nothing is fetched: the file opens from disk with the network off.

With `data_url`, the page also fetches that URL every `refresh_s` seconds for a JSON object
`{"cards": <cards_html(data)>, "specs": <chart_specs(data)>}` and draws it again, so a live
view can serve this same page and refresh it from its own endpoint.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Mapping
from typing import Any

from . import shardviews
from .charts import CHARTS, SHARDS, empty_note

STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #fff; --accent: #4c78a8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 24px 32px 8px; }
h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; }
h2 { font-size: 16px; margin: 28px 32px 12px; font-weight: 600; }
.sub { color: var(--muted); font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; padding: 12px 32px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 650; margin-top: 4px; font-variant-numeric: tabular-nums; }
.card .note { color: var(--muted); font-size: 12px; margin-top: 2px; }
.card.money .value { color: var(--accent); font-size: 19px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 16px; padding: 0 32px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px; overflow-x: auto; }
.empty { color: var(--muted); padding: 24px 4px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
footer { color: var(--muted); font-size: 12px; padding: 24px 32px 40px; }
code { font-size: 12px; }
"""

SCRIPT = """
(function () {
  var opts = {renderer: "svg", actions: false, mode: "vega-lite"};
  function draw(specs) {
    var jobs = [];
    document.querySelectorAll("div.chart[data-chart]").forEach(function (div) {
      var spec = specs[div.getAttribute("data-chart")];
      if (spec) { jobs.push(window.vegaEmbed(div, spec, opts).catch(function (e) { div.textContent = String(e); })); }
    });
    return Promise.all(jobs);
  }
  var page = JSON.parse(document.getElementById("br-specs").textContent);
  draw(page.specs).then(function () {
    document.body.setAttribute("data-drawn-ms", String(Math.round(performance.now())));
  });
  var url = page.data_url, every = page.refresh_s;
  if (url && every) {
    setInterval(function () {
      fetch(url, {cache: "no-store"}).then(function (r) {
        if (!r.ok) { throw new Error(String(r.status)); }
        return r.json();
      }).then(function (fresh) {
        document.getElementById("br-cards").innerHTML = fresh.cards;
        draw(fresh.specs);
      }).catch(function () {});
    }, every * 1000);
  }
})();
"""


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script (about 0.9 MB; it sets window.vegaEmbed)."""
    import vl_convert

    # The stub names `snippet` as required; the function defaults it to vega-embed on window.
    return vl_convert.javascript_bundle().replace("</script", "<\\/script")  # type: ignore[call-arg]


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: every `<` escaped, so no `</script>` or `<!--` can end it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def _int(n: int) -> str:
    return f"{n:,}"


def _card(key: str, label: str, value: str, exact: Any, note: str = "", money: bool = False) -> str:
    cls = "card money" if money else "card"
    note_html = f'<div class="note">{html.escape(note)}</div>' if note else ""
    return (
        f'<div class="{cls}" data-key="{html.escape(key)}" data-value="{html.escape(str(exact))}">'
        f'<div class="label">{html.escape(label)}</div><div class="value">{html.escape(value)}</div>{note_html}</div>'
    )


def cards_html(data: Mapping[str, Any]) -> str:
    """The summary cards; each carries its exact figure in `data-value` (money: 12 decimals)."""
    c = data["cards"]
    cur = c["currency"]
    parts = [
        _card("ok", "Rows ok", _int(c["ok"]), c["ok"]),
        _card("failed", "Rows failed", _int(c["failed"]), c["failed"]),
        _card("pending", "Rows pending", _int(c["pending"]), c["pending"], "not yet answered (latest run)"),
        _card("skipped", "Rows skipped", _int(c["skipped"]), c["skipped"], "not sent (latest run)"),
    ]
    for key, label in (("input_tokens", "Input tokens"), ("output_tokens", "Output tokens")):
        parts.append(_card(key, label, _int(c[key]), c[key]))
    parts.append(_card("cached_tokens", "Cached tokens", _int(c["cached_tokens"]), c["cached_tokens"]))
    parts.append(_card("reasoning_tokens", "Reasoning tokens", _int(c["reasoning_tokens"]), c["reasoning_tokens"]))
    shown, exact = c["money_shown"], c["money"]
    unpriced = f"+ {c['unpriced_requests']} unpriced request(s)" if c["unpriced_requests"] else ""
    notes = {
        "cost_usd": unpriced,
        "cache_saved_usd": "against the full input price",
        "batch_saved_usd": f"batch price = {c['batch_discount']} × online",
    }
    labels = {"cost_usd": "Money spent", "cache_saved_usd": "Cache saved", "batch_saved_usd": "Batch mode saved"}
    for key, label in labels.items():
        value = "—" if shown[key] is None else f"{shown[key]} {cur}"  # the currency: smaller, by CSS
        parts.append(_card(key, label, value, "" if exact[key] is None else exact[key], notes[key], money=True))
    versions = ", ".join(c["price_versions"]) or "—"
    parts.append(_card("price_versions", "Price table", versions, versions))
    return "\n".join(parts)


def _failed_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "<tr><th>Row id</th><th>Code</th><th>Message</th><th>Attempts</th></tr>"
    body = "".join(
        f"<tr><td><code>{html.escape(str(r['row']))}</code></td><td>{html.escape(str(r['code']))}</td>"
        f"<td>{html.escape(str(r['message'] or ''))}</td><td class='num'>{r['attempts'] or 0}</td></tr>"
        for r in rows
    )
    return f'<div class="panel"><table class="failed">{head}{body}</table></div>'


def _panels(specs: Mapping[str, Any], names: tuple[str, ...]) -> str:
    out = []
    for name in names:
        if name in specs:
            out.append(f'<div class="panel"><div class="chart" data-chart="{name}"></div></div>')
        else:
            out.append(
                f'<div class="panel"><p class="empty" data-empty="{name}">{html.escape(empty_note(name))}</p></div>'
            )
    return '<div class="grid">' + "".join(out) + "</div>"


SECTIONS = (
    ("Money and tokens by day", ("cost_by_day", "tokens_by_day")),
    ("Runs over time", ("run_rate", "run_throttling", "run_in_flight")),
    ("Latency and tokens per row", ("latency", "input_tokens", "output_tokens")),
    ("Errors", ("errors_by_code", "failed_rows")),
    ("Cache and the costliest rows", ("cache_hit_rate", "expensive_rows")),
)
assert {n for _, names in SECTIONS for n in names} == set(CHARTS)


def page(
    data: Mapping[str, Any],
    specs: Mapping[str, Any],
    *,
    title: str = "batchrunner report",
    data_url: str | None = None,
    refresh_s: float | None = None,
    cards: str | None = None,
) -> str:
    """The whole page (see the module docstring); `cards` replaces the summary cards' HTML."""
    stores = data.get("stores", [])
    bounds = " · ".join(f"{k} {data[k]}" for k in ("since", "until") if data.get(k))
    sub = f"{len(stores)} store(s)" + (f" · {bounds}" if bounds else "") + f" · money in {data['cards']['currency']}"
    body = [f"<header><h1>{html.escape(title)}</h1><div class='sub'>{html.escape(sub)}</div></header>"]
    body.append(f'<section class="cards" id="br-cards">{cards_html(data) if cards is None else cards}</section>')
    for heading, names in SECTIONS:
        body.append(f"<h2>{html.escape(heading)}</h2>{_panels(specs, names)}")
        if "failed_rows" in names:
            body.append(f'<div class="grid" style="margin-top:16px">{_failed_table(data.get("failed_rows", []))}</div>')
    if data.get("shards"):  # a job sharded over Ray: its shards (a job never sharded has no section)
        body.append(f"<h2>Shards</h2>{_panels(specs, (SHARDS,))}{shardviews.html_table(data['shards'])}")
    older = data.get("older_stores") or []
    note = f" Stores older than the slim tables are in the cards only: {', '.join(older)}." if older else ""
    footer = "Stores: " + ", ".join(stores) + "." + note
    body.append(f"<footer>{html.escape(footer)}</footer>")
    state = {"specs": specs, "data_url": data_url, "refresh_s": refresh_s}
    bundle = vega_bundle()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + f'<script type="application/json" id="br-specs">{_script_json(state)}</script>'
        + f"<script>{bundle}</script><script>{SCRIPT}</script></body></html>\n"
    )
