"""A sharded job (`run --engine ray`) seen as one, with a per-shard breakdown: the lines `status`
adds, the table and the json list `report` adds, and the rows and table of the HTML report's
Shards section. Everything reads the job's manifest (Store.shards, store/shards.py); a job
never sharded has no shards and gets nothing from here, so its views stay as they were.

A shard's counts are what its manifest row holds: the driver writes them when the shard's task
ends, so a shard still running shows what it had done when it last ended (nothing on its first
try); the job's own `results` line counts the merged rows. Shards that need a look are those
not merged with exit 0; they come first, the worst first (failed, outage, budget, interrupted).

Free of the price table and of altair, so that `status` starts at once.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

STATUS_LINES = 20  # `status`: at most this many shards listed
REPORT_ROWS = 50  # `report` and the HTML table: at most this many shards, the rest summed in one line
MESSAGE_CHARS = 160
# Where a state sorts among the shards that need a look (a state not named here: after interrupted).
_RANK = {"failed": 0, "outage": 1, "budget": 2, "interrupted": 3, "merged": 5, "running": 6, "planned": 7}
# Where a state comes in a summary's counts.
_SHOWN = ("merged", "running", "planned", "failed", "outage", "budget", "interrupted")
SUMMED = ("rows", "rows_done", "sent", "ok", "failed", "input_tokens", "output_tokens", "cost_pusd")


@dataclass(frozen=True, slots=True)
class JobShards:
    """The shards of one job in one store, in order (never empty)."""

    store: Path
    job: str
    shards: tuple[dict[str, Any], ...]


def read(store: Any, jobs: Iterable[str] | None = None) -> list[JobShards]:
    """The sharded jobs of an open Store (those of `jobs`, or all) with their shards."""
    found = []
    for job in store.sharded_jobs() if jobs is None else jobs:
        shards = tuple(store.shards(job))
        if shards:
            found.append(JobShards(Path(store.path), job, shards))
    return found


def needs_look(shard: dict[str, Any]) -> bool:
    """Every shard but those merged with exit 0."""
    return not (shard["state"] == "merged" and shard["exit_code"] == 0)


def _worst_first(shard: dict[str, Any]) -> tuple[int, int]:
    return _RANK.get(shard["state"], 4), shard["shard"]


def usd(pusd: int | None, places: int = 6) -> str:
    return f"{Decimal(pusd or 0).scaleb(-12):.{places}f}"


def rows_text(first: int, end: int) -> str:
    """Input rows first .. end-1 (0-based), as people read them."""
    return f"{first:,}-{end - 1:,}" if end > first else "none"


def short_node(node: str | None) -> str:
    """A node as a column can hold it: a Ray node id (56 hex digits) cut to 8, as git does."""
    if not node:
        return "-"
    hexadecimal = all(c in "0123456789abcdef" for c in node.lower())
    return node[:8] if hexadecimal and len(node) > 12 else node[:24]


def one_line(message: str | None) -> str:
    text = " ".join((message or "").split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def state_text(shard: dict[str, Any]) -> str:
    code = shard["exit_code"]
    return shard["state"] if code in (None, 0) else f"{shard['state']}, exit {code}"


def totals(shards: Iterable[dict[str, Any]]) -> dict[str, int]:
    sums = dict.fromkeys(SUMMED, 0)
    for s in shards:
        for name in SUMMED:
            sums[name] += s["end_row"] - s["first_row"] if name == "rows" else s[name] or 0
    return sums


def _counted(shards: Sequence[dict[str, Any]]) -> str:
    states = Counter(s["state"] for s in shards)
    order = sorted(states, key=lambda st: (_SHOWN.index(st) if st in _SHOWN else len(_SHOWN), st))
    parts = []
    for state in order:
        text = f"{states[state]} {state}"
        bad = sum(1 for s in shards if s["state"] == state == "merged" and s["exit_code"] != 0)
        parts.append(text + (f" ({bad} exited non-zero)" if bad else ""))
    return ", ".join(parts)


def headline(shards: Sequence[dict[str, Any]]) -> str:
    """`12 over rows 0-999,999: 9 merged, 2 running, 1 failed`."""
    span = rows_text(min(s["first_row"] for s in shards), max(s["end_row"] for s in shards))
    return f"{len(shards)} over rows {span}: {_counted(shards)}"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool], indent: str, *, rules: bool = False
) -> list[str]:
    """Aligned lines (trailing blanks cut); with `rules`, a rule under the header and above the last line."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True)]
        return (indent + "  ".join(padded)).rstrip()

    lines = [line(header), *(line(r) for r in rows)]
    if rules:
        rule = indent + "  ".join("-" * w for w in widths)
        lines = [lines[0], rule, *lines[1:-1], rule, lines[-1]]
    return lines


