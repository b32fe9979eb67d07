"""A resume never trusts a stale resume point, and exit 0 means every row is settled."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import merged, read_table, spec_text, write_job

from batchrunner import Progress, pending, run_job
from batchrunner.errors import InputError
from batchrunner.records import Result
from batchrunner.simulator import ThreadHandle
from batchrunner.source import Source
from batchrunner.store import Store

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(300)]


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "BATCH_ROWS", 50)  # six slices: the resume point moves along


@pytest.fixture
def sim(sim_thread: ThreadHandle, monkeypatch: pytest.MonkeyPatch) -> ThreadHandle:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim_thread.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-resume")
    return sim_thread


def test_a_changed_context_file_is_seen_and_every_row_is_sent_again(tmp_path: Path, sim: ThreadHandle) -> None:
    context = tmp_path / "manual.md"
    context.write_text("Version one of the manual.", encoding="utf-8")
    limits = {"requests_per_minute": 600_000, "concurrency": 64}
    spec = write_job(tmp_path, ROWS, {"prompt": {"context_file": "manual.md"}, "limits": limits})
    first = run_job(spec)
    assert first.exit_code == 0
    with Store(first.db_path, readonly=True) as store:
        assert store.runs()[-1]["resume_offset"] == len(ROWS)  # a resume would start at the end
    context.write_text("Version two of the manual.", encoding="utf-8")  # every request changes
    sim.sim.reset()
    again = run_job(spec)
    assert again.exit_code == 0, again.message
    assert sim.sim.stats()["answered"] == len(ROWS)
    assert read_table(again.output_path)["status"].unique().to_list() == ["ok"]


class GrowsTheInput(Progress):
    """Appends rows to the input file while the run goes (another process writing it)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.done = False

    def row_finished(self, result: Result) -> None:
        if not self.done:
            self.done = True
            with self.data.open("a", encoding="utf-8") as out:
                out.writelines(f"new{i},late row {i}\n" for i in range(5))


def test_rows_added_to_the_input_during_the_run_make_it_exit_1(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:20])
    summary = run_job(spec, progress=GrowsTheInput(tmp_path / "data.csv"))
    assert summary.table == {"ok": 20, "pending": 5}
    assert summary.exit_code == 1
    assert "5 row(s) are still pending" in summary.message
    assert run_job(spec).exit_code == 0  # the next run picks them up


def test_a_resume_over_the_same_file_does_not_check_every_row_again(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks that read every row (ids, empty cells) passed when a run of the same spec
    started over the same file (path, size, modification time): a resume skips them, which
    at 10M rows saves seconds of its start-up. Another file, or another spec, is checked."""
    checked: list[str] = []
    real = Source._check_ids

    def counted(self: Source) -> None:
        checked.append(self.signature())
        real(self)

    monkeypatch.setattr(Source, "_check_ids", counted)
    limits = {"requests_per_minute": 600_000, "concurrency": 64}
    spec = write_job(tmp_path, ROWS, {"limits": limits})
    assert run_job(spec, limit=100).exit_code == 0
    assert len(checked) == 1
    assert run_job(spec).exit_code == 0  # the resume: no check of every row
    assert len(checked) == 1
    spec.write_text(spec_text(merged({"limits": limits, "parameters": {"temperature": 0.9}})), encoding="utf-8")
    assert run_job(spec).exit_code == 0  # another spec over the same file: checked
    assert len(checked) == 2
    data = tmp_path / "data.csv"
    data.write_text(data.read_text(encoding="utf-8") + "r0,a second row with the first row's id\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicates"):  # a changed file: checked
        run_job(spec)
    assert len(checked) == 3
