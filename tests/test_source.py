"""Input tables and prompt rendering: CSV, Parquet, JSONL, awkward cells, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from helpers import write_job

from batchrunner import InputError, SpecError, load_spec
from batchrunner.prompts import parse_template
from batchrunner.render import Request, Skipped, request_key
from batchrunner.sink import result_columns
from batchrunner.source import Source

AWKWARD = [
    {"id": "a", "text": 'has "quotes", and commas'},
    {"id": "b", "text": "spans\ntwo lines"},
    {"id": "c", "text": "non-ASCII: café, 中文, emoji 🙂"},
    {"id": "d", "text": "plain"},
]


def checked(spec_path: Path) -> Source:
    """A source checked as a run checks it (its output columns reserved)."""
    spec = load_spec(spec_path)
    source = Source(spec)
    source.check(reserved=result_columns(spec))
    return source


@pytest.mark.parametrize("data_name", ["data.csv", "data.parquet", "data.jsonl"])
def test_formats_read_awkward_cells_exactly(tmp_path: Path, data_name: str) -> None:
    source = checked(write_job(tmp_path, AWKWARD, data_name=data_name))
    assert source.n_rows == 4
    items = [i for b in source.batches(3) for i in source.requests(b)]
    assert [i.row_id for i in items] == ["a", "b", "c", "d"]
    assert [i.row_index for i in items] == [0, 1, 2, 3]
    users = [i.body["input"]["messages"][-1]["content"] for i in items if isinstance(i, Request)]
    assert users == [f"Say something about {r['text']}" for r in AWKWARD]
    first = items[0]
    assert isinstance(first, Request)
    assert first.body == {
        "model": "qwen-plus",
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": 'Say something about has "quotes", and commas'},
            ]
        },
        "parameters": {"result_format": "message", "temperature": 0.5, "max_tokens": 32, "seed": 1},
    }


def test_row_number_is_the_default_id(tmp_path: Path) -> None:
    source = checked(write_job(tmp_path, AWKWARD, {"input": {"id_column": None}}))
    assert [i.row_id for b in source.batches() for i in source.requests(b)] == ["1", "2", "3", "4"]


def test_missing_input_file(tmp_path: Path) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").unlink()
    with pytest.raises(InputError, match=r"data.csv: input file not found"):
        checked(spec)


def test_empty_table(tmp_path: Path) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").write_text("id,text\n", encoding="utf-8")
    with pytest.raises(InputError, match="the table has no rows"):
        checked(spec)


def test_template_naming_a_missing_column(tmp_path: Path) -> None:
    spec = write_job(tmp_path, overrides={"prompt": {"template": "About {body}"}})
    with pytest.raises(InputError) as err:
        checked(spec)
    assert "[prompt] template placeholder {body}" in str(err.value)
    assert "'body'" in str(err.value) and "columns: id, text" in str(err.value)


def test_duplicate_ids(tmp_path: Path) -> None:
    rows = [{"id": "x", "text": "1"}, {"id": "y", "text": "2"}, {"id": "x", "text": "3"}]
    with pytest.raises(InputError, match=r"duplicates \(value 'x' in row\(s\) 1, 3\)"):
        checked(write_job(tmp_path, rows))


def test_null_ids(tmp_path: Path) -> None:
    rows = [{"id": "x", "text": "1"}, {"id": None, "text": "2"}]
    with pytest.raises(InputError, match=r"id column 'id' is empty in row\(s\) 2"):
        checked(write_job(tmp_path, rows, data_name="data.parquet"))


def test_missing_id_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\[input\] id_column names column 'review_id'"):
        checked(write_job(tmp_path, overrides={"input": {"id_column": "review_id"}}))


def test_empty_prompt_cells_error_or_skip(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": None}, {"id": "c", "text": "  "}]
    with pytest.raises(InputError, match=r"prompt cell\(s\) empty in row\(s\) 2, 3; .*on_empty = \"skip\""):
        checked(write_job(tmp_path, rows, data_name="data.parquet"))
    source = checked(write_job(tmp_path, rows, {"prompt": {"on_empty": "skip"}}, data_name="data.parquet"))
    items = [i for b in source.batches() for i in source.requests(b)]
    assert [type(i) for i in items] == [Request, Skipped, Skipped]


def test_non_utf8_csv_says_which_option_to_use(tmp_path: Path) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").write_bytes("id,text\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r'not valid UTF-8.*encoding = "utf8-lossy"'):
        checked(spec)


def test_output_columns_colliding_with_input(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x", "status": "new"}]
    with pytest.raises(InputError, match=r"\['status'\] would collide.*column_prefix"):
        checked(write_job(tmp_path, rows))
    assert checked(write_job(tmp_path, rows, {"output": {"column_prefix": "llm_"}})).n_rows == 1


def test_messages_column(tmp_path: Path) -> None:
    convo = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    rows = [{"id": "a", "messages": json.dumps(convo)}]
    overrides = {"prompt": {"template": None, "messages_column": "messages"}}
    source = checked(write_job(tmp_path, rows, overrides))
    (item,) = [i for b in source.batches() for i in source.requests(b)]
    assert isinstance(item, Request)
    assert item.body["input"]["messages"] == [{"role": "system", "content": "Be brief."}, *convo]
    bad = [{"id": "a", "messages": '[{"role": "robot", "content": "x"}]'}]
    with pytest.raises(InputError, match=r"row 1, column 'messages': item 0 has role 'robot'"):
        checked(write_job(tmp_path, bad, overrides))
    broken = [{"id": "a", "messages": "[{"}]
    with pytest.raises(InputError, match=r"row 1, column 'messages': not valid JSON"):
        checked(write_job(tmp_path, broken, overrides))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{x.__class__}", "attribute or index access"),
        ("{x[0]}", "attribute or index access"),
        ("{x!r}", "conversion or format spec"),
        ("{x:>10}", "conversion or format spec"),
        ("{}", "must name a column"),
        ("{0}", "must name a column"),
        ("unbalanced {", "literal braces"),
    ],
)
def test_templates_allow_plain_placeholders_only(template: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_template(template)


def test_template_literal_braces_and_repeats() -> None:
    t = parse_template("{{json}} {a} and {a} {b}")
    assert t.columns == ("a", "b")
    assert t.render({"a": 1.0, "b": None}) == "{json} 1 and 1 "


def test_request_key_tracks_every_part_of_the_request() -> None:
    def body(model: str = "qwen-plus", text: str = "x", seed: int = 1) -> dict:
        return {
            "model": model,
            "input": {"messages": [{"role": "user", "content": text}]},
            "parameters": {"seed": seed},
        }

    base = request_key("/p", body())
    reordered = {
        "parameters": {"seed": 1},
        "input": {"messages": [{"content": "x", "role": "user"}]},
        "model": "qwen-plus",
    }
    assert base == request_key("/p", reordered)
    assert base != request_key("/q", body())
    assert base != request_key("/p", body(model="qwen-max"))
    assert base != request_key("/p", body(seed=2))
    assert base != request_key("/p", body(text="y"))


def test_large_table_is_read_in_slices(tmp_path: Path) -> None:
    rows = pl.DataFrame({"id": [f"r{i}" for i in range(12_345)], "text": [str(i) for i in range(12_345)]})
    source = checked(write_job(tmp_path, rows, data_name="data.parquet"))
    sizes = [b.height for b in source.batches(5000)]
    assert sizes == [5000, 5000, 2345]
