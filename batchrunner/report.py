"""Usage and cost reports, read from one or more stores (read-only).

`build` sums every store, grouped by any of model, job (the job that made the row; for an
older store, the job of its run), day (UTC), status and mode (how it was bought: online, batch
or batch-chat; online for rows stored before batchrunner recorded it), and `render` prints a
report as a terminal table, CSV, JSON or Markdown. `requests`, `ok` and `failed` count the
results (on the day they finished, in the mode of the answer kept); tokens and money add up
every paid attempt (on the day it was sent, in the mode it was sent in), so an answer re-asked
for invalid JSON or sent again by `--retry-failed` is counted each time it was paid for (see
`Store.usage_sums`). Each attempt's cost was recorded at the price that applied to it (the
batch price for batch and batch-chat attempts), so a report adds costs up and prices nothing
itself. Money is summed in whole pico-USD and converted to USD (the only currency batchrunner
counts in) only for display, so the totals equal the sum of the rows exactly.

Money columns of a group are empty (None, JSON null) when nothing in it has a recorded cost,
never zero. An answer is counted in `unpriced_requests` when it used tokens but has no cost
(its model had no price, or the store predates cost accounting): such answers are reported and
never costed at zero. Columns a store lacks read as NULL, so older stores still report.

Formats. Every format names a column the same way. `table`: for a terminal; money rounded to 6
decimals, columns that are zero everywhere left out. `markdown`: every column, money rounded to 6 decimals. `csv`: every
column, one line per group and no totals line (a spreadsheet's SUM gives it). `json`: an object
with the group rows under "rows", the totals under "totals", and what was read (by, since,
until, stores, price_versions). In csv and json, money is an exact decimal string with 12
decimals (JSON strings, not floats, so no precision is lost) and tokens are integers.

A job sharded over Ray (`run --engine ray`) is reported as one, like any job; `table` adds a
per-shard table after the totals (at most 50 shards: those that need a look, then the
costliest; one line sums the rest) and `json` a "shards" list of every shard (shardviews.py).
Both read the job's current manifest, whatever --since and --until; csv and markdown leave it out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from . import shardviews
from . import spec as spec_module
from .errors import StoreError
from .pricing import CURRENCY, format_usd
from .store import Store

BY_KEYS = ("model", "job", "day", "status", "mode")
FORMATS = ("table", "csv", "json", "markdown")
TOKENS = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "image_tokens",
    "cache_creation_input_tokens",
)
# report column -> store column (pico-USD)
MONEY = {
    "cost_usd": "cost_pusd",
    "input_cost_usd": "input_cost_pusd",
    "cached_input_cost_usd": "cached_cost_pusd",
    "cache_creation_cost_usd": "cache_creation_cost_pusd",
    "output_cost_usd": "output_cost_pusd",
    "cache_saved_usd": "saved_pusd",
}
COLUMNS = ("requests", "ok", "failed", *TOKENS, "cache_hit_rate", *MONEY, "unpriced_requests")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The sums over one group of results (or over all of them, for the totals).

    `group` holds the values of the report's `by` keys, in order (None where a result had no
    value; all None in the totals). Money is in pico-USD, None when no result of the group has a recorded cost.
    """

    group: tuple[str | None, ...]
    requests: int = 0
    ok: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    image_tokens: int = 0
    cache_creation_input_tokens: int = 0
    unpriced_requests: int = 0
    cost_pusd: int | None = None
    input_cost_pusd: int | None = None
    cached_cost_pusd: int | None = None
    cache_creation_cost_pusd: int | None = None
    output_cost_pusd: int | None = None
    saved_pusd: int | None = None

    @property
    def cache_hit_rate(self) -> Decimal | None:
        """cached_tokens / input_tokens to 4 decimals; None without input tokens."""
        if not self.input_tokens:
            return None
        return (Decimal(self.cached_tokens) / Decimal(self.input_tokens)).quantize(Decimal("0.0001"))

    def plus(self, other: ReportRow, group: tuple[str | None, ...]) -> ReportRow:
        """The sums of two rows, under `group`; money stays None only where both are None."""
        sums: dict[str, Any] = {}
        for f in fields(self):
            if f.name != "group":
                a, b = getattr(self, f.name), getattr(other, f.name)
                sums[f.name] = b if a is None else a if b is None else a + b
        return ReportRow(group, **sums)

    def values(self, by: Sequence[str], places: int) -> dict[str, Any]:
        """Column name -> value: keys and counts as they are, hit rate as a Decimal, money as
        a USD string with `places` decimals (None where unknown)."""
        out: dict[str, Any] = dict(zip(by, self.group, strict=True))
        for name in COLUMNS:
            if name in MONEY:
                pusd = getattr(self, MONEY[name])
                out[name] = None if pusd is None else format_usd(pusd, places)
            else:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """A built report: its grouping, one row per group (sorted), the totals, and its inputs.

    With no `by` keys there is a single row covering everything. `price_versions` lists the
    price-table versions the stored costs were computed with.
    """

    by: tuple[str, ...]
    rows: tuple[ReportRow, ...]
    totals: ReportRow
    stores: tuple[Path, ...]
    since: date | None = None
    until: date | None = None
    price_versions: tuple[str, ...] = ()
    shards: tuple[shardviews.JobShards, ...] = ()  # the sharded jobs of the stores read


