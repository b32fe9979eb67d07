"""How results and attempts are kept small, and the views that show them whole.

What is the same for many rows is kept once and referenced by an integer:

    shapes           one row per distinct (job, mode, model, endpoint, parameters, price_version):
                     a request's parameters without its seed when the seed is the row's own
                     (`seeded` = 1: the views put `"seed": <the row's seed>` back at the end)
    usage_templates  one row per distinct form of the raw `usage` JSON, with its token counts
                     replaced by the names of the typed columns, as in
                     {"input_tokens":{input_tokens},"output_tokens":{output_tokens},...}

A row keeps its raw `usage` JSON only where its template would lose something: `usage` is
NULL and `usage_template` set exactly when the template, with the row's typed token counts put
back in place of the names, gives the very same text, byte for byte (see `usage_template`). A
request id in the usual UUID form is kept as its 16 bytes, and a timestamp as integer
milliseconds since 1970 (UTC), only when the views give back the very same text; any other
text is kept as it came. A result whose answer (request_id, http_status, usage, token counts
and cost parts) is that of one of its attempts points at that attempt (`answer`) instead of
holding a second copy. `cost_usd` and `total_cost_usd` are the pico-USD columns divided by
1e12, computed by the views.

`results_view` and `attempts_view` give the joined picture under the columns' old names, in
their old order: they are what a person selects from.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .common import COST_COLUMNS, USAGE_COLUMNS
from .packing import iso_sql, key_sql, ms_of, packed_id, packed_key, request_id_sql

# How a usage JSON may name each typed column (the text, multimodal and OpenAI shapes).
USAGE_NAMES = (
    ("input_tokens", "input_tokens"),
    ("prompt_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("completion_tokens", "output_tokens"),
    *((name, name) for name in USAGE_COLUMNS[2:]),
)
MAX_TEMPLATES = 1000  # beyond this many forms of usage, new forms are kept raw
_NAMES = tuple((column, f'"{name}":') for name, column in USAGE_NAMES)

# What a result holds only when its answer is not one of its attempts'.
ANSWER_COLUMNS = ("http_status", *USAGE_COLUMNS, "usage", "request_id", *COST_COLUMNS)

# The columns of the old `results` and `attempts` tables, in order: the views' columns.
RESULT_VIEW_COLUMNS = (
    *("key", "row_id", "row_index", "status", "retryable", "content", "reasoning_content", "finish_reason"),
    *("tool_calls", "error_code", "error_message", "http_status", *USAGE_COLUMNS, "usage", "request_id"),
    *("attempts", "possibly_billed_attempts", "latency_ms", "started_at", "finished_at", "model", "endpoint"),
    *("parameters", "run_id", "sample", "seed", "choices", "logprobs", "parsed", *COST_COLUMNS, "cost_usd"),
    *("price_version", "total_cost_pusd", "total_cost_usd", "job", "mode"),
)
ATTEMPT_VIEW_COLUMNS = (
    *("id", "key", "run_id", "attempt", "started_at", "latency_ms", "http_status", "outcome", "error_code"),
    *("error_message", "possibly_billed", "request_id", "usage", "model", *USAGE_COLUMNS, *COST_COLUMNS),
    *("worst_cost_pusd", "cost_usd", "price_version", "mode"),
)

# The columns of the slim tables, in order (m008 creates them; the writer fills them).
RESULT_COLUMNS = (
    *("key", "row_id", "row_index", "status", "retryable", "content", "reasoning_content", "finish_reason"),
    *("tool_calls", "error_code", "error_message", "http_status", *USAGE_COLUMNS, "usage", "usage_template"),
    *("request_id", "attempts", "possibly_billed_attempts", "latency_ms", "started_at", "finished_at"),
    *("run_id", "sample", "seed", "choices", "logprobs", "parsed", *COST_COLUMNS, "total_cost_pusd"),
    *("shape", "answer"),
)
ATTEMPT_COLUMNS = (
    *("id", "key", "run_id", "attempt", "started_at", "latency_ms", "http_status", "outcome", "error_code"),
    *("error_message", "possibly_billed", "request_id", "usage", "usage_template", *USAGE_COLUMNS),
    *(*COST_COLUMNS, "worst_cost_pusd", "shape"),
)
SHAPE_COLUMNS = ("job", "mode", "model", "endpoint", "parameters", "seeded", "price_version")

_DIGIT = re.compile("[0-9]")


# ---------------------------------------------------------------------------- usage templates


def render_usage(template: str, tokens: Mapping[str, Any]) -> str:
    """A template with the row's token counts put back (what `usage_sql` does in SQL)."""
    text = template
    for column, mark in _MARKS:
        if mark in text:
            value = tokens.get(column)
            text = text.replace(mark, "" if value is None else str(value))
    return text


