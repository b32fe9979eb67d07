"""Validation no stricter than the service: jobs the service runs are not refused, and what
the service refuses is caught before the first paid request, on the rendered messages.

incremental_output on a plain call (the service ignores it) and json_object output, whose
"word JSON" rule the service checks on the messages it is sent, not on the template."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import read_table, write_job

from batchrunner import InputError, cells, load_spec, run_job
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.source import Source

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(4)]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-validation")
        yield handle


def sent_parameters(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return [json.loads(p) for (p,) in conn.execute("SELECT parameters FROM results_view ORDER BY row_id")]


def keys(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [k for (k,) in conn.execute("SELECT key FROM results_view ORDER BY row_id")]


# ----------------------------------------------------------------- incremental_output


@pytest.mark.parametrize("incremental", [False, True])
def test_incremental_output_on_a_plain_call_is_accepted_and_not_sent(
    tmp_path: Path, sim: ThreadHandle, incremental: bool
) -> None:
    spec = write_job(tmp_path / "with", ROWS, {"parameters": {"incremental_output": incremental}})
    assert load_spec(spec).parameters.incremental_output is incremental
    summary = run_job(spec, handle_signals=False)
    assert summary.table == {"ok": len(ROWS)}
    assert all("incremental_output" not in p for p in sent_parameters(summary.db_path))
    # the service ignores it on a plain call, so the requests are those of the job without it
    without = run_job(write_job(tmp_path / "without", ROWS), handle_signals=False)
    assert keys(summary.db_path) == keys(without.db_path)
    assert read_table(summary.output_path)["content"].equals(read_table(without.output_path)["content"])


def test_incremental_output_is_sent_when_streaming(tmp_path: Path, sim: ThreadHandle) -> None:
    summary = run_job(
        write_job(tmp_path, ROWS, {"parameters": {"stream": True, "incremental_output": False}}),
        handle_signals=False,
    )
    assert summary.table == {"ok": len(ROWS)}
    assert all(p["incremental_output"] is False for p in sent_parameters(summary.db_path))


# ----------------------------------------------------------------- json_object and the word JSON

JSON_OUT = {"response_format": {"type": "json_object"}}


def json_job(tmp_path: Path, rows: list[dict[str, Any]], prompt: dict[str, Any] | None = None) -> Path:
    overrides: dict[str, Any] = {"parameters": JSON_OUT, "output": {"parse_json": True}}
    if prompt is not None:
        overrides["prompt"] = prompt
    return write_job(tmp_path, rows, overrides)


def test_the_word_in_every_row_runs_though_the_template_lacks_it(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": f"item {i}, answered as {word}"} for i, word in enumerate(["JSON", "json", "Json"])]
    summary = run_job(json_job(tmp_path, rows), handle_signals=False)  # template: "Say something about {text}"
    assert summary.table == {"ok": 3}
    out = read_table(summary.output_path)
    assert all(json.loads(p) == json.loads(c) for p, c in zip(out["parsed"], out["content"], strict=True))


def test_the_word_may_span_a_placeholder(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": "a", "text": "son"}, {"id": "b", "text": "SON please"}]
    summary = run_job(json_job(tmp_path, rows, {"template": "Answer in J{text}."}), handle_signals=False)
    assert summary.table == {"ok": 2}


def test_a_row_without_the_word_fails_before_anything_is_sent(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": f"item {i} as JSON"} for i in range(7)]
    rows[2]["text"] = rows[5]["text"] = "plain words"
    spec = json_job(tmp_path, rows)
    with pytest.raises(InputError) as err:
        run_job(spec, handle_signals=False)
    message = str(err.value)
    assert str(tmp_path / "data.csv") in message
    assert "row(s) 3, 6:" in message
    assert "needs the word JSON" in message and "[prompt] system or template" in message
    assert sim.sim.stats()["requests"] == 0
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "prompt",
    [{"system": "Reply in JSON."}, {"context": "Output: json."}, {"template": "{text} -> JSON"}],
    ids=["system", "context", "template"],
)
def test_the_fixed_text_saying_json_is_enough(tmp_path: Path, sim: ThreadHandle, prompt: dict[str, str]) -> None:
    summary = run_job(json_job(tmp_path, ROWS, prompt), handle_signals=False)
    assert summary.table == {"ok": len(ROWS)}


def test_rows_left_out_are_not_checked(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [{"id": "a", "text": "as json"}, {"id": "b", "text": ""}]
    summary = run_job(json_job(tmp_path, rows, {"on_empty": "skip"}), handle_signals=False)
    assert summary.table == {"ok": 1, "skipped": 1}


def messages_cell(*messages: tuple[str, str]) -> str:
    return json.dumps([{"role": role, "content": content} for role, content in messages])


def test_messages_rows_are_checked_as_rendered(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [
        {"id": "a", "messages": messages_cell(("user", "Describe the sea."))},  # gets the spec's system
        {"id": "b", "messages": messages_cell(("system", "Be brief."), ("user", "Describe the sea."))},
        {"id": "c", "messages": messages_cell(("system", "Be brief."), ("user", "Describe it in json."))},
    ]
    prompt = {"system": "Reply in JSON.", "template": None, "messages_column": "messages"}
    with pytest.raises(InputError) as err:
        run_job(json_job(tmp_path / "one", rows, prompt), handle_signals=False)
    assert "row(s) 2:" in str(err.value) and "those rows' messages" in str(err.value)
    assert sim.sim.stats()["requests"] == 0
    summary = run_job(json_job(tmp_path / "two", [rows[0], rows[2]], prompt), handle_signals=False)
    assert summary.table == {"ok": 2}
    parts = [{"role": "user", "content": [{"type": "text", "text": "Reply in JSON."}]}]
    summary = run_job(
        json_job(tmp_path / "parts", [{"id": "d", "messages": json.dumps(parts)}], {**prompt, "system": None}),
        handle_signals=False,
    )
    assert summary.table == {"ok": 1}


def test_rows_are_rendered_a_slice_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": f"r{i}", "text": "no word" if i in (4, 10) else "json"} for i in range(11)]
    source = Source(load_spec(json_job(tmp_path, rows)))
    with pytest.raises(InputError, match=r"row\(s\) 5, 11:"):
        source.check()
    batches: list[int] = []
    without_word = cells._without_word

    def spy(checked: Source, batch: pl.DataFrame) -> list[int]:
        batches.append(batch.height)
        return without_word(checked, batch)

    monkeypatch.setattr(cells, "_without_word", spy)
    with pytest.raises(InputError, match=r"row\(s\) 5, 11:"):
        cells.check_json_word(source, size=3)
    assert len(batches) == 4 and max(batches) <= 3  # 11 rows, 3 at a time (only rows lacking the word)


def test_cells_that_are_not_text(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = pl.DataFrame({"id": ["a", "b"], "tags": [["json", "x"], ["y"]], "n": [1, 2]})
    prompt = {"template": "{n}: {tags}", "on_empty": "send"}  # (the empty-cell check casts lists to text)
    spec = write_job(tmp_path, rows, {"parameters": JSON_OUT, "prompt": prompt}, data_name="data.parquet")
    with pytest.raises(InputError, match=r"row\(s\) 2:"):
        run_job(spec, handle_signals=False)
    assert sim.sim.stats()["requests"] == 0