# --------------------------------------------------------------------------- reading stores


def collect(paths: Iterable[Path]) -> list[Path]:
    """The store files named by `paths`: store files as given, a job spec's store, and every
    `*.sqlite` under a folder. Order kept, duplicates dropped; StoreError for a missing one."""
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        if path.is_dir():
            stores = sorted(p for p in path.rglob("*.sqlite") if p.is_file())
            if not stores:
                msg = f"{path}: no *.sqlite stores in this folder or below it"
                raise StoreError(msg)
        elif path.suffix.lower() == ".toml":
            stores = [spec_module.load(path).db_path]
            if not stores[0].is_file():
                msg = f"{path}: its store {stores[0]} does not exist yet; run the job first"
                raise StoreError(msg)
        elif path.is_file():
            stores = [path]
        else:
            msg = f"{path}: no such store, job spec or folder"
            raise StoreError(msg)
        for store in stores:
            found.setdefault(store.resolve(), store)
    return list(found.values())


def build(
    paths: Sequence[Path], by: Sequence[str] = (), since: date | None = None, until: date | None = None
) -> Report:
    """Read the stores named by `paths` (see `collect`) and sum their results per group of `by`
    (any of model, job, day, status, mode, in the order given); since/until bound the day, inclusive."""
    unknown = [k for k in by if k not in BY_KEYS]
    if unknown:
        msg = f"cannot group by {', '.join(unknown)}; choose from {', '.join(BY_KEYS)}"
        raise ValueError(msg)
    keys = tuple(dict.fromkeys(by))
    stores = collect(paths)
    groups: dict[tuple[str | None, ...], ReportRow] = {}
    versions: set[str] = set()
    counters = [f.name for f in fields(ReportRow)][1:]
    sharded: list[shardviews.JobShards] = []
    for path in stores:
        with Store(path, readonly=True) as store:
            job = store.job_name()  # for rows whose job is not recorded
            versions |= store.price_versions()
            sharded += shardviews.read(store)
            for model, status, day, made_by, mode, *sums in store.usage_sums(
                TOKENS, list(MONEY.values()), since, until
            ):
                found = {"model": model, "job": made_by or job, "day": day, "status": status, "mode": mode}
                group = tuple(None if found[k] is None else str(found[k]) for k in keys)
                row = ReportRow(group, **dict(zip(counters, sums, strict=True)))
                groups[group] = groups[group].plus(row, group) if group in groups else row
    rows = tuple(sorted(groups.values(), key=lambda r: tuple((v is None, v or "") for v in r.group)))
    blank: tuple[str | None, ...] = (None,) * len(keys)
    totals = ReportRow(blank)
    for row in rows:
        totals = totals.plus(row, blank)
    return Report(keys, rows, totals, tuple(stores), since, until, tuple(sorted(versions)), tuple(sharded))


