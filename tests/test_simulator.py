"""The DashScope simulator over real loopback sockets: shape, determinism, validation, limits,
faults, cache, control endpoints and the official SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from batchrunner.simulator import (
    FaultRule,
    Simulator,
    SimulatorConfig,
    answer_for,
    count_tokens,
    serve_in_thread,
)
from batchrunner.wire import MULTIMODAL_PATH, TEXT_PATH, Usage

KEY = {"Authorization": "Bearer sk-test"}
HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who are you?"},
]


def body(messages: list[dict[str, Any]] | None = None, model: str = "qwen-plus", **params: Any) -> dict[str, Any]:
    msgs = HELLO if messages is None else messages
    return {"model": model, "input": {"messages": msgs}, "parameters": params}


def expected_input_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(count_tokens(m["content"]) for m in messages) + 4 * len(messages) + 3


async def post(
    base_url: str, payload: Any, path: str = TEXT_PATH, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        if isinstance(payload, bytes):
            return await client.post(path, content=payload, headers=headers or KEY)
        return await client.post(path, json=payload, headers=headers or KEY)


# --------------------------------------------------------------------------- tokenizer, answers


def test_count_tokens() -> None:
    assert count_tokens("") == 0
    assert count_tokens("Who are you?") == 4
    assert count_tokens("Hello, 世界! abc_12") == 6  # Hello , 世 界 ! abc_12


def test_answer_for_is_pure_and_truncates() -> None:
    content, tokens, finish = answer_for("qwen-plus", HELLO, 7, None)
    assert (content, tokens, finish) == answer_for("qwen-plus", HELLO, 7, None)
    assert finish == "stop" and tokens == count_tokens(content)
    assert 8 <= len(content.split()) <= 60
    cut, cut_tokens, cut_finish = answer_for("qwen-plus", HELLO, 7, 3)
    assert (cut_tokens, cut_finish) == (3, "length")
    assert count_tokens(cut) == 3 and content.startswith(cut)


def test_fault_rule_rejects_unknown_outcomes() -> None:
    with pytest.raises(ValueError, match="unknown fault outcome"):
        FaultRule("x", ("NoSuchCode",))
    with pytest.raises(ValueError, match="must be the last"):
        FaultRule("x", ("always:500", 200 + 300))
    with pytest.raises(ValueError, match="fault_mix"):
        SimulatorConfig(fault_mix={"teapot": 0.1})


# --------------------------------------------------------------------------- answers over HTTP


async def test_message_answer_shape_and_usage(sim_server: Any) -> None:
    r = await post(sim_server.base_url, body(result_format="message", seed=7))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert r.headers["x-request-id"] == data["request_id"]
    choice = data["output"]["choices"][0]
    content, out_tokens, finish = answer_for("qwen-plus", HELLO, 7, None)
    assert choice == {
        "finish_reason": finish,
        "message": {"role": "assistant", "content": content},
    }
    usage = data["usage"]
    assert usage["input_tokens"] == expected_input_tokens(HELLO)
    assert usage["output_tokens"] == out_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert Usage.from_wire(usage).total_tokens == usage["total_tokens"]


async def test_same_request_same_answer_and_seed_changes_it(sim_server: Any) -> None:
    first = await post(sim_server.base_url, body(result_format="message", seed=1))
    again = await post(sim_server.base_url, body(result_format="message", seed=1))
    text = first.json()["output"]["choices"][0]["message"]["content"]
    assert again.json()["output"]["choices"][0]["message"]["content"] == text
    assert first.json()["request_id"] != again.json()["request_id"]
    contents = {answer_for("qwen-plus", HELLO, seed, None)[0] for seed in range(2, 10)}
    assert text not in contents and len(contents) == 8
    # temperature and other sampling parameters do not change the answer; the model does
    hot = await post(sim_server.base_url, body(result_format="message", seed=1, temperature=1.5))
    assert hot.json()["output"]["choices"][0]["message"]["content"] == text
    assert answer_for("qwen-max", HELLO, 1, None)[0] != text


async def test_text_result_format_and_defaults(sim_server: Any) -> None:
    content, _, finish = answer_for("qwen-plus", HELLO, 3, None)
    for params in ({"result_format": "text", "seed": 3}, {"seed": 3}):  # qwen-plus defaults to text
        data = (await post(sim_server.base_url, body(**params))).json()
        assert data["output"] == {"finish_reason": finish, "text": content}
    data = (await post(sim_server.base_url, body(model="qwen3-max", seed=3))).json()
    assert "choices" in data["output"]  # qwen3-max defaults to message


async def test_max_tokens_gives_length(sim_server: Any) -> None:
    data = (await post(sim_server.base_url, body(result_format="message", max_tokens=2))).json()
    assert data["output"]["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["output_tokens"] == 2


async def test_multimodal_endpoint_shape(sim_server: Any) -> None:
    messages = [{"role": "user", "content": [{"text": "Describe this."}]}]
    r = await post(sim_server.base_url, body(messages, model="qwen3-vl-plus"), MULTIMODAL_PATH)
    assert r.status_code == 200
    data = r.json()
    content = answer_for("qwen3-vl-plus", messages, None, None)[0]
    assert data["output"]["choices"][0]["message"]["content"] == [{"text": content}]
    assert data["usage"]["image_tokens"] == 0 and data["usage"]["video_tokens"] == 0
    assert data["usage"]["input_tokens"] == count_tokens("Describe this.") + 4 + 3


async def test_streaming_frames(sim_server: Any) -> None:
    headers = {**KEY, "X-DashScope-SSE": "enable"}
    payload = body(result_format="message", seed=5, incremental_output=True)
    r = await post(sim_server.base_url, payload, headers=headers)
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f]
    events = [json.loads(f.split("\ndata:", 1)[1]) for f in frames]
    assert frames[0].startswith("id:1\nevent:result\n:HTTP_STATUS/200\ndata:")
    reasons = [e["output"]["choices"][0]["finish_reason"] for e in events]
    assert set(reasons[:-1]) <= {"null"} and reasons[-1] == "stop"
    text = "".join(e["output"]["choices"][0]["message"]["content"] for e in events)
    content, tokens, _ = answer_for("qwen-plus", HELLO, 5, None)
    assert text == content and events[-1]["usage"]["output_tokens"] == tokens


# --------------------------------------------------------------------------- errors


async def test_wrong_endpoint(sim_server: Any) -> None:
    for model, path in (("qwen-plus", MULTIMODAL_PATH), ("qwen3-vl-plus", TEXT_PATH)):
        r = await post(sim_server.base_url, body(model=model), path)
        assert r.status_code == 400
        assert r.json()["code"] == "InvalidParameter"
        assert r.json()["message"] == "url error, please check url!"


async def test_api_key_checks() -> None:
    cfg = SimulatorConfig(valid_keys=frozenset({"sk-good"}))
    async with Simulator(cfg).serve() as base_url:
        cases = [{}, {"Authorization": "Bearer sk-bad"}, {"Authorization": "sk-good"}]
        for headers in cases:
            r = await post(base_url, body(), headers=headers or {"X-Other": "1"})
            assert r.status_code == 401
            data = r.json()
            assert data == {
                "code": "InvalidApiKey",
                "message": "Invalid API-key provided.",
                "request_id": r.headers["x-request-id"],
            }
        ok = await post(base_url, body(), headers={"Authorization": "Bearer sk-good"})
        assert ok.status_code == 200
    async with Simulator().serve() as base_url:  # any sk- key by default
        for key, status in (("Bearer x", 401), ("Bearer sk-1", 200)):
            r = await post(base_url, body(), headers={"Authorization": key})
            assert r.status_code == status


USER_ONLY = [{"role": "user", "content": "hi"}]
JSON_WORD = "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
BAD = "InvalidParameter"
# (body, status, code, message); the code is InvalidParameter unless named
VALIDATION_CASES: list[tuple[Any, int, str, str]] = [
    (b"{not json", 400, BAD, "Required body invalid, please check the request body format."),
    (
        {"input": {"messages": USER_ONLY}},
        400,
        "BadRequest.EmptyModel",
        'Required parameter "model" missing from request.',
    ),
    (
        {"model": "qwen-plus"},
        400,
        "BadRequest.EmptyInput",
        "Required input parameter missing from request.",
    ),
    (
        {"model": "gpt-4o", "input": {"messages": USER_ONLY}},
        404,
        "ModelNotFound",
        "Model can not be found.",
    ),
    (body([]), 400, BAD, "[] is too short"),
    (body(temperature=2.0), 400, BAD, "Temperature should be in [0.0, 2.0)"),
    (body(temperature="hot"), 400, BAD, "'temperature' must be Float"),
    (body(top_p=0), 400, BAD, "Range of top_p should be (0.0, 1.0]"),
    (body(top_k=-1), 400, BAD, "Parameter top_k be greater than or equal to 0"),
    (body(repetition_penalty=0), 400, BAD, "Repetition_penalty should be greater than 0.0"),
    (body(presence_penalty=2.5), 400, BAD, "Presence_penalty should be in [-2.0, 2.0]"),
    (body(n=5), 400, BAD, "Range of n should be [1, 4]"),
    (body(seed=-1), 400, BAD, "Range of seed should be [0, 9223372036854775807]"),
    (body(max_tokens=0), 400, BAD, "Range of max_tokens should be [1, 32768]"),
    (body(max_tokens=40000), 400, BAD, "Range of max_tokens should be [1, 32768]"),
    (
        body(enable_thinking=True, result_format="text"),
        400,
        BAD,
        'The result_format parameter must be "message" when enable_thinking is true',
    ),
    (body(response_format={"type": "json_object"}), 400, BAD, JSON_WORD),
    (
        body(
            [{"role": "user", "content": "Reply in JSON"}],
            response_format={"type": "json_object"},
            enable_thinking=True,
            result_format="message",
        ),
        400,
        BAD,
        "Json mode response is not supported when enable_thinking is true",
    ),
    (
        body([{"role": "user", "content": [{"image": "https://x/y.png"}]}]),
        400,
        BAD,
        "input content must be a string.",
    ),
    (
        body([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        500,
        "InternalError.Algo",
        "list index out of range",
    ),
]


@pytest.mark.parametrize(("payload", "status", "code", "message"), VALIDATION_CASES)
async def test_validation_errors(sim_server: Any, payload: Any, status: int, code: str, message: str) -> None:
    r = await post(sim_server.base_url, payload)
    assert (r.status_code, r.json()["code"], r.json()["message"]) == (status, code, message)
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_explicit_cache_blocks_are_accepted_on_text_endpoint(sim_server: Any) -> None:
    long_text = "context " * 1100
    system: dict[str, Any] = {
        "role": "system",
        "content": [{"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}}],
    }
    messages: list[dict[str, Any]] = [system, {"role": "user", "content": "Summarise."}]
    first = (await post(sim_server.base_url, body(messages, result_format="message"))).json()
    second = (await post(sim_server.base_url, body(messages, result_format="message"))).json()
    created = first["usage"]["prompt_tokens_details"]["cache_creation_input_tokens"]
    assert created == 1100 + 4 and first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1104
    assert second["usage"]["prompt_tokens_details"]["cache_creation_input_tokens"] == 0


async def test_implicit_cache_on_repeated_long_system_prompt(sim_server: Any) -> None:
    system = {"role": "system", "content": "You follow the house style guide. " * 60}  # 420 tokens
    tokens = count_tokens(system["content"])
    cached = []
    for question in ("first?", "second?", "third?"):
        messages = [system, {"role": "user", "content": question}]
        data = (await post(sim_server.base_url, body(messages))).json()
        cached.append(data["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert cached == [0, tokens - tokens % 64, tokens - tokens % 64]
    short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    for _ in range(2):
        data = (await post(sim_server.base_url, body(short))).json()
        assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    other_model = [system, {"role": "user", "content": "first?"}]
    data = (await post(sim_server.base_url, body(other_model, model="qwen-max"))).json()
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


# --------------------------------------------------------------------------- limits


async def test_rpm_throttles_the_excess_exactly() -> None:
    sim = Simulator(SimulatorConfig(rpm=600))  # 10 requests in any 1 s window
    async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url, headers=KEY, timeout=10) as client:
        replies = await asyncio.gather(*(client.post(TEXT_PATH, json=body(USER_ONLY, seed=i)) for i in range(15)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 10 + [429] * 5
    throttled = [r.json() for r in replies if r.status_code == 429]
    assert {(t["code"], t["message"]) for t in throttled} == {
        ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later.")
    }
    assert all("retry-after" not in r.headers for r in replies)
    stats = sim.stats()
    assert stats["throttled"] == 5 and stats["by_status"] == {"200": 10, "429": 5}


async def test_tpm_throttles_by_tokens() -> None:
    _, out_tokens, _ = answer_for("qwen-plus", USER_ONLY, None, None)
    per_request = expected_input_tokens(USER_ONLY) + out_tokens
    sim = Simulator(SimulatorConfig(tpm=int(per_request * 1.5 * 60), retry_after_s=1))
    async with sim.serve() as base_url:
        first = await post(base_url, body(USER_ONLY))
        second = await post(base_url, body(USER_ONLY))
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["code"] == "Throttling.AllocationQuota"
    assert second.json()["message"] == "Allocated quota exceeded, please increase your quota limit."
    assert second.headers["retry-after"] == "1"


# --------------------------------------------------------------------------- faults


async def test_fault_rule_sequences() -> None:
    rules = (
        FaultRule("flaky", (500, 503, "Throttling.AllocationQuota")),
        FaultRule("unsafe", ("always:DataInspectionFailed",)),
        FaultRule("broken", ("drop", "malformed")),
    )
    sim = Simulator(SimulatorConfig(faults=rules))
    async with sim.serve() as base_url:
        flaky = body([{"role": "user", "content": "a flaky one"}])
        seen = [(await post(base_url, flaky)) for _ in range(5)]
        assert [r.status_code for r in seen] == [500, 503, 429, 200, 200]
        assert [r.json().get("code") for r in seen[:3]] == [
            "InternalError",
            "ModelUnavailable",
            "Throttling.AllocationQuota",
        ]
        # a different body has its own arrival count
        other = await post(base_url, body([{"role": "user", "content": "another flaky one"}]))
        assert other.status_code == 500
        # only the last user message is matched
        earlier = [
            {"role": "user", "content": "unsafe"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "fine now"},
        ]
        assert (await post(base_url, body(earlier))).status_code == 200
        for _ in range(3):
            r = await post(base_url, body([{"role": "user", "content": "unsafe text"}]))
            assert (r.status_code, r.json()["code"]) == (400, "DataInspectionFailed")
        broken = body([{"role": "user", "content": "broken"}])
        with pytest.raises(httpx.RemoteProtocolError):
            await post(base_url, broken)
        malformed = await post(base_url, broken)
        assert malformed.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(malformed.content)
        assert (await post(base_url, broken)).status_code == 200
    stats = sim.stats()
    assert stats["faults_injected"] == {
        "500": 2,
        "503": 1,
        "Throttling.AllocationQuota": 1,
        "DataInspectionFailed": 3,
        "drop": 1,
        "malformed": 1,
    }
    assert stats["throttled"] == 0  # scripted 429s are faults, not throttling
    assert stats["answered"] == 4 and stats["by_status"]["0"] == 1


async def test_random_faults_are_reproducible() -> None:
    mix = {"503": 0.2, "slow": 0.2}
    cfg = SimulatorConfig(fail_rate=0.2, fault_mix=mix, slow_s=0.01, rng_seed=42)
    runs = []
    for _ in range(2):
        sim = Simulator(cfg)
        async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url) as client:
            replies = [await client.post(TEXT_PATH, json=body(USER_ONLY, seed=i), headers=KEY) for i in range(30)]
            runs.append([r.status_code for r in replies])
        assert sim.stats()["faults_injected"]["slow"] > 0
    assert runs[0] == runs[1]
    assert {200, 500, 503} <= set(runs[0])


# --------------------------------------------------------------------------- control endpoints


async def test_stats_log_and_reset_endpoints(sim_server: Any) -> None:
    await post(sim_server.base_url, body(result_format="message", seed=1))
    await post(sim_server.base_url, body(temperature=9))
    root = sim_server.base_url.removesuffix("/api/v1")
    async with httpx.AsyncClient(base_url=root) as client:
        stats = (await client.get("/_simulator/stats")).json()
        assert stats["requests"] == 2 and stats["by_status"] == {"200": 1, "400": 1}
        log = (await client.get("/_simulator/log")).json()
        assert [entry["status"] for entry in log] == [200, 400]
        assert log[0]["model"] == "qwen-plus" and log[0]["prompt"] == "Who are you?"
        assert len(log[0]["key"]) == 64 and log[0]["key"] != log[1]["key"]
        assert sim_server.sim.log[0].request_id == log[0]["request_id"]
        assert (await client.post("/_simulator/reset")).status_code == 200
        assert (await client.get("/_simulator/stats")).json()["requests"] == 0
        assert (await client.get("/_simulator/log")).json() == []


def test_wait_for_requests_from_another_thread(sim_thread: Any) -> None:
    assert not sim_thread.sim.wait_for_requests(1, timeout=0.01)
    with httpx.Client(base_url=sim_thread.base_url, headers=KEY) as client:
        for i in range(3):
            assert client.post(TEXT_PATH, json=body(seed=i)).status_code == 200
        client.post(TEXT_PATH, json=body(top_p=5))
    assert sim_thread.sim.wait_for_requests(3, timeout=5)
    assert not sim_thread.sim.wait_for_requests(4, timeout=0.01)
    sim_thread.sim.reset()
    assert sim_thread.sim.stats()["answered"] == 0 and sim_thread.sim.log == []


def test_log_can_be_turned_off() -> None:
    with serve_in_thread(SimulatorConfig(keep_log=False)) as handle:
        httpx.post(handle.base_url + TEXT_PATH, json=body(), headers=KEY)
        assert handle.sim.log == [] and handle.sim.stats()["requests"] == 1


# --------------------------------------------------------------------------- official SDK


def test_official_sdk_round_trip(sim_thread: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dashscope = pytest.importorskip("dashscope")
    monkeypatch.setattr(dashscope, "base_http_api_url", sim_thread.base_url)
    r = dashscope.Generation.call(api_key="sk-test", model="qwen-plus", messages=HELLO, result_format="message", seed=7)
    assert r.status_code == 200
    assert r.output.choices[0].message.content == answer_for("qwen-plus", HELLO, 7, None)[0]
    assert r.usage.input_tokens == expected_input_tokens(HELLO)
    bad = dashscope.Generation.call(
        api_key="sk-test", model="qwen-plus", messages=HELLO, result_format="message", top_p=2
    )
    assert bad.status_code == 400
    assert bad.code == "InvalidParameter"
    assert bad.message == "Range of top_p should be (0.0, 1.0]"


# --------------------------------------------------------------------------- tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "scale": {"type": "number"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array"},
                "extra": {"type": "object"},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "scale", "unit", "hourly", "tags", "extra"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get-time_2", "parameters": {"properties": {"zone": {"type": "string"}}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def tool_body(messages: list[dict[str, Any]] | None = None, **params: Any) -> dict[str, Any]:
    params.setdefault("tools", [WEATHER, CLOCK])
    return body(ASK if messages is None else messages, result_format="message", **params)


def only_choice(data: dict[str, Any]) -> dict[str, Any]:
    (choice,) = data["output"]["choices"]
    return choice


async def test_tool_call_auto_calls_the_first_tool(sim_server: Any) -> None:
    data = (await post(sim_server.base_url, tool_body(seed=4, n=3))).json()  # n is fixed at 1
    choice = only_choice(data)
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] == ""
    (call,) = message["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function"
    assert call["id"].startswith("call_") and len(call["id"]) == 21
    int(call["id"][5:], 16)
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert list(args) == ["city", "days", "scale", "unit", "hourly", "tags", "extra"]  # only required ones
    answer_words = answer_for("qwen-plus", ASK, 4, None)[0].replace(".", "").split()
    assert args["city"] in answer_words
    assert isinstance(args["days"], int) and 0 <= args["days"] <= 100
    assert isinstance(args["scale"], float) and round(args["scale"], 2) == args["scale"]
    assert (args["unit"], args["hourly"], args["tags"], args["extra"]) == ("celsius", True, [], {})
    assert data["usage"]["output_tokens"] == count_tokens(call["function"]["arguments"])
    again = (await post(sim_server.base_url, tool_body(seed=4))).json()
    assert only_choice(again)["message"]["tool_calls"] == [call]
    other = (await post(sim_server.base_url, tool_body(seed=5))).json()
    assert only_choice(other)["message"]["tool_calls"][0]["id"] != call["id"]


async def test_tool_call_forced_parallel_and_none(sim_server: Any) -> None:
    forced = {"type": "function", "function": {"name": "get-time_2"}}
    data = (await post(sim_server.base_url, tool_body(tool_choice=forced))).json()
    (call,) = only_choice(data)["message"]["tool_calls"]
    assert call["function"]["name"] == "get-time_2"
    assert list(json.loads(call["function"]["arguments"])) == ["zone"]  # no `required`: all
    data = (await post(sim_server.base_url, tool_body(parallel_tool_calls=True, tool_choice="auto"))).json()
    calls = only_choice(data)["message"]["tool_calls"]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"), (1, "get-time_2")]
    assert len({c["id"] for c in calls}) == 2
    total = sum(count_tokens(c["function"]["arguments"]) for c in calls)
    assert data["usage"]["output_tokens"] == total
    one = (await post(sim_server.base_url, tool_body(parallel_tool_calls=True, tools=[WEATHER]))).json()
    assert len(only_choice(one)["message"]["tool_calls"]) == 1
    none = (await post(sim_server.base_url, tool_body(tool_choice="none", seed=2))).json()
    choice = only_choice(none)
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == answer_for("qwen-plus", ASK, 2, None)[0]


async def test_tool_result_gets_a_text_answer(sim_server: Any) -> None:
    data = (await post(sim_server.base_url, tool_body(seed=1))).json()
    call = only_choice(data)["message"]["tool_calls"][0]
    history: list[dict[str, Any]] = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": call["id"]},
    ]
    reply = (await post(sim_server.base_url, tool_body(history, seed=1))).json()
    choice = only_choice(reply)
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == answer_for("qwen-plus", history, 1, None)[0]


BAD_TOOL = {"type": "function", "function": {"name": "has space"}}
TOOL_CASES: list[tuple[dict[str, Any], str]] = [
    (tool_body(tools=[{"type": "retrieval", "function": {"name": "x"}}]), 'tools[0].type must be "function"'),
    (tool_body(tools=[WEATHER, BAD_TOOL]), "tools[1].function.name 'has space' is invalid"),
    (tool_body(tools=[{"type": "function", "function": {"name": "n" * 65}}]), "is invalid"),
    (tool_body(tools=[{"type": "function"}]), "tools[0].function must be an object"),
    (tool_body(tools={"name": "x"}), "tools must be a list"),
    (body(ASK, tools=[WEATHER]), 'The result_format parameter must be "message" when tools are used'),
    (tool_body(tool_choice={"type": "function", "function": {"name": "nope"}}), "'nope', which is not in tools"),
    (tool_body(tool_choice="required"), "tool_choice must be"),
    (tool_body(parallel_tool_calls="yes"), "parallel_tool_calls must be a boolean"),
]


@pytest.mark.parametrize(("payload", "message"), TOOL_CASES)
async def test_tool_validation(sim_server: Any, payload: dict[str, Any], message: str) -> None:
    r = await post(sim_server.base_url, payload)
    assert (r.status_code, r.json()["code"]) == (400, "InvalidParameter")
    assert message in r.json()["message"]


async def test_vision_models_reject_tools(sim_server: Any) -> None:
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    for model in ("qwen-vl-max", "qvq-plus"):
        r = await post(sim_server.base_url, body(messages, model=model, tools=[WEATHER]), MULTIMODAL_PATH)
        assert (r.status_code, r.json()["message"]) == (400, f"The model {model} does not support tools.")
    ok = await post(sim_server.base_url, body(messages, model="qwen3-vl-plus", tools=[WEATHER]), MULTIMODAL_PATH)
    assert only_choice(ok.json())["message"]["content"] == []  # empty content beside the calls
    assert only_choice(ok.json())["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(f.split("\ndata:", 1)[1]) for f in text.split("\n\n") if f]


@pytest.mark.parametrize("incremental", [True, False])
async def test_tool_calls_stream_in_the_last_frame(sim_server: Any, incremental: bool) -> None:
    plain = (await post(sim_server.base_url, tool_body(seed=3, parallel_tool_calls=True))).json()
    headers = {**KEY, "X-DashScope-SSE": "enable"}
    payload = tool_body(seed=3, parallel_tool_calls=True, enable_thinking=True, incremental_output=True)
    if not incremental:
        payload = tool_body(seed=3, parallel_tool_calls=True, incremental_output=False)
    events = sse_events((await post(sim_server.base_url, payload, headers=headers)).text)
    choices = [e["output"]["choices"][0] for e in events]
    assert [c["finish_reason"] for c in choices[:-1]] == ["null"] * (len(choices) - 1)
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert all("tool_calls" not in c["message"] for c in choices[:-1])
    assert choices[-1]["message"]["tool_calls"] == only_choice(plain)["message"]["tool_calls"]
    usage = [e["usage"]["output_tokens"] for e in events]
    assert usage == sorted(usage)
    reasoning = events[-1]["usage"].get("output_tokens_details", {}).get("reasoning_tokens", 0)
    assert usage[-1] - reasoning == plain["usage"]["output_tokens"]
    if incremental:
        assert len(events) > 1 and "".join(c["message"]["reasoning_content"] for c in choices)


# --------------------------------------------------------------------------- logprobs


async def test_logprobs_shape(sim_server: Any) -> None:
    data = (
        await post(sim_server.base_url, body(result_format="message", seed=6, logprobs=True, top_logprobs=3))
    ).json()
    choice = only_choice(data)
    content = choice["message"]["content"]
    assert content == answer_for("qwen-plus", HELLO, 6, None)[0]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == content
    assert len(entries) == data["usage"]["output_tokens"] == count_tokens(content)
    for entry in entries:
        assert set(entry) == {"token", "bytes", "logprob", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] < 0 and round(entry["logprob"], 4) == entry["logprob"]
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0] == {k: entry[k] for k in ("token", "bytes", "logprob")}
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert len({t["token"] for t in tops}) == 3
        assert all(t["bytes"] == list(t["token"].encode()) for t in tops)
    again = (
        await post(sim_server.base_url, body(result_format="message", seed=6, logprobs=True, top_logprobs=3))
    ).json()
    assert only_choice(again)["logprobs"] == choice["logprobs"]
    plain = (await post(sim_server.base_url, body(result_format="message", seed=6, logprobs=False))).json()
    assert "logprobs" not in only_choice(plain)
    several = (await post(sim_server.base_url, body(result_format="message", logprobs=True, n=2))).json()
    for c in several["output"]["choices"]:
        assert "".join(e["token"] for e in c["logprobs"]["content"]) == c["message"]["content"]
        assert all(e["top_logprobs"] == [] for e in c["logprobs"]["content"])


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"logprobs": True, "top_logprobs": 6}, 400),
        ({"logprobs": True, "top_logprobs": -1}, 400),
        ({"logprobs": True, "top_logprobs": 2.5}, 400),
        ({"logprobs": True, "top_logprobs": 5}, 200),
        ({"logprobs": True, "top_logprobs": 0}, 200),
        ({"top_logprobs": 9}, 200),  # ignored without logprobs
        ({"logprobs": "yes"}, 400),
        ({"enable_thinking": True, "n": 2}, 400),
        ({"vl_high_resolution_images": "on"}, 400),
    ],
)
async def test_logprobs_and_n_validation(sim_server: Any, params: dict[str, Any], status: int) -> None:
    r = await post(sim_server.base_url, body(result_format="message", **params))
    assert r.status_code == status
    if status == 400:
        assert r.json()["code"] == "InvalidParameter"
    if "top_logprobs" in params and status == 400:
        assert r.json()["message"] == "top_logprobs must be an integer in [0, 5]"


@pytest.mark.parametrize("incremental", [True, False])
async def test_logprobs_stream(sim_server: Any, incremental: bool) -> None:
    headers = {**KEY, "X-DashScope-SSE": "enable"}
    payload = body(result_format="message", seed=8, logprobs=True, top_logprobs=1, incremental_output=incremental)
    events = sse_events((await post(sim_server.base_url, payload, headers=headers)).text)
    choices = [e["output"]["choices"][0] for e in events]
    content = answer_for("qwen-plus", HELLO, 8, None)[0]
    if incremental:
        tokens = [e["token"] for c in choices for e in c["logprobs"]["content"]]
        assert "".join(c["message"]["content"] for c in choices) == content
    else:
        tokens = [e["token"] for e in choices[-1]["logprobs"]["content"]]
        for c in choices:  # every frame holds everything so far
            assert "".join(e["token"] for e in c["logprobs"]["content"]) == c["message"]["content"]
    assert "".join(tokens) == content


# --------------------------------------------------------------------------- images and video

PNG_DATA = "data:image/png;base64," + "iVBORw0KGgo" + "A" * 97 + "="


def vl_body(content: list[dict[str, Any]], model: str = "qwen3-vl-plus", **params: Any) -> dict[str, Any]:
    return body([{"role": "user", "content": content}], model=model, **params)


async def test_image_and_video_tokens(sim_server: Any) -> None:
    text = {"text": "Compare these."}
    base = count_tokens("Compare these.") + 4 + 3
    cases: list[tuple[list[dict[str, Any]], dict[str, Any], int, int]] = [
        ([{"image": "https://x/a.png"}, text], {}, 256, 0),
        ([{"image": "https://x/a.png"}, {"image": PNG_DATA}, text], {}, 512, 0),
        ([{"image": "file:///tmp/a.png"}, text], {"vl_high_resolution_images": True}, 1024, 0),
        ([{"video": ["https://x/1.jpg", "https://x/2.jpg", PNG_DATA]}, text], {}, 0, 3 * 64),
        ([{"video": "https://x/clip.mp4"}, {"image": "http://x/b.jpg"}, text], {}, 256, 512),
    ]
    for content, params, image, video in cases:
        r = await post(sim_server.base_url, vl_body(content, **params), MULTIMODAL_PATH)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert (usage["image_tokens"], usage["video_tokens"]) == (image, video)
        assert usage["input_tokens"] == base + image + video
        assert usage["input_tokens_details"] == {"text_tokens": base, "image_tokens": image, "video_tokens": video}
        assert Usage.from_wire(usage).image_tokens == image
        assert "image_hw" not in r.json()["output"]


async def test_image_hw_output(sim_server: Any) -> None:
    content = [{"image": "https://x/a.png"}, {"image": "https://x/b.png"}, {"text": "hi"}]
    payload = vl_body(content, vl_enable_image_hw_output=True)
    first = (await post(sim_server.base_url, payload, MULTIMODAL_PATH)).json()
    sizes = first["output"]["image_hw"]
    assert len(sizes) == 2 and all(h % 28 == 0 and w % 28 == 0 and h > 0 and w > 0 for h, w in sizes)
    assert (await post(sim_server.base_url, payload, MULTIMODAL_PATH)).json()["output"]["image_hw"] == sizes
    events = sse_events(
        (await post(sim_server.base_url, payload, MULTIMODAL_PATH, {**KEY, "X-DashScope-SSE": "enable"})).text
    )
    assert events[-1]["output"]["image_hw"] == sizes
    assert all("image_hw" not in e["output"] for e in events[:-1])


MODAL = "The item of content should be a message of a certain modal"
BIG_PAYLOAD = "A" * (10 * 1024 * 1024 * 4 // 3 + 8)  # decodes to just over 10 MB
MEDIA_CASES: list[tuple[list[dict[str, Any]], str]] = [
    ([{"image": "ftp://x/a.png"}], MODAL),
    ([{"image": "x/a.png"}], MODAL),
    ([{"image": 7}], MODAL),
    ([{"image": "data:text/plain;base64,aGk="}], MODAL),
    ([{"image": "data:image/png,rawbytes"}], MODAL),
    ([{"video": []}], MODAL),
    ([{"video": ["https://x/1.jpg", "gopher://x"]}], MODAL),
    ([{"shape": "circle"}], MODAL),
    ([{"image": "data:image/png;base64," + BIG_PAYLOAD}], "10 MB"),
]


@pytest.mark.parametrize(("content", "message"), MEDIA_CASES)
async def test_media_validation(sim_server: Any, content: list[dict[str, Any]], message: str) -> None:
    r = await post(sim_server.base_url, vl_body([*content, {"text": "what?"}]), MULTIMODAL_PATH)
    assert (r.status_code, r.json()["code"]) == (400, "InvalidParameter")
    assert message in r.json()["message"]


# --------------------------------------------------------------------------- official SDK, more


def test_official_sdk_stream_and_multimodal(sim_thread: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dashscope = pytest.importorskip("dashscope")
    monkeypatch.setattr(dashscope, "base_http_api_url", sim_thread.base_url)
    responses = list(
        dashscope.Generation.call(
            api_key="sk-test",
            model="qwen-plus",
            messages=HELLO,
            result_format="message",
            seed=7,
            stream=True,
            incremental_output=True,
        )
    )
    assert len(responses) > 1 and all(r.status_code == 200 for r in responses)
    content, tokens, _ = answer_for("qwen-plus", HELLO, 7, None)
    assert "".join(r.output.choices[0].message.content for r in responses) == content
    assert responses[-1].usage.output_tokens == tokens
    messages = [{"role": "user", "content": [{"image": "https://example.com/cat.png"}, {"text": "What is it?"}]}]
    r = dashscope.MultiModalConversation.call(api_key="sk-test", model="qwen3-vl-plus", messages=messages)
    assert r.status_code == 200
    assert r.usage["image_tokens"] == 256
    assert r.usage.input_tokens == 256 + count_tokens("What is it?") + 4 + 3
    assert r.output.choices[0].message.content == [{"text": answer_for("qwen3-vl-plus", messages, None, None)[0]}]


@pytest.mark.parametrize("incremental", [True, False])
async def test_several_choices_stream_one_after_another(sim_server: Any, incremental: bool) -> None:
    params: dict[str, Any] = {"result_format": "message", "seed": 2, "n": 3, "logprobs": True}
    whole = (await post(sim_server.base_url, body(**params))).json()
    headers = {**KEY, "X-DashScope-SSE": "enable"}
    payload = body(**params, incremental_output=incremental)
    events = sse_events((await post(sim_server.base_url, payload, headers=headers)).text)
    got: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        (choice,) = event["output"]["choices"]
        got.setdefault(choice["index"], []).append(choice)
    assert list(got) == [0, 1, 2]
    for i, expected in enumerate(whole["output"]["choices"]):
        frames = got[i]
        assert [f["finish_reason"] for f in frames] == ["null"] * (len(frames) - 1) + [expected["finish_reason"]]
        if incremental:
            text = "".join(f["message"]["content"] for f in frames)
            entries = [e for f in frames for e in f["logprobs"]["content"]]
        else:
            text, entries = frames[-1]["message"]["content"], frames[-1]["logprobs"]["content"]
        assert text == expected["message"]["content"]
        assert entries == expected["logprobs"]["content"]
    assert events[-1]["usage"] == whole["usage"]
