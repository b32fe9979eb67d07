"""Nothing a run keeps grows with the table: what `Pending` and the `Frontier` hold is bounded by
the requests in flight (and one slice), identical requests far apart are still sent once (the
store's lookup finds them, not a set of every key), and the output table is streamed. Sizes,
not timings; a real input file and a real SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import read_table, write_job

from batchrunner import pending, sink
from batchrunner.pending import Frontier, Pending
from batchrunner.records import Result
from batchrunner.render import Request
from batchrunner.source import Source
from batchrunner.spec import load
from batchrunner.store import Store

SLICE = 100
IN_FLIGHT = 8


def answer(request: Request, run_id: int) -> Result:
    return Result(
        key=request.key,
        row_id=request.row_id,
        row_index=request.row_index,
        status="ok",
        retryable=0,
        attempts=1,
        possibly_billed_attempts=0,
        latency_ms=1,
        started_at="2026-12-01T00:00:00.000+00:00",
        finished_at="2026-12-01T00:00:00.001+00:00",
        model="qwen-plus",
        endpoint=request.path,
        parameters=None,
        run_id=run_id,
        content=f"answer to {request.row_id}",
    )


async def drive(source: Source, store: Store, frontier: Frontier) -> tuple[list[str], list[tuple[int, ...]]]:
    """Take requests as a pool of IN_FLIGHT would, committing the oldest when full; returns the
    keys sent and, after every request, the sizes of what is held."""
    run_id = store.start_run(job="t", spec_digest="d", simulated=True, base_url="http://x")
    todo = Pending(source, store, retry_failed=False, limit=None)
    sent: list[str] = []
    flying: list[Request] = []
    sizes: list[tuple[int, ...]] = []

    def commit(requests: list[Request]) -> None:
        results = [answer(r, run_id) for r in requests]
        store.write(results, [])
        todo.committed(results)
        frontier.committed(results)

    async for request in todo.requests(frontier):
        sent.append(request.key)
        flying.append(request)
        if len(flying) >= IN_FLIGHT:
            commit(flying[: IN_FLIGHT // 2])
            del flying[: IN_FLIGHT // 2]
        sizes.append((len(todo.claimed), len(todo.recent), *frontier.sizes()))
    commit(flying)
    return sent, sizes


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "BATCH_ROWS", SLICE)


def test_what_a_run_holds_stays_bounded_and_far_duplicates_are_sent_once(tmp_path: Path) -> None:
    # 3,000 rows, 700 distinct prompts: a row repeats the one 700 rows (7 slices) before it.
    rows = [{"id": f"r{i}", "text": f"item number {i % 700}"} for i in range(3000)]
    spec = load(write_job(tmp_path, rows))
    source = Source(spec)
    source.check()
    frontier = Frontier(0)
    with Store(spec.db_path) as store:
        sent, sizes = asyncio.run(drive(source, store, frontier))
        assert len(sent) == len(set(sent)) == 700  # every distinct request once, none twice
        claimed, recent, open_slices, flying = (max(column) for column in zip(*sizes, strict=True))
        assert claimed <= IN_FLIGHT and flying <= IN_FLIGHT  # in flight only, not every key sent
        assert open_slices <= 2  # the slices with a request in flight
        assert recent <= SLICE + IN_FLIGHT  # what was committed while one slice was sent
        assert frontier.point() == len(rows)  # everything settled: a rerun reads nothing
        assert store.counts() == {"ok": 700}


def test_a_request_left_for_a_later_run_holds_the_point_with_one_number() -> None:
    frontier = Frontier(0)
    for offset in (500, 300, 900):
        frontier.block(offset)
    frontier.read_through(1000)
    assert frontier.point() == 300
    assert frontier.sizes() == (0, 0)


def test_duplicate_ids_are_found_when_the_check_goes_in_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrunner import source as source_module
    from batchrunner.errors import InputError

    monkeypatch.setattr(source_module, "ID_PASS_ROWS", 100)  # 10 passes over 1,000 ids
    rows = [{"id": f"r{i}", "text": f"t{i}"} for i in range(1000)]
    rows[777]["id"] = "r12"
    spec = load(write_job(tmp_path / "twice", rows))
    with pytest.raises(InputError, match=r"'r12' in row\(s\) 13, 778"):
        Source(spec).check()
    rows[777]["id"] = "r777"
    Source(load(write_job(tmp_path / "once", rows))).check()  # unique ids pass in every pass


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_the_output_table_is_streamed_in_input_order(tmp_path: Path, suffix: str) -> None:
    rows = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(1234)]
    spec = load(write_job(tmp_path, rows, {"output": {"path": f"out/result.{suffix}"}}))
    source = Source(spec)
    source.check(reserved=sink.result_columns(spec))
    with Store(spec.db_path) as store:
        run_id = store.start_run(job="t", spec_digest="d", simulated=True, base_url="http://x")
        items = [i for i in source.requests(source.batch_at(0, 1234)) if isinstance(i, Request)]
        store.write([answer(r, run_id) for r in items[::2]], [])  # every other row answered
        out, tally = sink.export(spec, store, source, batch_rows=100)
    assert tally == {"ok": 617, "pending": 617}
    table = read_table(out)
    assert table["id"].to_list() == [f"r{i}" for i in range(1234)]
    assert table["status"].to_list() == ["ok", "pending"] * 617
    assert table["content"][2] == "answer to r2"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


async def test_the_writer_holds_the_intake_while_its_buffer_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store slower than the answers (here: a write lock held by another connection) must not
    let the buffer grow without end: the intake waits until a commit makes room."""
    from batchrunner import writer as writer_module
    from batchrunner.writer import CheckpointWriter

    monkeypatch.setattr(writer_module, "MAX_PENDING", 10)
    path = tmp_path / "s.sqlite"
    store = Store(path, busy_timeout_ms=20)
    writer = CheckpointWriter(store, run_id=1)
    task = asyncio.create_task(writer.run())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the store cannot be written for now

    async def numbers() -> AsyncIterator[int]:
        for i in range(100):
            yield i

    taken: list[int] = []

    async def intake() -> None:
        async for i in writer.paced(numbers()):
            taken.append(i)
            writer.add_result(ok(i))

    feeding = asyncio.create_task(intake())
    await asyncio.sleep(0.5)
    assert len(taken) == 10 and writer.pending == 10  # held at the bound, nothing dropped
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(feeding, 30)
    await writer.close()
    task.cancel()
    assert len(taken) == 100
    assert store.counts() == {"ok": 100}
    store.close()


def ok(i: int) -> Result:
    return Result(
        key=f"k{i}",
        row_id=f"r{i}",
        row_index=i,
        status="ok",
        retryable=0,
        attempts=1,
        possibly_billed_attempts=0,
        latency_ms=1,
        started_at="2026-12-01T00:00:00.000+00:00",
        finished_at="2026-12-01T00:00:00.001+00:00",
        model="qwen-plus",
        endpoint="/x",
        parameters=None,
        run_id=1,
    )
