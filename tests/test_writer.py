"""The checkpoint writer never drops a paid answer: a held write lock is waited out, a full
disk stops the run and keeps the answers in a side file that the next run loads. Real SQLite
files; the "disk" is filled with SQLite's own page limit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_table, small_tmpfs, write_job

from batchrunner import run_job
from batchrunner import store as store_module
from batchrunner.records import Attempt, Result
from batchrunner.simulator import ThreadHandle
from batchrunner.store import Store
from batchrunner.writer import CheckpointWriter, load_spilled


def result(i: int) -> Result:
    return Result(
        key=f"k{i}",
        row_id=f"r{i}",
        row_index=i,
        status="ok",
        retryable=0,
        attempts=1,
        possibly_billed_attempts=0,
        latency_ms=5,
        started_at="2026-12-01T00:00:00.000+00:00",
        finished_at="2026-12-01T00:00:00.005+00:00",
        model="qwen-plus",
        endpoint="/x",
        parameters=None,
        run_id=1,
        content="an answer " * 50,
    )


def attempt(i: int) -> Attempt:
    return Attempt(f"k{i}", 1, 1, "2026-12-01T00:00:00.000+00:00", 5, "ok", http_status=200, possibly_billed=1)


def stored(path: Path) -> tuple[int, int]:
    with Store(path, readonly=True) as store:
        return store.counts().get("ok", 0), sum(store.attempt_counts().values())


async def test_each_answer_is_committed_as_soon_as_the_writer_is_free(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    committed: list[list[str]] = []
    done = asyncio.Event()

    def on_commit(results: object) -> None:
        committed.append([r.key for r in results])  # type: ignore[attr-defined]
        done.set()

    writer = CheckpointWriter(store, run_id=1, on_commit=on_commit)
    task = asyncio.create_task(writer.run())
    for i in range(3):
        done.clear()
        writer.add_result(result(i))
        await asyncio.wait_for(done.wait(), 10)  # no later add is needed to trigger the commit
    await writer.close()
    task.cancel()
    store.close()
    assert committed == [["k0"], ["k1"], ["k2"]]


async def test_a_held_write_lock_is_waited_out_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path, busy_timeout_ms=20)
    errors: list[BaseException] = []
    writer = CheckpointWriter(store, run_id=1, on_error=errors.append)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a person's sqlite3 shell in the middle of a write
    for i in range(50):
        writer.add_result(result(i))
        writer.add_attempt(attempt(i))
    assert await writer.flush() is False
    assert await writer.flush() is False
    assert writer.pending == 100  # kept, not dropped
    other.execute("COMMIT")
    other.close()
    assert await writer.flush() is True
    await writer.close()
    store.close()
    assert errors == []  # a held lock does not stop the run
    assert stored(path) == (50, 50)


async def test_a_full_disk_stops_the_run_and_keeps_the_answers_for_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path)
    writer = CheckpointWriter(store, run_id=1, on_error=lambda exc: errors.append(exc))
    errors: list[BaseException] = []
    writer.add_result(result(0))
    assert await writer.flush()
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from now on
    for i in range(1, 200):
        writer.add_result(result(i))
        writer.add_attempt(attempt(i))
    assert await writer.flush() is False
    assert len(errors) == 1 and "full" in str(errors[0])  # reported at once: the run stops buying
    await writer.close()
    store.close()
    assert writer.spilled is not None and writer.spilled.is_file()
    assert stored(path) == (1, 0)
    with Store(path) as again:  # the next run: the disk has room again
        assert load_spilled(again) == 199 + 199
    assert not writer.spilled.exists()
    assert stored(path) == (200, 199)


# ------------------------------------------------------------------ a whole run on a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB filesystem (tmpfs), unmounted at the end: a disk that can fill up mid-run."""
    with small_tmpfs(tmp_path / "small", "16m") as folder:
        yield folder


def test_a_run_on_a_disk_that_fills_up_exits_6_and_the_next_run_buys_only_what_is_missing(
    tmp_path: Path, small_disk: Path, sim_thread: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim_thread.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-disk")
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (15872 * 1024))  # leaves about 512 KiB for the store
    rows = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(3000)]
    spec = write_job(tmp_path, rows, {"job": {"name": "t", "db": str(small_disk / "t.sqlite")}})
    first = run_job(spec)
    assert first.exit_code == 7, first.message
    assert "could not be written" in first.message and "full" in first.message
    bought_first = sim_thread.sim.stats()["answered"]
    assert bought_first < len(rows)  # it stopped buying once the store could not keep up
    filler.unlink()  # the user frees the disk and runs the job again
    second = run_job(spec)
    assert second.exit_code == 0, second.message
    assert sim_thread.sim.stats()["answered"] == len(rows)  # the rest, and nothing bought twice
    assert read_table(second.output_path)["status"].to_list() == ["ok"] * len(rows)


def test_a_run_whose_store_is_locked_for_a_while_by_a_person_keeps_every_answer(
    tmp_path: Path, sim_thread: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim_thread.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-lock")
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)  # the lock is held far longer than this
    rows = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(600)]
    spec = write_job(tmp_path, rows, {"limits": {"requests_per_minute": 30_000, "concurrency": 8}})
    held = threading.Event()

    held_through: list[bool] = []

    def hold_the_lock() -> None:  # a sqlite3 shell writing in the store in the middle of the run
        if not sim_thread.sim.wait_for_requests(50, timeout=60):
            return
        shell = sqlite3.connect(tmp_path / "out" / "t.sqlite", isolation_level=None)
        shell.execute("BEGIN IMMEDIATE")
        held.set()
        held_through.append(sim_thread.sim.wait_for_requests(400, timeout=60))  # 350 answers while held
        shell.execute("COMMIT")
        shell.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        summary = run_job(spec)
    finally:
        holder.join()
    assert held.is_set() and held_through == [True]
    assert summary.exit_code == 0, summary.message
    assert read_table(summary.output_path)["status"].to_list() == ["ok"] * len(rows)
    assert sim_thread.sim.stats()["answered"] == len(rows)