# --------------------------------------------------------------------------- rendering

Format = Literal["table", "csv", "json", "markdown"]


def as_format(name: str) -> Format:
    """A format name from the command line, checked."""
    for fmt in ("table", "csv", "json", "markdown"):
        if name == fmt:
            return fmt
    msg = f"unknown report format {name!r}; choose from {', '.join(FORMATS)}"
    raise ValueError(msg)


def render(report: Report, fmt: Format = "table") -> str:
    """The report as text in one of FORMATS (see the module docstring for what each holds)."""
    if fmt == "json":
        return _json(report)
    if fmt == "csv":
        return _csv(report)
    if fmt in ("table", "markdown"):
        return _grid(report, markdown=fmt == "markdown")
    msg = f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}"
    raise ValueError(msg)


def _json(report: Report) -> str:
    def plain(row: ReportRow) -> dict[str, Any]:
        values = row.values(report.by, 12)
        rate = values["cache_hit_rate"]
        values["cache_hit_rate"] = None if rate is None else float(rate)
        return values

    doc = {
        "by": list(report.by),
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat() if report.until else None,
        "stores": [str(p) for p in report.stores],
        "currency": CURRENCY,
        "price_versions": list(report.price_versions),
        "rows": [plain(r) for r in report.rows],
        "totals": plain(report.totals),
    }
    if report.shards:  # every shard of each sharded job (no key at all for a job never sharded)
        doc["shards"] = shardviews.json_rows(report.shards)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.by, *COLUMNS])
    for row in report.rows:
        writer.writerow(["" if v is None else v for v in row.values(report.by, 12).values()])
    return out.getvalue()


def _cell(name: str, value: Any, *, markdown: bool) -> str:
    if value is None:
        return "" if markdown and name in BY_KEYS else "-"
    if isinstance(value, int) and not markdown:
        return f"{value:,}"
    text = str(value)
    return text.replace("|", "\\|") if markdown else text


ALWAYS = ("requests", "ok", "failed", "input_tokens", "output_tokens", "cost_usd")


def _grid(report: Report, *, markdown: bool) -> str:
    """An aligned terminal table, or a Markdown table; the totals line comes last."""
    shown = [*report.rows, report.totals] if report.by else [report.totals]
    columns = list(COLUMNS)
    if not markdown:  # keep a terminal table narrow: drop columns that are zero or empty everywhere
        columns = [c for c in COLUMNS if c in ALWAYS or any(getattr(r, MONEY.get(c, c)) for r in shown)]
    values = [r.values(report.by, 6) for r in shown]
    lines = [[_cell(c, v[c], markdown=markdown) for c in [*report.by, *columns]] for v in values]
    labels = list(report.by) or [""]
    lines[-1] = ["**TOTAL**" if markdown else "TOTAL", *[""] * (len(labels) - 1), *lines[-1][len(report.by) :]]
    numeric = [False] * len(labels) + [True] * len(columns)
    if markdown:
        rule = ["---:" if n else "---" for n in numeric]
        return "".join(f"| {' | '.join(cells)} |\n" for cells in [[*labels, *columns], rule, *lines])
    header = [*labels, *columns]  # the names csv and json use
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True))

    rule_line = "  ".join("-" * w for w in widths)
    body = [fmt(header), rule_line, *(fmt(c) for c in lines[:-1])]
    if report.by:
        body.append(rule_line)
    body.append(fmt(lines[-1]))
    body.append("")
    if report.totals.unpriced_requests:
        body.append(
            f"{report.totals.unpriced_requests} request(s) used tokens but have no recorded cost (their model "
            "has no price, or the store predates cost accounting); the USD columns leave them out."
        )
    versions = f" (price tables {', '.join(report.price_versions)})" if report.price_versions else ""
    body.append(f"Money in {CURRENCY}{versions}.")
    return "\n".join(body) + "\n" + shardviews.report_text(report.shards)  # a table per sharded job
