"""S4's job, made without HTTP: an input table of N rows, and a store in which a run finished the
first D of them, as `python -m batchrunner run SPEC --limit D` against the simulator leaves it.

    python -m benchmarks.fabricate FOLDER --rows N --done D [--workers 2] [--json PATH]

writes FOLDER/input.parquet, FOLDER/job.toml (the benchmark's ordinary spec, job `bench-s4`)
and its store FOLDER/out/bench-s4.sqlite. Each finished row holds what the simulator answers
it (the same text, token counts and finish reason), one attempt, its cost from the shipped
price table, and the request key that `render` computes; the run's row says it finished D rows
and has its resume point where that run's would be. So a later `run SPEC` finds those rows done
and sends the rest. tests/test_bench.py checks that the store equals, but for timestamps,
latencies and request ids, the one a real run over the same table leaves.

How it is fast: the table is made in chunks, each from its own seeded generator (the rows look
like `data.prompt_table`'s, but a chunk does not follow on from the draws of the one before),
by worker processes that also work out each finished row (`rowmaker`). The first THROUGH_API
rows go into the store through `Store.write`, as a run's do; every other row is a copy of the
first one's stored form with its own values put in, inserted by this process in bulk (one
transaction, no journal, a large page cache), in input order, as a run commits them. Before the
bulk insert, the bulk form of those first rows must equal what `Store.write` stored for them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from batchrunner.pending import BATCH_ROWS
from batchrunner.pricing import pusd_to_usd
from batchrunner.source import Source
from batchrunner.spec import JobSpec, load
from batchrunner.store import Store
from batchrunner.store.packing import iso_of, packed_key
from batchrunner.store.slim import ATTEMPT_COLUMNS, RESULT_COLUMNS

from .data import write_spec
from .harness import CONCURRENCY, HUGE_RPM
from .rowmaker import ROWS_PER_S, Bulk, Chunk, Maker, Row, make_chunk, setup

JOB = "bench-s4"
CHUNK_ROWS = 50_000  # rows a worker makes at once
THROUGH_API = 100  # the first rows, written with Store.write (and compared with their bulk form)
CACHE_KIB = 1_048_576  # SQLite page cache of the bulk insert
BASE_URL = "http://127.0.0.1:0/api/v1"  # where the fabricated run "sent" its requests


def fabricate(folder: Path, rows: int, done: int, workers: int = 2) -> dict[str, Any]:
    """Make the input table, spec and store in `folder` (workers = 0: all in this process);
    returns what it made and how long each step took (seconds)."""
    t_start = time.monotonic()
    data = folder / "input.parquet"
    spec_path = write_spec(folder, name=JOB, input_path=data, requests_per_minute=HUGE_RPM, concurrency=CONCURRENCY)
    spec = load(spec_path)
    for old in spec.db_path.parent.glob(spec.db_path.name + "*"):
        old.unlink()
    t0_ms = int(time.time() * 1000) - done * 1000 // ROWS_PER_S
    maker = Maker(spec, t0_ms)
    first = list(maker.rows(maker.table(0, min(done, THROUGH_API)), 0))
    with Store(spec.db_path) as store:
        run_id = store.start_run(job=JOB, spec_digest=spec.digest, simulated=False, base_url=BASE_URL, rows_total=rows)
        made = [maker.records(row, run_id) for row in first]
        store.write([r for r, _ in made], [a for _, a in made])
    sums = Chunk(input_tokens=sum(r.input_tokens for r in first), output_tokens=sum(r.output_tokens for r in first))
    sums.cost_pusd = sum(r.cost.total_pusd for r in first if r.cost)
    t_bulk = time.monotonic()
    parts = folder / "parts"
    parts.mkdir(exist_ok=True)
    names = [parts / f"part-{s:010d}.parquet" for s in range(0, rows, CHUNK_ROWS)]
    jobs = [
        (s, min(CHUNK_ROWS, rows - s), done, len(first), name)
        for s, name in zip(range(0, rows, CHUNK_ROWS), names, strict=True)
    ]
    bulk = template(spec.db_path, first)
    workers = 0 if len(jobs) == 1 else min(workers, len(jobs))  # one chunk: not worth starting processes
    bulk_insert(spec.db_path, made_chunks((spec_path, t0_ms, bulk.result, bulk.attempt), jobs, workers), sums)
    t_input = time.monotonic()
    pl.scan_parquet(names).sink_parquet(data, row_group_size=512**2)  # as polars writes a whole table
    for name in names:
        name.unlink()
    parts.rmdir()
    t_finish = time.monotonic()
    finish(spec, run_id, rows, done, sums, t0_ms)
    return {
        "rows": rows,
        "done": done,
        "workers": workers,
        "spec": str(spec_path),
        "store": str(spec.db_path),
        "fabricate_s": time.monotonic() - t_start,
        "bulk_s": t_input - t_bulk,
        "input_s": t_finish - t_input,
        "finish_s": time.monotonic() - t_finish,
        "input_mb": data.stat().st_size / 2**20,
        "store_mb": sum(p.stat().st_size for p in spec.db_path.parent.glob(spec.db_path.name + "*")) / 2**20,
    }


def template(db: Path, first: Sequence[Row]) -> Bulk:
    """The bulk form, from the first row as Store.write stored it; each of the `first` rows
    must come out of it as Store.write stored that row (RuntimeError if not)."""
    conn = sqlite3.connect(db)
    try:
        if not first:
            return Bulk([None] * len(RESULT_COLUMNS), [None] * len(ATTEMPT_COLUMNS))
        key = first[0].key
        bulk = Bulk(_stored(conn, "results", RESULT_COLUMNS, key), _stored(conn, "attempts", ATTEMPT_COLUMNS, key))
        for row in first:
            stored = (
                _stored(conn, "results", RESULT_COLUMNS, row.key),
                _stored(conn, "attempts", ATTEMPT_COLUMNS, row.key),
            )
            if bulk.rows(row) != stored:
                msg = (
                    f"row {row.row_index}: its bulk form is not what Store.write stored; update benchmarks/rowmaker.py"
                )
                raise RuntimeError(msg)
        return bulk
    finally:
        conn.close()


def _stored(conn: sqlite3.Connection, table: str, columns: Sequence[str], key: str) -> tuple[Any, ...]:
    names = ", ".join(f"[{c}]" for c in columns)
    found = conn.execute(f"SELECT {names} FROM {table} WHERE key = ?", [packed_key(key)]).fetchone()
    assert found is not None, f"no {table} row of {key}"
    return tuple(found)


def made_chunks(setup_args: tuple[Any, ...], jobs: list[tuple[Any, ...]], workers: int) -> Iterator[Chunk]:
    """make_chunk(*job) for each job, in order: in `workers` processes set up with
    `setup_args` (at most two chunks per worker made ahead), or in this one when workers = 0."""
    if workers <= 0:
        setup(*setup_args)
        yield from (make_chunk(*job) for job in jobs)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=setup, initargs=setup_args) as pool:
        try:
            window: deque[Future[Chunk]] = deque()
            for job in jobs:
                window.append(pool.submit(make_chunk, *job))
                if len(window) > 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def bulk_insert(db: Path, chunks: Iterator[Chunk], sums: Chunk) -> None:
    """Insert every chunk's rows in one transaction (no journal: a failure leaves a store to
    throw away), then put the store back in WAL mode; add each chunk's sums to `sums`."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("BEGIN")
        attempts = f"INSERT INTO attempts VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
        results = f"INSERT INTO results VALUES ({', '.join('?' * len(RESULT_COLUMNS))})"
        for chunk in chunks:
            conn.executemany(attempts, chunk.attempts)
            conn.executemany(results, chunk.results)
            sums.input_tokens += chunk.input_tokens
            sums.output_tokens += chunk.output_tokens
            sums.cost_pusd += chunk.cost_pusd
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def finish(spec: JobSpec, run_id: int, rows: int, done: int, sums: Chunk, t0_ms: int) -> None:
    """Record the run's end as `run --limit done` does (through the store), with its resume
    point where that run's would be: the start of the first slice it had not read in full."""
    with Store(spec.db_path) as store:
        store.finish_run(
            run_id,
            status="finished",
            exit_code=0,
            already_done=0,
            sent=done,
            ok=done,
            failed=0,
            skipped=0,
            attempts=done,
            retries=0,
            input_tokens=sums.input_tokens,
            output_tokens=sums.output_tokens,
            cost_usd=pusd_to_usd(sums.cost_pusd),
            input_signature=Source(spec).signature(),
            resume_offset=rows if done >= rows else done // BATCH_ROWS * BATCH_ROWS,
            started_at=iso_of(t0_ms),
        )
    # What the run would have recorded at its start (the input file did not exist yet then):
    # an export places this run's results by row index only under it.
    source = Source(spec)
    conn = sqlite3.connect(spec.db_path)
    try:
        with conn:
            context = source.renderer.render_context(source.signature())
            conn.execute("UPDATE runs SET render_context = ? WHERE id = ?", [context, run_id])
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fabricate", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--done", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="processes that make the rows (0: this one)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args(argv)
    if not 0 <= args.done <= args.rows or args.rows < 1:
        parser.error("--done must be between 0 and --rows (at least 1)")
    args.folder.mkdir(parents=True, exist_ok=True)
    figures = fabricate(args.folder.resolve(), args.rows, args.done, args.workers)
    text = json.dumps(figures, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