_MARKS = tuple((column, "{" + column + "}") for column in USAGE_COLUMNS)


def usage_template(usage: str | None, tokens: Mapping[str, Any]) -> str | None:
    """The template of a raw usage JSON, when nothing is lost by keeping the template instead:
    each `"name":N` (followed by `,` or `}`) whose N is the typed column's value becomes
    `"name":{column}`; the template must have no digit left (so that the forms stay few) and
    must render back, with the same counts, to exactly `usage`. None otherwise."""
    if not usage:
        return None
    text = usage
    for column, quoted in _NAMES:
        if quoted not in text:
            continue
        value = tokens.get(column)
        if value is None:
            continue
        for end in (",", "}"):
            text = text.replace(f"{quoted}{value}{end}", f"{quoted}{{{column}}}{end}")
    if _DIGIT.search(text) or render_usage(text, tokens) != usage:
        return None
    return text


def template_udf(usage: str | None, *tokens: int | None) -> str | None:
    """`usage_template` as an SQL function of (usage, *USAGE_COLUMNS), for the migration."""
    return usage_template(usage, dict(zip(USAGE_COLUMNS, tokens, strict=True)))


def usage_sql(template: str, row: str) -> str:
    """`render_usage` in SQL: the template `template` with the counts of `row` put back."""
    text = template
    for column in USAGE_COLUMNS:
        text = f"replace({text}, '{{{column}}}', coalesce({row}.{column}, ''))"
    return text


def unseeded(parameters: str | None, seed: int | None) -> tuple[str | None, int]:
    """(the parameters without the seed, 1) when they end with `"seed": seed` (as the renderer
    writes them), else (the parameters, 0). Whether SQLite's json_set puts it back exactly is
    checked once per shape (`Encoder.shape`)."""
    if parameters is None or seed is None or isinstance(seed, bool):
        return parameters, 0
    tail = f'"seed":{seed}}}'
    if parameters == "{" + tail:
        return "{}", 1
    if parameters.endswith("," + tail):
        return parameters[: -len(tail) - 1] + "}", 1
    return parameters, 0


def parameters_sql(shape: str, row: str) -> str:
    return (
        f"CASE WHEN {shape}.seeded THEN json_set({shape}.parameters, '$.seed', {row}.seed) ELSE {shape}.parameters END"
    )


def seeded_sql(row: str) -> str:
    """Whether a stored row's parameters lose nothing without their seed (in SQL, for m008)."""
    rest = f"json_remove({row}.parameters, '$.seed')"
    return (
        f"({row}.seed IS NOT NULL AND json_valid({row}.parameters) AND "
        f"json_extract({row}.parameters, '$.seed') IS {row}.seed AND "
        f"json_set({rest}, '$.seed', {row}.seed) = {row}.parameters)"
    )


# ---------------------------------------------------------------------------- the views


# What `result_exprs` reads from.
RESULTS_FROM = (
    "FROM results r\n"
    "LEFT JOIN shapes s ON s.id = r.shape\n"
    "LEFT JOIN usage_templates ru ON ru.id = r.usage_template\n"
    "LEFT JOIN attempts a ON a.id = r.answer\n"
    "LEFT JOIN usage_templates au ON au.id = a.usage_template"
)