# --------------------------------------------------------------------------- status


def status_lines(shards: Sequence[dict[str, Any]]) -> list[str]:
    """What `status` adds for a sharded job (nothing for a job never sharded): a summary, the
    sums of the shards, and one line per shard that needs a look, the worst first."""
    if not shards:
        return []
    t = totals(shards)
    lines = [
        f"shards: {headline(shards)}",
        f"  as the shards last reported: done {t['rows_done']:,} of {t['rows']:,} rows, ok {t['ok']:,}, "
        f"failed {t['failed']:,}, cost {usd(t['cost_pusd'])} USD",
    ]
    needy = sorted((s for s in shards if needs_look(s)), key=_worst_first)
    if not needy:
        return lines
    header = ("shard", "rows", "state", "node", "done/rows", "ok", "failed", "cost_usd", "tries", "message")
    rows = [
        (
            str(s["shard"]),
            rows_text(s["first_row"], s["end_row"]),
            state_text(s),
            short_node(s["node"]),
            f"{s['rows_done']:,}/{s['end_row'] - s['first_row']:,}",
            f"{s['ok']:,}",
            f"{s['failed']:,}",
            usd(s["cost_pusd"]),
            str(s["tries"]),
            one_line(s["message"]),
        )
        for s in needy[:STATUS_LINES]
    ]
    numeric = (True, False, False, False, True, True, True, True, True, False)
    lines += _table(header, rows, numeric, "  ")
    more = needy[STATUS_LINES:]
    if more:
        lines.append(
            f"  ... and {len(more)} more ({_counted(more)}); `batchrunner report JOB --format json` lists every shard"
        )
    return lines


# --------------------------------------------------------------------------- report


