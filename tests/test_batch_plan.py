"""Planning batch files: cut by lines and bytes, lines over 6 MB failed locally, a 50,000-line
file written in bounded memory (the file goes to disk a line at a time)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from helpers import query

from batchrunner import batchstate as bs
from batchrunner.batchplan import Plan, Planner
from batchrunner.render import Request, canonical, key_of
from batchrunner.store import Store


async def requests(n: int, size: int = 40, start: int = 0) -> AsyncIterator[Request]:
    for i in range(start, start + n):
        text = f"Say something about item {i}. " + "x" * size
        body = {"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": text}]}, "parameters": {}}
        content = canonical(body)
        yield Request(key_of("/p", content), i, f"r{i}", "/p", body, 10, 0, None, content)


def plan(store: Store, items: AsyncIterator[Request], **limits: int) -> Plan:
    run_id = store.start_run(job="j", spec_digest="d", simulated=True, base_url="x")
    planner = Planner(store, job="j", run_id=run_id, **{"max_lines": 50_000, "max_bytes": 500 * 2**20, **limits})
    return asyncio.run(planner.plan(items))


def test_files_are_cut_at_the_line_and_byte_limits(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    with Store(db) as store:
        by_lines = plan(store, requests(25), max_lines=10)
        by_bytes = plan(store, requests(10, start=100), max_bytes=1000)
        again = plan(store, requests(25))  # every request is out in a file already
    assert (len(by_lines.files), again.files) == (3, [])
    sizes = query(db, "SELECT lines, bytes, state, spool FROM batch_files ORDER BY id")
    assert [s[0] for s in sizes[:3]] == [10, 10, 5] and {s[2] for s in sizes} == {bs.PLANNED}
    cut = sizes[3:]
    assert len(cut) == len(by_bytes.files) >= 3 and sum(s[0] for s in cut) == 10
    assert all(s[1] <= 1000 and s[1] == Path(s[3]).stat().st_size for s in cut)
    first = Path(sizes[0][3]).read_bytes().splitlines()
    line = json.loads(first[0])
    assert line["url"] == "/v1/chat/completions" and len(line["custom_id"]) == 32
    assert line["method"] == "POST" and line["body"]["enable_thinking"] is False
    assert line["body"]["messages"][0]["content"].startswith("Say something about item 0.")
    assert query(db, "SELECT count(DISTINCT custom_id), count(*) FROM batch_lines") == [(35, 35)]


def test_a_line_over_6_mb_fails_its_row_before_anything_is_uploaded(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    with Store(db) as store:

        async def items() -> AsyncIterator[Request]:
            async for r in requests(2):
                yield r
            async for r in requests(1, size=7 * 2**20, start=2):
                yield r

        result = plan(store, items())
    assert result.too_large == 1 and result.lines == 2
    failed = query(db, "SELECT row_id, status, error_code, error_message FROM results_view")
    assert failed[0][:3] == ("r2", "failed", "LineTooLarge") and "6291456" in failed[0][3]


def test_a_50000_line_file_is_planned_in_bounded_memory(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    with Store(db) as store:
        tracemalloc.start()
        try:
            result = plan(store, requests(50_000, size=1500))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    spool = Path(query(db, "SELECT spool FROM batch_files")[0][0])
    assert result.files == [1] and result.lines == 50_000
    assert spool.stat().st_size > 75 * 2**20
    # The file is written a line at a time: the peak is the lines' bookkeeping, far below the file.
    assert peak < 40 * 2**20, peak
