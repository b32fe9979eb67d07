"""Every example spec in jobs/ runs on the simulator and shows what its family is for."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from helpers import query, read_table

from batchrunner import load_spec, run_job

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def run_example(name: str, tmp_path: Path) -> pl.DataFrame:
    spec = load_spec(JOBS / f"{name}.toml")
    output = tmp_path / f"out{spec.output.path.suffix}"
    summary = run_job(spec, simulate=True, db=tmp_path / "store.sqlite", output=output, handle_signals=False)
    assert summary.exit_code == 0, summary
    table = read_table(output)
    assert set(table["status"].to_list()) == {"ok"}
    return table


def test_every_job_is_covered() -> None:
    assert sorted(p.stem for p in JOBS.glob("*.toml")) == sorted(
        [
            "reviews-summary",
            "vision-captions",
            "thinking-math",
            "json-extraction",
            "tools-eval",
            "repeats",
            "openai-compatible",
            "batch-reviews",
        ]
    )


def test_text(tmp_path: Path) -> None:
    assert run_example("reviews-summary", tmp_path).height == 12


def test_batch(tmp_path: Path) -> None:
    table = run_example("batch-reviews", tmp_path)
    assert table.height == 12
    (mode,) = query(tmp_path / "store.sqlite", "SELECT DISTINCT mode FROM results_view")
    assert mode == ("batch",)


def test_vision(tmp_path: Path) -> None:
    table = run_example("vision-captions", tmp_path)
    assert [int(t) for t in table["image_tokens"].to_list()] == [256, 256, 256]


def test_thinking(tmp_path: Path) -> None:
    table = run_example("thinking-math", tmp_path)
    assert all(t > 0 for t in table["reasoning_tokens"].to_list())
    assert all(r for r in table["reasoning_content"].to_list())


def test_json_extraction(tmp_path: Path) -> None:
    table = run_example("json-extraction", tmp_path)
    assert table.height == 3
    for parsed, content in zip(table["parsed"].to_list(), table["content"].to_list(), strict=True):
        assert json.loads(parsed) == json.loads(content)  # the answer, parsed into its own column


def test_tools(tmp_path: Path) -> None:
    table = run_example("tools-eval", tmp_path)
    assert set(table["finish_reason"].to_list()) == {"tool_calls"}
    for calls in table["tool_calls"].to_list():
        (call,) = json.loads(calls)
        assert call["function"]["name"] == "get_weather"
        assert "city" in json.loads(call["function"]["arguments"])


def test_repeats(tmp_path: Path) -> None:
    table = run_example("repeats", tmp_path)
    assert table.height == 9 and table["sample"].to_list() == ["0", "1", "2"] * 3
    per_brand = table.group_by("brand").agg(pl.col("content").n_unique())
    assert per_brand["content"].to_list() == [3, 3, 3]


@pytest.mark.parametrize("name", ["openai-compatible"])
def test_openai_compatible_gives_the_same_columns_as_native(tmp_path: Path, name: str) -> None:
    compat = run_example(name, tmp_path / "compat")
    native = run_example("reviews-summary", tmp_path / "native")
    same = ["review_id", "content", "input_tokens", "output_tokens", "total_tokens"]
    assert compat.columns == native.columns
    assert compat.select(pl.col(same).cast(pl.String)).equals(native.select(pl.col(same).cast(pl.String)))
