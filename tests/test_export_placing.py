"""The export places stored results by row index where it may, and renders every other row:
the table is the same either way (compared with an export that renders every row), and a row
index made in another context (another input file, template or rendering), a result bought
through a batch file, or one that does not line up, never attaches an answer to the wrong row.
Real input files, a real SQLite store, a real run against the simulator."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from helpers import invoke_cli, query, read_table, write_job

from batchrunner import placing, sink
from batchrunner.records import Result
from batchrunner.render import RENDER_VERSION, Request
from batchrunner.simulator import ThreadHandle
from batchrunner.source import Source
from batchrunner.spec import JobSpec, load
from batchrunner.store import Store


def answer(request: Request, run_id: int, status: str = "ok", **fields: object) -> Result:
    values: dict[str, object] = {
        "key": request.key,
        "row_id": request.row_id,
        "row_index": request.row_index,
        "status": status,
        "retryable": 0,
        "attempts": 1,
        "possibly_billed_attempts": 0,
        "latency_ms": 5,
        "started_at": "2026-12-01T00:00:00.000+00:00",
        "finished_at": "2026-12-01T00:00:00.005+00:00",
        "model": "qwen-plus",
        "endpoint": request.path,
        "parameters": None,
        "run_id": run_id,
        "sample": request.sample,
        "content": f"answer to {request.row_id}/{request.sample}" if status == "ok" else None,
        "input_tokens": 10 + request.row_index,
        "output_tokens": 3,
        # kept as 16 bytes (a UUID) or as the text it is; the table shows both as text
        "request_id": str(uuid.UUID(int=request.row_index + 1))
        if request.row_index % 2
        else f"req-{request.row_index}",
    }
    if status == "failed":
        values.update(error_code="InvalidParameter", error_message="refused")
    values.update(fields)
    return Result(**values)  # type: ignore[arg-type]


def checked(spec: JobSpec) -> Source:
    source = Source(spec)
    source.check(reserved=sink.result_columns(spec))
    return source


def requests(source: Source) -> list[Request]:
    return [i for i in source.requests(source.batch_at(0, source.n_rows)) if isinstance(i, Request)]


def record(
    spec: JobSpec, which: Callable[[Request], bool] = lambda r: True, *, context: str | None = "mine", **fields: object
) -> list[Request]:
    """A run of `spec` that answers the requests `which` picks (rows 5, 12, 19, ... fail), as
    a run does: one result per distinct request, made by its first row. Made in the input's
    render context (`context="mine"`) or the one given; `fields` go into each result."""
    source = checked(spec)
    made = requests(source)
    with Store(spec.db_path) as store:
        mine = source.render_context() if context == "mine" else context
        run_id = store.start_run(job="t", spec_digest="d", simulated=True, base_url="http://x", render_context=mine)
        results: dict[str, Result] = {}
        for r in filter(which, made):
            results.setdefault(r.key, answer(r, run_id, "failed" if r.row_index % 7 == 5 else "ok", **fields))
        store.write(list(results.values()), [])
    return made


def both(spec: JobSpec, tmp_path: Path, batch_rows: int = 16) -> tuple[pl.DataFrame, dict[str, int], int, int]:
    """The table placed and the table rendered (they must be equal), the tally, and how many
    lines were placed and rendered."""
    source = checked(spec)
    tables = []
    with Store(spec.db_path, readonly=True) as store:
        counts = placing.Results(source, store, sink.columns_for(spec))
        frames = [counts.of(batch) for batch in source.batches(batch_rows)]
        for place in (True, False):
            out, tally = sink.export(
                spec, store, source, tmp_path / f"{place}.parquet", batch_rows=batch_rows, place=place
            )
            tables.append((read_table(out), tally))
    (placed, tally), (rendered, tally_rendered) = tables
    assert placed.equals(rendered) and tally == tally_rendered
    assert sum(f.height for f in frames) == placed.height
    return placed, tally, counts.placed_lines, counts.rendered_lines


def rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"r{i}", "text": f"item number {i}"} for i in range(n)]


def test_answered_rows_are_placed_and_the_rest_rendered(tmp_path: Path) -> None:
    data = rows(100)
    data[40]["text"] = data[10]["text"]  # the same request as row 10: one result for both
    data[41]["text"] = data[90]["text"]  # the same as a later row, answered through row 41
    data[55]["text"] = " "  # skipped
    spec = load(write_job(tmp_path, data, {"prompt": {"on_empty": "skip"}}))
    record(spec, lambda r: r.row_index < 80)  # rows 80.. pending; row 90's request was answered for row 41
    table, tally, placed, rendered = both(spec, tmp_path)
    assert tally == {"ok": 70, "failed": 10, "pending": 19, "skipped": 1}
    assert table["content"][40] == "answer to r10/0" and table["content"][90] == "answer to r41/0"
    assert table["status"][55] == "skipped" and table["status"][85] == "pending"
    assert table["request_id"][:2].to_list() == ["req-0", "00000000-0000-0000-0000-000000000002"]
    assert placed == 78 and rendered == 22  # rows 0-79 but 40 (made by 10) and 55 (skipped)


def test_samples_are_placed_row_by_row(tmp_path: Path) -> None:
    spec = load(write_job(tmp_path, rows(30), {"job": {"repeat": 3}}))
    record(spec, lambda r: r.row_index < 16 or (r.row_index == 16 and r.sample < 2))  # row 16: 2 samples of 3
    table, tally, placed, rendered = both(spec, tmp_path)
    assert table["sample"].to_list() == [0, 1, 2] * 30
    assert table["content"][4] == "answer to r1/1"
    assert tally["pending"] == 40 and placed == 48 and rendered == 42


def test_a_changed_input_file_places_nothing_and_attaches_no_old_answer(tmp_path: Path) -> None:
    data = rows(40)
    spec = load(write_job(tmp_path, data))
    record(spec)
    data[5]["text"], data[6]["text"] = data[6]["text"], "new text"  # row 5 now asks what row 6 asked
    table, tally, placed, rendered = both(load(write_job(tmp_path, data)), tmp_path)
    assert placed == 0 and rendered == 40
    assert table["content"][5] == "answer to r6/0" and table["status"][6] == "pending"


def test_a_changed_template_places_nothing(tmp_path: Path) -> None:
    spec = load(write_job(tmp_path, rows(20)))
    record(spec)
    changed = load(write_job(tmp_path, rows(20), {"prompt": {"template": "Say: {text}"}}))
    table, tally, placed, rendered = both(changed, tmp_path)
    assert placed == 0 and tally == {"pending": 20}


def test_results_of_another_context_or_a_batch_file_are_rendered(tmp_path: Path) -> None:
    spec = load(write_job(tmp_path, rows(30)))
    record(spec, lambda r: r.row_index < 10, context="another")
    record(spec, lambda r: 10 <= r.row_index < 20, context=None)  # a run older than render contexts
    record(spec, lambda r: r.row_index >= 20, mode="batch")  # bought through a batch file
    table, tally, placed, rendered = both(spec, tmp_path)
    assert placed == 0 and rendered == 30 and tally["ok"] + tally["failed"] == 30


def test_a_row_index_that_does_not_line_up_is_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = load(write_job(tmp_path, rows(40)))
    made = record(spec, lambda r: False)
    source = checked(spec)
    context = source.render_context()
    with Store(spec.db_path) as store:
        run_id = store.start_run(job="t", spec_digest="d", simulated=True, base_url="http://x", render_context=context)
        # Row 3's result claims row 4 (with row 3's id: not placed); row 20 has two results
        # (neither placed); row 0's result says row 0 but was made by another request (the
        # first row of the slice is rendered: placing stops, with a warning).
        wrong = [answer(made[3], run_id, row_index=4), answer(made[20], run_id)]
        twin = Request("f" * 32, 20, "r20", made[20].path, {}, 0)
        stray = Request("e" * 32, 0, "r0", made[0].path, {}, 0)
        store.write([*wrong, answer(twin, run_id), answer(stray, run_id)], [])
        store.write([answer(r, run_id) for r in made[5:20]], [])
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        table, tally, placed, rendered = both(spec, tmp_path, batch_rows=40)
    assert placed == 0 and "do not line up" in caplog.text
    assert table["status"][0] == "pending" and table["content"][3] == "answer to r3/0"
    assert table["content"][20] == "answer to r20/0" and tally == {"ok": 17, "pending": 23}
    caplog.clear()
    with Store(spec.db_path) as store:  # without row 0's stray result, rows 5..19 are placed
        store.conn.execute("DELETE FROM results WHERE row_index = 0")
    table, tally, placed, rendered = both(spec, tmp_path, batch_rows=40)
    assert placed == 15 and "do not line up" not in caplog.text  # rows 5..19 (row 20 has two results)
    assert table["content"][4] is None and table["status"][20] == "ok"


def test_a_store_older_than_row_positions_renders_every_row(tmp_path: Path) -> None:
    from helpers import legacy_copy

    spec = load(write_job(tmp_path, rows(20)))
    record(spec)
    old = tmp_path / "old.sqlite"
    legacy_copy(spec.db_path, old, until="m008_slim_store")
    os.replace(old, spec.db_path)
    table, tally, placed, rendered = both(spec, tmp_path)
    assert placed == 0 and rendered == 20 and tally["ok"] + tally["failed"] == 20


def test_a_run_records_its_render_context_and_its_export_places_every_row(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, rows(25))
    assert invoke_cli("run", str(spec_path), "--quiet").exit_code == 0
    spec = load(spec_path)
    assert query(spec.db_path, "SELECT render_context FROM runs") == [(checked(spec).render_context(),)]
    table, tally, placed, rendered = both(spec, tmp_path)
    assert tally == {"ok": 25} and placed == 25 and rendered == 0
    assert read_table(spec.output.path)["content"].to_list() == table["content"].to_list()


def test_a_row_s_request_is_pinned_with_the_render_version(tmp_path: Path) -> None:
    # If this fails, rows now render to other requests (and keys): bump render.RENDER_VERSION
    # with the new key here, so that no export places results made by the old rendering.
    spec = load(write_job(tmp_path, [{"id": "r0", "text": "item number 0"}]))
    (made,) = requests(checked(spec))
    assert (RENDER_VERSION, made.key) == (1, "fdf849614805fe7b7b653a4a102276c4")
