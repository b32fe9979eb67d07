"""The generation features of a job spec, end to end against the simulator over loopback:
parameters, streaming, thinking, JSON output, n > 1, explicit cache, seeds and repeats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import merged, query, read_table, spec_text, write_job

from batchrunner import SpecError, load_spec, run_job, service, wire
from batchrunner.render import derived_seed
from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, answer_for

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(6)]
SYSTEM = [{"role": "system", "content": "Be brief."}]


def user(text: str) -> list[dict[str, Any]]:
    return [*SYSTEM, {"role": "user", "content": f"Say something about {text}"}]


def run(tmp_path: Path, overrides: dict | None = None, rows: list | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    summary = run_job(write_job(tmp_path, rows or ROWS, overrides), handle_signals=False, **kw)
    return summary, read_table(summary.output_path)


def stored(db: Path, sql: str) -> list[tuple]:
    return query(db, sql)


# ----------------------------------------------------------------- spec checks


def spec_error(tmp_path: Path, overrides: dict) -> str:
    path = tmp_path / "job.toml"
    path.write_text(spec_text(merged(overrides)), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return str(err.value)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"n": 5}, "[parameters] n: Input should be less than or equal to 4"),
        ({"n": 2, "enable_thinking": True}, "n > 1 is only available without thinking"),
        ({"top_logprobs": 3}, "top_logprobs only takes effect with logprobs = true"),
        ({"logprobs": True, "top_logprobs": 6}, "[parameters] top_logprobs: Input should be less than or equal to 5"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "result_format": "text"},
            'tools need result_format = "message"',
        ),
        ({"enable_thinking": True, "response_format": {"type": "json_object"}}, "not supported with enable_thinking"),
        ({"response_format": {"type": "json_schema"}}, 'type "json_schema" needs a json_schema'),
        ({"thinking_budget": 100}, "thinking_budget needs enable_thinking = true"),
        ({"tool_choice": "auto"}, "tool_choice and parallel_tool_calls need tools"),
        ({"temprature": 0.3}, "[parameters] temprature: unknown key; did you mean `temperature`?"),
        ({"seed": "random"}, '[parameters] seed: must be an integer 0..2147483647, "per-row", or'),
        ({"vl_high_resolution_images": True}, "vl_* options apply to vision models"),
    ],
)
def test_parameter_ranges_and_combinations(tmp_path: Path, parameters: dict, message: str) -> None:
    assert message in spec_error(tmp_path, {"parameters": parameters})


def test_extra_parameters_pass_through_untouched(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, _ = run(tmp_path, {"parameters": {"extra": {"custom_flag": "x", "search_options": {"a": 1}}}})
    (params,) = {p for (p,) in stored(summary.db_path, "SELECT parameters FROM results_view WHERE row_id = 'r0'")}
    assert json.loads(params) == {
        "result_format": "message",
        "temperature": 0.5,
        "max_tokens": 32,
        "seed": 1,
        "custom_flag": "x",
        "search_options": {"a": 1},
    }
    assert "[parameters.extra] repeats known parameters ['enable_search']" in spec_error(
        tmp_path, {"parameters": {"extra": {"enable_search": True}}}
    )


def test_regions_and_custom_base_url(tmp_path: Path) -> None:
    write_job(tmp_path, ROWS, {"api": {"region": "cn"}})
    assert service.base_url(load_spec(tmp_path / "job.toml").api) == wire.CN_BASE_URL
    write_job(tmp_path, ROWS, {"api": {"region": "cn", "protocol": "openai"}})
    assert service.base_url(load_spec(tmp_path / "job.toml").api) == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    write_job(tmp_path, ROWS, {"api": {"base_url": "http://127.0.0.1:11434/v1", "protocol": "openai"}})
    spec = load_spec(tmp_path / "job.toml")
    assert service.base_url(spec.api) == "http://127.0.0.1:11434/v1"
    assert service.endpoint_path(spec.model, spec.api) == "/chat/completions"


# ----------------------------------------------------------------- streaming and thinking


@pytest.mark.parametrize("incremental", [True, False])
def test_streamed_answers_are_stored_as_a_plain_call_would_be(
    tmp_path: Path, sim: ThreadHandle, incremental: bool
) -> None:
    plain, plain_out = run(tmp_path / "plain")
    streamed, out = run(tmp_path / "stream", {"parameters": {"stream": True, "incremental_output": incremental}})
    assert streamed.table == {"ok": 6}
    for row in out.iter_rows(named=True):
        content, tokens, finish = answer_for("qwen-plus", user(row["text"]), 1, 32)
        assert (row["content"], row["finish_reason"], int(row["output_tokens"])) == (content, finish, tokens)
    columns = ["content", "input_tokens", "output_tokens", "total_tokens", "finish_reason"]
    assert out.select(columns).equals(plain_out.select(columns))


CUT = SimulatorConfig(faults=(FaultRule("item number 2", ("malformed", "500")),))


@pytest.mark.sim(CUT)
def test_a_cut_stream_is_retried_and_nothing_partial_is_stored(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"parameters": {"stream": True}})
    assert summary.table == {"ok": 6}
    row = out.filter(out["id"] == "r2").row(0, named=True)
    assert row["attempts"] == "3"
    assert row["content"] == answer_for("qwen-plus", user("item number 2"), 1, 32)[0]
    codes = stored(summary.db_path, "SELECT error_code, possibly_billed FROM attempts_view WHERE outcome = 'retry'")
    assert sorted(codes) == [("InternalError", 0), ("StreamCut", 1)]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_is_stored_and_exported(tmp_path: Path, sim: ThreadHandle, stream: bool) -> None:
    overrides = {"model": {"name": "qwen3-max"}, "parameters": {"enable_thinking": True, "stream": stream}}
    summary, out = run(tmp_path, overrides)
    assert summary.table == {"ok": 6}
    assert all(r and len(r) > 10 for r in out["reasoning_content"].to_list())
    assert all(int(t) > 0 for t in out["reasoning_tokens"].to_list())
    rows = stored(summary.db_path, "SELECT reasoning_tokens, output_tokens, usage FROM results_view")
    for reasoning_tokens, output_tokens, usage in rows:
        assert json.loads(usage)["output_tokens_details"]["reasoning_tokens"] == reasoning_tokens <= output_tokens


# ----------------------------------------------------------------- structured output, n


def test_json_object_output_is_parsed(tmp_path: Path, sim: ThreadHandle) -> None:
    overrides = {
        "prompt": {"system": "Reply in JSON."},
        "parameters": {"response_format": {"type": "json_object"}},
        "output": {"parse_json": True},
    }
    summary, out = run(tmp_path, overrides)
    assert summary.table == {"ok": 6}
    for row in out.iter_rows(named=True):
        assert json.loads(row["parsed"]) == json.loads(row["content"])
        assert set(json.loads(row["parsed"])) == {"answer"}


def test_an_answer_that_is_not_json_is_marked_and_kept(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"output": {"parse_json": True, "json_retries": 1}})
    assert summary.exit_code == 1 and summary.table == {"failed": 6}
    assert set(out["error_code"].to_list()) == {"InvalidJSON"}
    assert all(m.startswith("the answer is not valid JSON") for m in out["error_message"].to_list())
    assert all(c for c in out["content"].to_list())  # paid for: the answer is kept
    assert out["attempts"].to_list() == ["2"] * 6  # one JSON retry each
    assert sim.sim.stats()["answered"] == 12


def test_n_choices_are_stored_as_a_list(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"model": {"name": "qwen3-max"}, "parameters": {"n": 3}})
    assert summary.table == {"ok": 6}
    for row in out.iter_rows(named=True):
        choices = json.loads(row["choices"])
        assert len(choices) == 3 and choices[0]["content"] == row["content"]
        assert len({c["content"] for c in choices}) == 3


# ----------------------------------------------------------------- explicit cache


def test_explicit_cache_marks_the_system_prompt(tmp_path: Path, sim: ThreadHandle) -> None:
    system = "You are a careful reviewer. " + " ".join(f"rule{i}" for i in range(1500))
    overrides = {"prompt": {"system": system, "cache": "system"}, "limits": {"concurrency": 1}}
    summary, out = run(tmp_path, overrides)
    assert summary.table == {"ok": 6}
    created = [int(v) for v in out["cache_creation_input_tokens"].to_list()]
    cached = [int(v) for v in out["cached_tokens"].to_list()]
    assert created[0] > 1024 and cached[0] == 0
    assert created[1:] == [0] * 5 and all(c >= 1024 for c in cached[1:])
    (params,) = stored(summary.db_path, "SELECT count(*) FROM results_view WHERE cache_creation_input_tokens > 0")
    assert params == (1,)


def test_a_shared_context_can_be_cached(tmp_path: Path, sim: ThreadHandle) -> None:
    (tmp_path / "manual.md").write_text(" ".join(f"clause{i}" for i in range(1500)), encoding="utf-8")
    overrides = {"prompt": {"context_file": "manual.md", "cache": "context"}, "limits": {"concurrency": 1}}
    summary, out = run(tmp_path, overrides)
    assert summary.table == {"ok": 6}
    assert int(out["cache_creation_input_tokens"][0]) > 1024
    assert all(int(c) >= 1024 for c in out["cached_tokens"].to_list()[1:])


# ----------------------------------------------------------------- seeds and repeats


def seeds(db: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row_id, sample, seed in stored(db, "SELECT row_id, sample, seed FROM results_view ORDER BY row_id, sample"):
        found.setdefault(row_id, []).append(seed)
        assert sample == len(found[row_id]) - 1
    return found


def test_per_row_seeds_are_stable(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"parameters": {"seed": "per-row"}})
    assert seeds(summary.db_path) == {r["id"]: [derived_seed(r["id"], 0)] for r in ROWS}
    for row in out.iter_rows(named=True):
        assert row["content"] == answer_for("qwen-plus", user(row["text"]), derived_seed(row["id"], 0), 32)[0]
    sim.sim.reset()
    run(tmp_path, {"parameters": {"seed": "per-row"}})
    assert sim.sim.stats()["requests"] == 0


def test_seed_from_a_column(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [dict(r, s=i * 10) for i, r in enumerate(ROWS)]
    summary, _ = run(tmp_path, {"parameters": {"seed": {"column": "s"}}}, rows)
    assert seeds(summary.db_path) == {r["id"]: [r["s"]] for r in rows}
    bad = [dict(r, s=-1 if i == 2 else i) for i, r in enumerate(ROWS)]
    from batchrunner import InputError

    with pytest.raises(InputError, match=r"seed column 's' must hold integers 0..2147483647; row\(s\) 3 do not"):
        run(tmp_path / "bad", {"parameters": {"seed": {"column": "s"}}}, bad)


def test_repeat_sends_k_samples_with_distinct_stable_seeds(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"job": {"repeat": 3}, "parameters": {"seed": 100}})
    assert summary.table == {"ok": 18} and summary.counts.sent == 18
    assert out.columns[:3] == ["id", "text", "sample"]
    assert out["id"].to_list() == [r["id"] for r in ROWS for _ in range(3)]
    assert out["sample"].to_list() == ["0", "1", "2"] * 6
    assert seeds(summary.db_path) == {r["id"]: [100, 101, 102] for r in ROWS}
    for row in out.iter_rows(named=True):
        assert row["content"] == answer_for("qwen-plus", user(row["text"]), 100 + int(row["sample"]), 32)[0]
    sim.sim.reset()
    summary, _ = run(tmp_path, {"job": {"repeat": 4}, "parameters": {"seed": 100}})
    assert sim.sim.stats()["requests"] == 6  # only the new fourth sample of each row


def test_repeat_without_a_seed_uses_per_row_seeds(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"job": {"repeat": 2}, "parameters": {"seed": None}})
    assert seeds(summary.db_path) == {r["id"]: [derived_seed(r["id"], 0), derived_seed(r["id"], 1)] for r in ROWS}
    assert out.height == 12


# ----------------------------------------------------------------- multimodal rows


def media_job(tmp_path: Path, rows: list[dict], overrides: dict | None = None) -> Path:
    (tmp_path / "pics").mkdir(parents=True, exist_ok=True)
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nfake-but-bytes")
    base = {"model": {"name": "qwen3-vl-plus"}, "prompt": {"template": "{text}", "images": ["img"], "system": None}}
    for section, keys in (overrides or {}).items():
        base.setdefault(section, {}).update(keys)
    return write_job(tmp_path, rows, base)


def test_image_cells_become_content_items(tmp_path: Path) -> None:
    from batchrunner.source import Source

    rows = [
        {"id": "a", "text": "what is it?", "img": "pics/a.png"},
        {"id": "b", "text": "and this?", "img": "https://example.com/b.jpg"},
    ]
    source = Source(load_spec(media_job(tmp_path, rows)))
    source.check()
    first, second = [i for b in source.batches() for i in source.requests(b)]
    assert first.path == wire.MULTIMODAL_PATH
    (message,) = first.body["input"]["messages"]
    image, text = message["content"]
    assert image["image"].startswith("data:image/png;base64,") and text == {"text": "what is it?"}
    assert second.body["input"]["messages"][0]["content"][0] == {"image": "https://example.com/b.jpg"}


def test_images_are_sent_and_their_tokens_recorded(tmp_path: Path, sim: ThreadHandle) -> None:
    rows = [
        {"id": "a", "text": "what is it?", "img": "pics/a.png"},
        {"id": "b", "text": "and this?", "img": "https://example.com/b.jpg"},
    ]
    summary = run_job(media_job(tmp_path, rows), handle_signals=False)
    out = read_table(summary.output_path)
    assert out["image_tokens"].to_list() == ["256", "256"]
    hi = run_job(
        media_job(tmp_path / "hi", rows, {"parameters": {"vl_high_resolution_images": True}}), handle_signals=False
    )
    assert read_table(hi.output_path)["image_tokens"].to_list() == ["1024", "1024"]
    assert stored(summary.db_path, "SELECT DISTINCT endpoint FROM results_view") == [(wire.MULTIMODAL_PATH,)]


def test_a_missing_media_file_is_an_error_before_sending(tmp_path: Path, sim: ThreadHandle) -> None:
    from batchrunner import InputError

    rows = [{"id": "a", "text": "x", "img": "pics/a.png"}, {"id": "b", "text": "y", "img": "pics/none.png"}]
    with pytest.raises(InputError, match=r"row 2, column 'img': media file 'pics/none.png' not found"):
        run_job(media_job(tmp_path, rows), handle_signals=False)
    assert sim.sim.stats()["requests"] == 0


def test_images_on_a_text_model_are_refused(tmp_path: Path) -> None:
    assert "images / videos need a multimodal model" in spec_error(tmp_path, {"prompt": {"images": ["img"]}})


# ----------------------------------------------------------------- tools, logprobs, OpenAI protocol

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_stored_as_json(tmp_path: Path, sim: ThreadHandle, stream: bool) -> None:
    params = {"tools": [WEATHER, CLOCK], "parallel_tool_calls": True, "stream": stream}
    summary, out = run(tmp_path, {"parameters": params})
    assert summary.table == {"ok": 6}
    for row in out.iter_rows(named=True):
        calls = json.loads(row["tool_calls"])
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
        assert "city" in json.loads(calls[0]["function"]["arguments"])
        assert row["finish_reason"] == "tool_calls"


def test_logprobs_are_stored_as_json(tmp_path: Path, sim: ThreadHandle) -> None:
    summary, out = run(tmp_path, {"parameters": {"logprobs": True, "top_logprobs": 2}})
    assert summary.table == {"ok": 6}
    for row in out.iter_rows(named=True):
        entries = json.loads(row["logprobs"])["content"]
        assert "".join(e["token"] for e in entries) == row["content"]
        assert all(len(e["top_logprobs"]) == 2 for e in entries)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_protocol_maps_usage_to_the_same_columns(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    _, native = run(tmp_path / "native", {"model": {"name": "qwen3-max"}, "parameters": {"enable_thinking": True}})
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim.base_url.removesuffix("/api/v1") + "/compatible-mode/v1")
    overrides = {
        "model": {"name": "qwen3-max"},
        "api": {"protocol": "openai"},
        "parameters": {"enable_thinking": True, "stream": stream},
    }
    summary, compat = run(tmp_path / "compat", overrides)
    assert summary.table == {"ok": 6}
    columns = ["content", "reasoning_content", "input_tokens", "output_tokens", "reasoning_tokens", "finish_reason"]
    assert compat.select(columns).equals(native.select(columns))
    assert stored(summary.db_path, "SELECT DISTINCT endpoint FROM results_view") == [("/chat/completions",)]
