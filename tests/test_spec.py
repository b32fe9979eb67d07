"""Job spec validation: every error names the file and the key, and says what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import merged, spec_text, write_job

from batchrunner import SpecError, load_spec, service, wire


def write_spec(tmp_path: Path, overrides: dict | None = None) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(spec_text(merged(overrides)), encoding="utf-8")
    return path


def test_valid_spec_resolves_paths_relative_to_the_spec_file(tmp_path: Path) -> None:
    spec = load_spec(write_job(tmp_path / "jobs"))
    assert spec.input.path == (tmp_path / "jobs" / "data.csv").resolve()
    assert spec.output.path == (tmp_path / "jobs" / "out" / "result.csv").resolve()
    # default store: <output folder>/<name>.sqlite
    assert spec.db_path == (tmp_path / "jobs" / "out" / "t.sqlite").resolve()
    assert spec.parameters.wire() == {
        "temperature": 0.5,
        "max_tokens": 32,
        "result_format": "message",
    }
    assert service.endpoint_path(spec.model, spec.api) == wire.TEXT_PATH
    assert len(spec.digest) == 64


def test_explicit_db_path_is_relative_to_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {"job": {"db": "state/x.sqlite"}}))
    assert spec.db_path == (tmp_path / "state" / "x.sqlite").resolve()


def test_malformed_toml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[job]\nname = "x"\n[input\npath = "a.csv"\n', encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert str(path) in text and "invalid TOML" in text and "line 3" in text


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="job spec not found"):
        load_spec(tmp_path / "nope.toml")


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, {"limits": {"concurency": 4}}))
    text = str(err.value)
    assert "[limits] concurency: unknown key; did you mean `concurrency`?" in text
    assert str(tmp_path / "job.toml") in text


def test_unknown_section_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"paramters: unknown key; did you mean `parameters`\?"):
        load_spec(write_spec(tmp_path, {"paramters": {"seed": 1}}))


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("parameters", "temperature", 2.0, "[parameters] temperature: Input should be less than 2"),
        ("parameters", "top_p", 0, "[parameters] top_p: Input should be greater than 0"),
        ("parameters", "seed", -1, '[parameters] seed: must be an integer 0..2147483647, "per-row", or'),
        ("parameters", "max_tokens", 0, "[parameters] max_tokens"),
        ("parameters", "presence_penalty", 3, "[parameters] presence_penalty"),
        (
            "limits",
            "concurrency",
            0,
            "[limits] concurrency: Input should be greater than or equal to 1",
        ),
        (
            "limits",
            "requests_per_minute",
            "fast",
            "[limits] requests_per_minute: Input should be a valid integer",
        ),
        ("job", "name", "has space", "[job] name: String should match pattern"),
    ],
)
def test_out_of_range_and_wrong_types(tmp_path: Path, section: str, key: str, value: object, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, {section: {key: value}}))
    assert expected in str(err.value)
    assert f"(got {value!r})" in str(err.value)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, {"limits": {"concurrency": -1, "max_retries": -2}, "model": None}))
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "[model]: required key is missing" in text
    assert "[limits] concurrency" in text and "[limits] max_retries" in text


def test_template_and_messages_column_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="exactly one of `template`"):
        load_spec(write_spec(tmp_path, {"prompt": {"messages_column": "m"}}))
    with pytest.raises(SpecError, match="exactly one of `template`"):
        load_spec(write_spec(tmp_path, {"prompt": {"template": None}}))


def test_thinking_needs_message_format(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match='enable_thinking = true needs result_format = "message"'):
        load_spec(write_spec(tmp_path, {"parameters": {"enable_thinking": True, "result_format": "text"}}))


def test_table_suffixes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"\[output\] path: 'out/result.xlsx' must end in .csv, .parquet or .jsonl"):
        load_spec(write_spec(tmp_path, {"output": {"path": "out/result.xlsx"}}))
    with pytest.raises(SpecError, match=r"\[input\] path"):
        load_spec(write_spec(tmp_path, {"input": {"path": "data.txt"}}))
    # an explicit format makes any suffix acceptable
    assert load_spec(write_spec(tmp_path, {"input": {"path": "data.txt", "format": "csv"}})).input.table_format == "csv"


def test_base_url_is_checked_and_env_overrides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=r"\[api\] base_url: must be an http\(s\) URL"):
        load_spec(write_spec(tmp_path, {"api": {"base_url": "dashscope"}}))
    spec = load_spec(write_spec(tmp_path))
    assert service.base_url(spec.api) == wire.INTL_BASE_URL
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9/api/v1/")
    assert service.base_url(spec.api) == "http://127.0.0.1:9/api/v1"


def test_multimodal_models_route_to_the_multimodal_endpoint(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {"model": {"name": "qwen3-vl-plus"}}))
    assert service.endpoint_path(spec.model, spec.api) == wire.MULTIMODAL_PATH
    spec = load_spec(write_spec(tmp_path, {"model": {"name": "qwen3-vl-plus", "endpoint": "text"}}))
    assert service.endpoint_path(spec.model, spec.api) == wire.TEXT_PATH