def pick(
    shards: Sequence[dict[str, Any]], limit: int = REPORT_ROWS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(shown, rest): all shards when there are at most `limit`; else those that need a look,
    then the costliest, `limit` in all, in shard order; the rest are summed in one line."""
    if len(shards) <= limit:
        return list(shards), []
    chosen = sorted(shards, key=lambda s: (not needs_look(s), -(s["cost_pusd"] or 0), s["shard"]))[:limit]
    ids = {s["shard"] for s in chosen}
    return sorted(chosen, key=lambda s: s["shard"]), [s for s in shards if s["shard"] not in ids]


def _cells(label: str, rows: str, state: str, node: str, t: dict[str, int]) -> tuple[str, ...]:
    counts = (t["rows_done"], t["ok"], t["failed"], t["input_tokens"], t["output_tokens"])
    return (label, rows, state, node, *(f"{n:,}" for n in counts), usd(t["cost_pusd"]))


def report_text(found: Sequence[JobShards]) -> str:
    """The per-shard tables `report` (table format) adds after its own: one per sharded job."""
    out: list[str] = []
    header = ("shard", "rows", "state", "node", "done", "ok", "failed", "input_tokens", "output_tokens", "cost_usd")
    numeric = (True, False, False, False, True, True, True, True, True, True)
    for js in found:
        shown, rest = pick(js.shards)
        rows = [
            _cells(str(s["shard"]), rows_text(s["first_row"], s["end_row"]), state_text(s), short_node(s["node"]),
                  totals([s]))
            for s in shown
        ]  # fmt: skip
        if rest:
            rows.append(_cells(f"+{len(rest)}", "", _counted(rest), "", totals(rest)))
        rows.append(_cells("TOTAL", "", "", "", totals(js.shards)))
        out += ["", f"Shards of job {js.job} ({js.store}): {headline(js.shards)}"]
        out += _table(header, rows, numeric, "", rules=True)
        if rest:
            out.append(
                f"{len(shown)} of {len(js.shards)} shards shown (those that need a look, then the costliest); "
                f"the line +{len(rest)} sums the others. --format json lists every shard."
            )
    return "\n".join(out) + "\n" if out else ""


def json_rows(found: Sequence[JobShards]) -> list[dict[str, Any]]:
    """Every shard of every sharded job, for `report --format json` (money: exact USD strings)."""
    rows = []
    for js in found:
        for s in js.shards:
            row = {"store": str(js.store), "job": js.job, **s, "rows": s["end_row"] - s["first_row"]}
            row["cost_usd"] = usd(row.pop("cost_pusd"), 12)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- HTML report


def html_rows(found: Sequence[JobShards], many_stores: bool) -> list[dict[str, Any]]:
    """One JSON-ready dict per shard for the HTML report's chart and table."""
    rows = []
    for js in found:
        where = f"{js.store.stem} " if many_stores else ""
        for s in js.shards:
            label = f"{where}{js.job} #{s['shard']}"
            rows.append({**s, "job": f"{where}{js.job}", "label": label, "rows": s["end_row"] - s["first_row"],
                         "node_short": short_node(s["node"]), "cost": (s["cost_pusd"] or 0) / 1e12})  # fmt: skip
    return rows


def html_table(rows: Sequence[dict[str, Any]]) -> str:
    """The Shards section's tables (one per job, at most REPORT_ROWS rows each), as HTML."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        jobs.setdefault(r["job"], []).append(r)
    heads = ("Shard", "Rows", "State", "Node", "Done", "Ok", "Failed", "Input tokens", "Output tokens", "Cost (USD)")
    out = []
    for job, shards in jobs.items():
        shown, rest = pick(shards)
        head = "".join(f"<th>{h}</th>" for h in (*heads, "Message"))
        body = []
        for s in shown:
            cells = [str(s["shard"]), rows_text(s["first_row"], s["end_row"]), state_text(s), s["node_short"]]
            nums = [f"{s[k]:,}" for k in ("rows_done", "ok", "failed", "input_tokens", "output_tokens")]
            body.append(
                f"<tr data-shard='{s['shard']}' data-state='{html.escape(s['state'])}'>"
                + "".join(f"<td style='white-space: nowrap'>{html.escape(c)}</td>" for c in cells)
                + "".join(f"<td class='num'>{n}</td>" for n in [*nums, usd(s["cost_pusd"])])
                + f"<td>{html.escape(one_line(s['message']))}</td></tr>"
            )
        note = ""
        if rest:
            t = totals(rest)
            note = (
                f"<p class='sub'>{len(rest)} more shard(s) not listed ({html.escape(_counted(rest))}): "
                f"ok {t['ok']:,}, failed {t['failed']:,}, cost {usd(t['cost_pusd'])} USD. "
                "<code>report --format json</code> lists every shard.</p>"
            )
        out.append(
            f"<div class='panel'><p><b>{html.escape(job)}</b>: {html.escape(headline(shards))}</p>"
            f"<table class='shards'><tr>{head}</tr>{''.join(body)}</table>{note}</div>"
        )
    return '<div class="grid" style="margin-top:16px; grid-template-columns: 1fr">' + "".join(out) + "</div>"
