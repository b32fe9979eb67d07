"""Bad input is refused (exit 2) before any paid request, with a message naming the file, the
line or row, or the key, and saying how to fix it; input the user meant is read as meant.

Families: encodings (latin1 / cp1252 read as written, utf8-lossy replacements counted and
reported, a byte invalid in the chosen encoding), nested and binary cells (JSON in prompts and in
a CSV or JSONL output, binary refused in a prompt), paths that collide (output or store = input),
folders created only when there is something to write, ragged CSV lines, duplicate column names,
broken JSONL lines, template errors naming the spec file, a spec saved with a BOM, and output
leftovers of a killed export.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from helpers import invoke_cli, merged, read_table, spec_text, write_job

from batchrunner import run_job
from batchrunner.errors import SpecError
from batchrunner.simulator import ThreadHandle
from batchrunner.spec import load

KEY = "sk-test-bad-input-0123456789"


@pytest.fixture
def api_key() -> str:
    return KEY  # the shared `sim` fixture exports it


invoke = invoke_cli


def sent(sim: ThreadHandle) -> int:
    return int(sim.sim.stats()["requests"])


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(("encoding", "data_name"), [("cp1252", "data.csv"), ("latin1", "data.jsonl")])
def test_latin1_and_cp1252_files_are_read_as_written(
    tmp_path: Path, sim: ThreadHandle, encoding: str, data_name: str
) -> None:
    words = ["café", "naïve", "façade €5" if encoding == "cp1252" else "façade"]
    overrides = {"input": {"path": data_name, "id_column": "id", "encoding": encoding}}
    spec = write_job(tmp_path, [{"id": "a", "text": "x"}], overrides, data_name=data_name)
    data = tmp_path / data_name
    if data_name.endswith(".csv"):
        text = "id,text\n" + "".join(f"r{i},{w}\n" for i, w in enumerate(words))
    else:
        text = "".join(json.dumps({"id": f"r{i}", "text": w}, ensure_ascii=False) + "\n" for i, w in enumerate(words))
    data.write_bytes(text.encode(encoding))
    copies = set(Path(tempfile.gettempdir()).glob("batchrunner-input-*"))
    summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    prompts = sorted(r.prompt for r in sim.sim.log)
    assert prompts == sorted(f"Say something about {w}" for w in words)
    assert read_table(summary.output_path)["text"].to_list() == words  # type: ignore[arg-type]
    gc.collect()
    assert set(Path(tempfile.gettempdir()).glob("batchrunner-input-*")) <= copies  # the UTF-8 copy is gone


def test_a_byte_invalid_in_the_chosen_encoding_names_its_line(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, overrides={"input": {"encoding": "cp1252"}})
    (tmp_path / "data.csv").write_bytes(b"id,text\nr1,fine\nr2,caf\xe9\nr3,bad \x81 byte\n")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "data.csv: line 4 (byte" in result.output and "0x81" in result.output and '"latin1"' in result.output
    assert sent(sim) == 0


def test_a_file_that_is_not_utf8_names_the_line_and_suggests_cp1252(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"id,text\nr1,fine\nr2,caf\xe9\n")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "line 3" in result.output and 'encoding = "cp1252"' in result.output
    assert sent(sim) == 0


@pytest.mark.parametrize("data_name", ["data.csv", "data.jsonl"])
def test_utf8_lossy_counts_the_replaced_cells_and_names_the_first_rows(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture, data_name: str
) -> None:
    overrides = {"input": {"path": data_name, "id_column": "id", "encoding": "utf8-lossy"}}
    spec = write_job(tmp_path, [{"id": "a", "text": "x"}], overrides, data_name=data_name)
    rows = [("r0", b"fine"), ("r1", b"caf\xe9"), ("r2", b"ok"), ("r3", b"na\xefve and \xe0 la")]
    if data_name.endswith(".csv"):
        raw = b"id,text\n" + b"".join(i.encode() + b"," + t + b"\n" for i, t in rows)
    else:
        raw = b"".join(b'{"id": "' + i.encode() + b'", "text": "' + t + b'"}\n' for i, t in rows)
    (tmp_path / data_name).write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    (warning,) = [r.getMessage() for r in caplog.records if "U+FFFD" in r.getMessage()]
    assert "2 cell(s) in 2 row(s)" in warning and "first row id(s): r1, r3" in warning
    assert 'encoding = "cp1252"' in warning
    assert sent(sim) == 4  # a warning, not a refusal: the user chose lossy


# --------------------------------------------------------------------------- nested and binary cells


def nested_rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["first", "second"],
            "tags": [["red", "blue"], ["ünï"]],
            "meta": [{"n": 1, "who": "x"}, {"n": 2, "who": None}],
            "blob": [b"\x00\x01", b"\xff"],
        }
    )


def test_nested_cells_render_as_json_in_prompts_and_in_a_csv_output(
    tmp_path: Path, sim: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    template = "Tags {tags}; meta {meta}; about {text}"
    spec = write_job(tmp_path, nested_rows(), {"prompt": {"template": template}}, data_name="data.parquet")
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    prompts = sorted(r.prompt for r in sim.sim.log)
    assert prompts[0] == 'Tags ["red", "blue"]; meta {"n": 1, "who": "x"}; about first'
    assert prompts[1] == 'Tags ["ünï"]; meta {"n": 2, "who": null}; about second'
    # said before sending: which columns a CSV cannot hold as they are, and how they are written
    note = next(r for r in caplog.records if "cannot hold nested or binary cells" in r.getMessage())
    assert "'tags' as JSON text" in note.getMessage() and "'blob' as base64 text" in note.getMessage()
    table = read_table(summary.output_path)  # type: ignore[arg-type]
    assert json.loads(table["tags"][0]) == ["red", "blue"] and json.loads(table["meta"][1]) == {"n": 2, "who": None}
    assert table["blob"].to_list() == ["AAE=", "/w=="] and table["status"].to_list() == ["ok", "ok"]


def test_binary_cells_in_a_jsonl_output_are_base64(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, nested_rows(), {"output": {"path": "out/result.jsonl"}}, data_name="data.parquet")
    summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    table = pl.read_ndjson(summary.output_path)  # type: ignore[arg-type]
    assert table["blob"].to_list() == ["AAE=", "/w=="] and table["tags"].to_list() == [["red", "blue"], ["ünï"]]


def test_a_binary_column_in_a_template_is_refused_before_sending(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, nested_rows(), {"prompt": {"template": "Bytes {blob}"}}, data_name="data.parquet")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "data.parquet: [prompt] template placeholder {blob} names a binary column" in result.output
    assert sent(sim) == 0


def test_a_jsonl_object_cell_with_a_csv_output(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, [{"id": "a", "text": "x"}], data_name="data.jsonl")
    (tmp_path / "data.jsonl").write_text('{"id": "a", "text": {"title": "T", "pages": [1, 2]}}\n', encoding="utf-8")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 0, result.output
    assert [r.prompt for r in sim.sim.log] == ['Say something about {"title": "T", "pages": [1, 2]}']
    assert json.loads(read_table(tmp_path / "out" / "result.csv")["text"][0]) == {"title": "T", "pages": [1, 2]}


# --------------------------------------------------------------------------- paths


def test_an_output_path_equal_to_the_input_is_refused(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, overrides={"output": {"path": "data.csv"}})
    before = (tmp_path / "data.csv").read_bytes()
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "[output] path" in result.output and "is the input table" in result.output
    assert f"{spec}:" in result.output
    fine = write_job(tmp_path / "fine")
    for args in (["run", str(fine), "--output", str(tmp_path / "fine" / "data.csv")], ["export", str(fine)]):
        if args[0] == "export":
            args += ["--output", str(tmp_path / "fine" / "data.csv")]
        result = invoke(*args)
        assert result.exit_code == 2 and "--output" in result.output and "is the input table" in result.output
    assert (tmp_path / "data.csv").read_bytes() == before
    assert sent(sim) == 0


def test_a_store_path_equal_to_the_input_or_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"the store .* is the input table"):
        load(write_job(tmp_path, overrides={"job": {"name": "t", "db": "data.csv"}}))
    with pytest.raises(SpecError, match=r"the store .* is the output table"):
        load(write_job(tmp_path, overrides={"job": {"name": "t", "db": "out/result.csv"}}))


def test_a_run_refused_for_want_of_a_key_leaves_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    spec = write_job(tmp_path, overrides={"output": {"path": "out/deeper/result.csv"}})
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2 and "DASHSCOPE_API_KEY is not set" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "job.toml"]


def test_an_output_folder_that_cannot_be_made_is_reported_before_sending(tmp_path: Path, sim: ThreadHandle) -> None:
    (tmp_path / "out").write_text("a file where a folder should be")
    spec = write_job(tmp_path, overrides={"output": {"path": "out/deeper/result.csv"}})
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert sent(sim) == 0


# --------------------------------------------------------------------------- broken tables


def test_a_csv_line_with_an_extra_field_is_named_before_sending(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").write_text('id,text\nr1,"one, quoted"\nr2,two,extra\nr3,three\n', encoding="utf-8")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "data.csv: line 3 has 3 fields but the header has 2" in result.output
    assert sent(sim) == 0


def test_duplicate_column_names_are_refused(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path)
    (tmp_path / "data.csv").write_text("id,text,text\nr1,first,second\n", encoding="utf-8")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "column 'text' appears 2 times in the header (columns 2, 3)" in result.output
    jsonl = write_job(tmp_path / "j", data_name="data.jsonl")
    (tmp_path / "j" / "data.jsonl").write_text('{"id": "r1", "text": "a"}\n{"id": "r2", "text": "b", "text": "c"}\n')
    result = invoke("run", str(jsonl), "-q")
    assert result.exit_code == 2 and "line 2 gives key 'text' twice" in result.output
    assert sent(sim) == 0


def test_a_broken_jsonl_line_is_named(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, data_name="data.jsonl")
    lines = [json.dumps({"id": f"r{i}", "text": f"t{i}"}) for i in range(5)]
    lines[3] = '{"id": "r3", "text": "t3"'
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "data.jsonl: line 4 is not valid JSON" in result.output
    assert sent(sim) == 0


# --------------------------------------------------------------------------- the spec file


@pytest.mark.parametrize(
    ("template", "expected"),
    [("About {text!r}", "conversion or format spec"), ("About {", "literal braces"), ("{missing}", "'missing'")],
)
def test_template_errors_name_the_spec_file(tmp_path: Path, template: str, expected: str) -> None:
    spec = write_job(tmp_path, overrides={"prompt": {"template": template}})
    result = invoke("run", str(spec), "--simulate", "-q")
    assert result.exit_code == 2
    assert expected in result.output and str(spec) in result.output


def test_a_spec_saved_with_a_bom_loads(tmp_path: Path) -> None:
    spec = write_job(tmp_path)
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert load(spec).job.name == "t"
    result = invoke("run", str(spec), "--simulate", "-q")
    assert result.exit_code == 0, result.output


def test_encoding_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(spec_text(merged({"input": {"encoding": "utf16"}})), encoding="utf-8")
    with pytest.raises(SpecError, match=r"\[input\] encoding.*latin1.*cp1252"):
        load(path)


# --------------------------------------------------------------------------- leftovers of a killed export


def test_parts_left_by_an_export_killed_midway_are_removed(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [out / f".result.csv.parts-{dead.stdout.strip()}-abc", out / ".result.csv.parts-k2j3h4"]
    for folder in stale:
        folder.mkdir()
        pl.DataFrame({"content": ["a paid answer"]}).write_parquet(folder / "000000000.parquet")
    (out / f".result.csv.tmp-{dead.stdout.strip()}").write_text("half a table")
    (out / ".result.csv.tmp").write_text("half a table")
    running = out / f".result.csv.parts-{os.getppid()}-xyz"  # an export still going: left alone
    running.mkdir()
    summary = run_job(spec)
    assert summary.exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [running.name]
