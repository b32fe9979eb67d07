"""The slim store (store/slim.py, migration m008): what repeats is kept once, the raw usage only
where its template would lose something, and the views give back exactly what was written.

The records are made as a run makes them (records.result_of / attempt_of over a Request and a
Completion), with usage shapes of both dialects, answers re-asked, failures, unpriced models,
seeds or none, several jobs and modes, and a timestamp not in the store's own format.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import legacy_copy

from batchrunner import records, wire
from batchrunner.pricing import PriceTable
from batchrunner.records import Attempt, Failure, Result
from batchrunner.render import Request
from batchrunner.store import Store
from batchrunner.store.slim import RESULT_VIEW_COLUMNS, usage_template

PRICES = PriceTable.load()
STARTED = "2026-11-05T09:00:00.123+00:00"
NATIVE = '{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0}}'
OPENAI = '{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0}}'
EXPLICIT = (
    '{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d,"prompt_tokens_details":'
    '{"cached_tokens":0,"cache_creation_input_tokens":40,"cache_type":"ephemeral"}}'
)
MULTIMODAL = (
    '{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d,"image_tokens":30,"input_tokens_details":'
    '{"text_tokens":5,"image_tokens":30}}'
)


def request(i: int, *, seed: int | None = 7, model: str = "qwen-plus", extra: dict[str, Any] | None = None) -> Request:
    parameters: dict[str, Any] = {"result_format": "message", "temperature": 0.7, **(extra or {})}
    if seed is not None:
        parameters["seed"] = seed
    body = {"model": model, "input": {"messages": [{"role": "user", "content": f"row {i}"}]}, "parameters": parameters}
    return Request(f"k{i:05d}", i, f"r{i}", "/services/aigc/text-generation/generation", body, 10, 0, seed)


def answer(i: int, form: str = NATIVE) -> wire.Completion:
    text = form % (35 + i % 7, 12 + i % 5, 47 + i % 7 + i % 5) if "%d" in form else form
    usage = wire.Usage.from_wire(wire.load_json(text))
    choice = wire.Choice(f"answer {i} \u00e9\u4e2d", finish_reason="stop")
    return wire.Completion((choice,), f"{i:08d}-0000-4000-8000-000000000000", usage)


def answered(
    i: int, *, form: str = NATIVE, job: str = "alpha", mode: str = "online", **how: Any
) -> tuple[Result, list[Attempt]]:
    req = request(i, **how)
    done = answer(i, form)
    cost = PRICES.cost(wire.model_of(req.body), done.usage)
    version = PRICES.version if cost is not None else None
    attempt = records.attempt_of(
        req, run_id=1, attempt=1, started=STARTED, latency_ms=20, outcome="ok", completion=done, cost=cost,
        price_version=version, mode=mode,
    )  # fmt: skip
    result = records.result_of(
        req, run_id=1, started=STARTED, latency_ms=25, attempts=1, billed=0, completion=done, cost=cost,
        price_version=version, job=job, mode=mode,
    )  # fmt: skip
    return result, [attempt]


def varied() -> tuple[list[Result], list[Attempt]]:
    """Rows of every kind a store holds."""
    made = [answered(i) for i in range(40)]
    made += [answered(40 + i, form=OPENAI, job="beta") for i in range(5)]
    made += [answered(45, form=EXPLICIT), answered(46, form=MULTIMODAL), answered(47, mode="batch")]
    made += [answered(48, seed=None), answered(49, model="my-own-model"), answered(50, extra={"n": 2})]
    made += [answered(51, form='{"prompt_tokens":5,"input_tokens":6,"output_tokens":1}')]  # two names, two counts
    results = [r for r, _ in made]
    attempts = [a for _, tried in made for a in tried]
    # Asked again for JSON: the first answer was billed too; the result is the second.
    req, first, second = request(60), answer(60), answer(61)
    cost = PRICES.cost("qwen-plus", first.usage)
    attempts.append(records.attempt_of(req, run_id=1, attempt=1, started=STARTED, latency_ms=9, outcome="invalid_json",
                                       completion=first, cost=cost, price_version=PRICES.version))  # fmt: skip
    attempts.append(records.attempt_of(req, run_id=1, attempt=2, started=STARTED, latency_ms=9, outcome="ok",
                                       completion=second, cost=cost, price_version=PRICES.version))  # fmt: skip
    results.append(records.result_of(req, run_id=1, started=STARTED, latency_ms=30, attempts=2, billed=0,
                                     completion=second, cost=cost, price_version=PRICES.version))  # fmt: skip
    # Failed: a 429 retried, then a 500 on the last attempt; one attempt possibly billed.
    req = request(62)
    busy = Failure("Throttling", "slow down", 429, "req-429")
    broke = Failure("InternalError", "boom", 500, "req-500", possibly_billed=True)
    attempts.append(records.attempt_of(req, run_id=1, attempt=1, started="2026-11-05T09:00:01+00:00", latency_ms=3,
                                       outcome="retry", failure=busy))  # fmt: skip
    attempts.append(records.attempt_of(req, run_id=1, attempt=2, started=STARTED, latency_ms=3, outcome="gave_up",
                                       failure=broke, worst_cost_pusd=10**9))  # fmt: skip
    results.append(records.result_of(req, run_id=1, started=STARTED, latency_ms=9, attempts=2, billed=1,
                                     failure=broke, retryable=True, job="alpha"))  # fmt: skip
    return results, attempts


RECORDS = varied()


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "slim.sqlite"
    results, attempts = RECORDS
    with Store(path) as s:
        s.start_run(job="alpha", spec_digest="d", simulated=True, base_url="http://127.0.0.1")
        s.write(results, attempts)
    return path


def test_what_is_written_reads_back_the_same_through_the_views(store: Path) -> None:
    results, attempts = RECORDS
    with contextlib.closing(sqlite3.connect(store)) as conn:
        conn.row_factory = sqlite3.Row
        viewed = {row["key"]: dict(row) for row in conn.execute("SELECT * FROM results_view")}
        tried = {(row["key"], row["attempt"]): dict(row) for row in conn.execute("SELECT * FROM attempts_view")}
    assert len(viewed) == len(results) and len(tried) == len(attempts)
    for r in results:
        row = viewed[r.key]
        assert list(row) == list(RESULT_VIEW_COLUMNS)
        for column in RESULT_VIEW_COLUMNS:
            if column in ("cost_usd", "total_cost_pusd", "total_cost_usd"):
                continue
            assert row[column] == getattr(r, column), (r.key, column)
        assert row["cost_usd"] == r.cost_usd
        paid = [a.cost_pusd for a in attempts if a.key == r.key and a.cost_pusd is not None]
        assert row["total_cost_pusd"] == (sum(paid) if paid else None)
    for a in attempts:
        row = tried[(a.key, a.attempt)]
        for column in row:
            if column != "id":
                assert row[column] == getattr(a, column), (a.key, a.attempt, column)


def test_what_repeats_is_kept_once(store: Path) -> None:
    shapes = rows(store, "SELECT job, mode, model, parameters, seeded FROM shapes ORDER BY id")
    assert len(shapes) <= 12  # 54 results and 56 attempts
    assert ("alpha", "online", "qwen-plus", '{"result_format":"message","temperature":0.7}', 1) in shapes
    assert rows(store, "SELECT count(DISTINCT shape) FROM results WHERE key < 'k00040'") == [(1,)]
    # The tables hold no text a view computes; the first attempt answered is the result's answer.
    (columns,) = {tuple(r) for r in [[c for (c,) in rows(store, "SELECT name FROM pragma_table_info('results')")]]}
    assert not {"model", "endpoint", "parameters", "job", "mode", "price_version", "cost_usd"} & set(columns)
    kept = rows(
        store, "SELECT a.attempt, a.outcome FROM results r JOIN attempts a ON a.id = r.answer WHERE r.key = 'k00060'"
    )
    assert kept == [(2, "ok")]
    assert rows(store, "SELECT request_id, input_tokens, cost_pusd FROM results WHERE key = 'k00001'") == [(None,) * 3]
    assert rows(store, "SELECT typeof(started_at), typeof(finished_at) FROM results LIMIT 1") == [("integer",) * 2]
    assert rows(store, "SELECT typeof(request_id), length(request_id) FROM attempts WHERE key = 'k00001'") == [
        ("blob", 16)
    ]
    assert rows(store, "SELECT request_id FROM attempts_view WHERE outcome = 'retry'") == [("req-429",)]
    assert rows(store, "SELECT started_at FROM attempts_view WHERE outcome = 'retry'") == [
        ("2026-11-05T09:00:01+00:00",)
    ]


def test_the_raw_usage_is_kept_only_where_the_template_loses_something(store: Path) -> None:
    raw = dict(rows(store, "SELECT key, usage FROM attempts WHERE usage IS NOT NULL"))
    assert set(raw) == {"k00046", "k00051"}  # a text_tokens count no column holds; two input counts
    assert rows(store, "SELECT count(*) FROM attempts WHERE usage_template IS NOT NULL") == [(52,)]
    templates = {t for (t,) in rows(store, "SELECT template FROM usage_templates")}
    assert (
        '{"input_tokens":{input_tokens},"output_tokens":{output_tokens},"total_tokens":{total_tokens},'
        '"prompt_tokens_details":{"cached_tokens":{cached_tokens}}}'
    ) in templates
    assert len(templates) == 3  # native, OpenAI, explicit cache
    with Store(store, readonly=True) as s:  # the cache type is still read from the usage
        inputs, explicit, implicit, written, writers = s.cache_history()
    assert (written, writers) == (40, 1) and explicit == implicit == 0


@pytest.mark.parametrize(
    ("usage", "kept"),
    [
        ('{"input_tokens":5,"output_tokens":3,"total_tokens":8}', True),
        ('{"output_tokens":3,"input_tokens":5,"total_tokens":8}', True),  # any order: it is rendered back as written
        ('{"input_tokens":5,"output_tokens":3,"total_tokens":9}', True),  # the total as the service said it
        ('{"input_tokens":5, "output_tokens":3}', True),  # spaces are kept in the template
        ('{"input_tokens":5,"output_tokens":3,"plugins":{"search":1}}', False),  # a count no column holds
        ('{"input_tokens":5.0,"output_tokens":3}', False),  # 5.0 is not written back as 5.0
        ('{"input_tokens":5,"output_tokens":3,"note":"{output_tokens}"}', False),  # would render wrong
        ("[1]", False),
    ],
)
def test_a_template_is_kept_only_when_it_gives_back_the_very_same_text(usage: str, kept: bool) -> None:
    tokens = wire.Usage.from_wire(wire.load_json(usage) if usage.startswith("{") else {})
    template = usage_template(usage, {c: getattr(tokens, c) for c in wire.USAGE_FIELDS})
    assert (template is not None) == kept


def test_a_store_of_the_previous_schema_migrates_to_the_same_rows(store: Path, tmp_path: Path) -> None:
    older = tmp_path / "older.sqlite"
    legacy_copy(store, older, until="m007_batches")
    assert rows(older, "SELECT count(*) FROM sqlite_master WHERE type = 'view'") == [(0,)]
    assert [c for (c,) in rows(older, "SELECT name FROM pragma_table_info('results')")] == list(RESULT_VIEW_COLUMNS)
    with Store(older, readonly=True) as s:  # read-only: not migrated, read from the old tables
        before = (s.counts("alpha"), s.spent("alpha"), s.cache_history(), s.price_versions(), s.answered_averages())
        sums_before = sorted(s.usage_sums(["input_tokens", "output_tokens"], ["cost_pusd"], None, None), key=repr)
    with Store(older) as s:  # migrates
        after = (s.counts("alpha"), s.spent("alpha"), s.cache_history(), s.price_versions(), s.answered_averages())
        sums_after = sorted(s.usage_sums(["input_tokens", "output_tokens"], ["cost_pusd"], None, None), key=repr)
    assert before == after and sums_before == sums_after
    for sql in ("SELECT * FROM results_view ORDER BY key", "SELECT * FROM attempts_view ORDER BY id"):
        assert rows(older, sql) == rows(store, sql)
    # The migration's SQL encodes the rows as the writer does: the same slim rows, the same shapes.
    shape = "SELECT s.job, s.mode, s.model, s.endpoint, s.parameters, s.seeded, s.price_version FROM shapes s"
    for table in ("results", "attempts"):
        plain = "SELECT t.*, u.template, s.job, s.mode, s.model, s.endpoint, s.parameters, s.seeded, s.price_version "
        plain += f"FROM {table} t LEFT JOIN usage_templates u ON u.id = t.usage_template "
        plain += "LEFT JOIN shapes s ON s.id = t.shape ORDER BY 1"
        strip = {"shape", "usage_template"}
        names = [c for (c,) in rows(store, f"SELECT name FROM pragma_table_info('{table}')")] + ["shaped"] * 8
        mine = [tuple(v for n, v in zip(names, row, strict=True) if n not in strip) for row in rows(store, plain)]
        theirs = [tuple(v for n, v in zip(names, row, strict=True) if n not in strip) for row in rows(older, plain)]
        assert mine == theirs
    assert sorted(rows(older, shape), key=repr) == sorted(rows(store, shape), key=repr)


def test_the_store_stays_within_350_bytes_a_row_beyond_the_answers(tmp_path: Path) -> None:
    path = tmp_path / "size.sqlite"
    with Store(path) as s:
        s.start_run(job="alpha", spec_digest="d", simulated=True, base_url="http://127.0.0.1")
        for start in range(0, 20_000, 500):
            made = [answered(i) for i in range(start, start + 500)]
            s.write([r for r, _ in made], [a for _, made_attempts in made for a in made_attempts])
    copy = tmp_path / "vacuumed.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("VACUUM INTO ?", [str(copy)])
        (text,) = conn.execute("SELECT sum(length(CAST(content AS BLOB))) FROM results").fetchone()
    per_row = (copy.stat().st_size - text) / 20_000
    assert per_row <= 350, per_row
    shutil.rmtree(tmp_path, ignore_errors=True)