def result_exprs() -> dict[str, str]:
    """Each column of `results_view` (the old column names, in order) as SQL over `RESULTS_FROM`."""
    own = usage_sql("ru.template", "r")
    theirs = usage_sql("au.template", "a")
    picked: dict[str, str] = {c: f"r.{c}" for c in RESULT_VIEW_COLUMNS}
    picked["key"] = key_sql("r.key")
    for column in ANSWER_COLUMNS:
        picked[column] = f"coalesce(r.{column}, a.{column})"
    picked["usage"] = f"coalesce(r.usage, {own}, a.usage, {theirs})"
    picked["request_id"] = request_id_sql("coalesce(r.request_id, a.request_id)")
    picked.update(started_at=iso_sql("r.started_at"), finished_at=iso_sql("r.finished_at"))
    picked.update(model="s.model", endpoint="s.endpoint", parameters=parameters_sql("s", "r"))
    picked.update(price_version="s.price_version", job="s.job", mode="s.mode")
    picked.update(cost_usd="coalesce(r.cost_pusd, a.cost_pusd) / 1e12", total_cost_usd="r.total_cost_pusd / 1e12")
    return picked


def results_view_sql() -> str:
    """The results as they were, one row each, under the old column names."""
    columns = ",\n  ".join(f"{sql} AS [{name}]" for name, sql in result_exprs().items())
    return f"CREATE VIEW results_view AS SELECT\n  {columns}\n{RESULTS_FROM}"


def attempts_view_sql() -> str:
    """Every attempt as it was, under the old column names."""
    picked: dict[str, str] = {c: f"a.{c}" for c in ATTEMPT_VIEW_COLUMNS}
    picked["key"] = key_sql("a.key")
    picked["started_at"] = iso_sql("a.started_at")
    picked["request_id"] = request_id_sql("a.request_id")
    picked["usage"] = f"coalesce(a.usage, {usage_sql('u.template', 'a')})"
    picked.update(model="s.model", price_version="s.price_version", mode="s.mode", cost_usd="a.cost_pusd / 1e12")
    columns = ",\n  ".join(f"{sql} AS [{name}]" for name, sql in picked.items())
    return (
        f"CREATE VIEW attempts_view AS SELECT\n  {columns}\nFROM attempts a\n"
        "LEFT JOIN shapes s ON s.id = a.shape\n"
        "LEFT JOIN usage_templates u ON u.id = a.usage_template"
    )


# ---------------------------------------------------------------------------- the writer's side

_getters: dict[tuple[type, tuple[str, ...]], tuple[tuple[str, ...], Callable[[Any], Any]]] = {}


def _fields(record: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    """{column: getattr(record, column, None)} in the order of `columns`; for a slotted
    dataclass (records.Result, records.Attempt: every field always set) read in one C call."""
    kind = type(record)
    found = _getters.get((kind, columns))
    if found is None:
        if not (dataclasses.is_dataclass(kind) and hasattr(kind, "__slots__")):
            return {c: getattr(record, c, None) for c in columns}
        names = {f.name for f in dataclasses.fields(kind)}
        present = tuple(c for c in columns if c in names)
        found = _getters[(kind, columns)] = (present, operator.attrgetter(*present) if present else lambda r: ())
    present, getter = found
    values = dict.fromkeys(columns)
    values.update(zip(present, getter(record), strict=True) if len(present) != 1 else [(present[0], getter(record))])
    return values


class Encoder:
    """Turns records.Result / records.Attempt values into rows of the slim tables, on the
    writer's connection, inside its transaction. The ids it knows (shapes, templates) are few;
    `forget` drops them after a rollback (they may name rows that are gone)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._shapes: dict[tuple[Any, ...], int] = {}
        self._templates: dict[str, int] = {}
        self._seed_ok: dict[str, bool] = {}

    def forget(self) -> None:
        self._shapes.clear()
        self._templates.clear()

    def shape(self, job: Any, mode: Any, model: Any, endpoint: Any, parameters: Any, seed: Any, price: Any) -> int:
        rest, seeded = unseeded(parameters, seed)
        if seeded and not self._seeds_back(str(rest)):
            rest, seeded = parameters, 0
        key = (job, mode, model, endpoint, rest, seeded, price)
        found = self._shapes.get(key)
        if found is None:
            where = " AND ".join(f"{c} IS ?" for c in SHAPE_COLUMNS)
            row = self.conn.execute(f"SELECT id FROM shapes WHERE {where}", key).fetchone()
            if row is None:
                sql = f"INSERT INTO shapes ({', '.join(SHAPE_COLUMNS)}) VALUES ({', '.join('?' * len(key))})"
                found = int(self.conn.execute(sql, key).lastrowid or 0)
            else:
                found = int(row[0])
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            self._shapes[key] = found
        return found

    def _seeds_back(self, rest: str) -> bool:
        """Whether json_set(rest, '$.seed', N) is rest with `"seed":N` appended, as written."""
        ok = self._seed_ok.get(rest)
        if ok is None:
            expected = rest[:-1] + ("" if rest == "{}" else ",") + '"seed":12345}'
            got = self.conn.execute("SELECT json_set(?, '$.seed', 12345)", [rest]).fetchone()[0]
            ok = self._seed_ok[rest] = got == expected
        return ok

    def template(self, usage: str | None, tokens: Mapping[str, Any]) -> int | None:
        text = usage_template(usage, tokens)
        if text is None:
            return None
        found = self._templates.get(text)
        if found is None:
            row = self.conn.execute("SELECT id FROM usage_templates WHERE template = ?", [text]).fetchone()
            if row is None:
                count = self.conn.execute("SELECT count(*) FROM usage_templates").fetchone()[0]
                if count >= MAX_TEMPLATES:
                    return None
                found = int(
                    self.conn.execute("INSERT INTO usage_templates (template) VALUES (?)", [text]).lastrowid or 0
                )
            else:
                found = int(row[0])
            self._templates[text] = found
        return found

    def attempts(self, attempts: Sequence[Any]) -> tuple[list[list[Any]], dict[str, list[tuple[int, Any]]]]:
        """The rows of `attempts` (ids given here, after the largest on file), and per key its
        (id, attempt) pairs, for the results written with them."""
        top = self.conn.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0]
        rows: list[list[Any]] = []
        by_key: dict[str, list[tuple[int, Any]]] = {}
        for n, a in enumerate(attempts, start=int(top) + 1):
            values = _fields(a, ATTEMPT_COLUMNS)
            values.update(
                id=n, key=packed_key(a.key), started_at=ms_of(a.started_at), request_id=packed_id(a.request_id)
            )
            values["shape"] = self.shape(None, a.mode, a.model, None, None, None, a.price_version)
            template = self.template(a.usage, values)
            if template is not None:
                values.update(usage=None, usage_template=template)
            rows.append([values[c] for c in ATTEMPT_COLUMNS])
            by_key.setdefault(a.key, []).append((n, a))
        return rows, by_key

    def result(self, r: Any, answers: Sequence[tuple[int, Any]]) -> list[Any]:
        """The row of one result; `answers` are the (id, attempt) written with it."""
        values = _fields(r, RESULT_COLUMNS)
        values.update(
            key=packed_key(r.key),
            started_at=ms_of(r.started_at),
            finished_at=ms_of(r.finished_at),
            total_cost_pusd=None,
        )
        values["shape"] = self.shape(r.job, r.mode, r.model, r.endpoint, r.parameters, r.seed, r.price_version)
        mine = _fields(r, ANSWER_COLUMNS)
        for attempt_id, a in reversed(answers):
            if _fields(a, ANSWER_COLUMNS) == mine:
                values.update(dict.fromkeys(ANSWER_COLUMNS), answer=attempt_id)
                break
        else:
            values["request_id"] = packed_id(r.request_id)
            template = self.template(r.usage, values)
            if template is not None:
                values.update(usage=None, usage_template=template)
        return [values[c] for c in RESULT_COLUMNS]


# A result's row with its total cost computed as it is written (what TOTAL_SQL would set
# right after: every paid attempt of its request, else the row's own cost), in one statement.
_TOTAL_AT = RESULT_COLUMNS.index("total_cost_pusd")
_KEY_AT = RESULT_COLUMNS.index("key")
_COST_AT = RESULT_COLUMNS.index("cost_pusd")
RESULT_SQL = (
    f"INSERT OR REPLACE INTO results ({', '.join(RESULT_COLUMNS)}) VALUES ("
    + ", ".join(
        "(SELECT coalesce(sum(a.cost_pusd), ?) FROM attempts a WHERE a.key = ?)" if i == _TOTAL_AT else "?"
        for i in range(len(RESULT_COLUMNS))
    )
    + ")"
)


def totalled(row: list[Any]) -> list[Any]:
    """A result's row for RESULT_SQL: its own cost and key in place of the total."""
    row[_TOTAL_AT : _TOTAL_AT + 1] = [row[_COST_AT], row[_KEY_AT]]
    return row
