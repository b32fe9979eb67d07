"""The DashScope simulator over real loopback sockets: shape, determinism, validation, limits,
faults, cache, control endpoints and the official SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from batchrunner.protocol import MULTIMODAL_PATH, TEXT_PATH, Usage
from batchrunner.simulator import (
    FaultRule,
    Simulator,
    SimulatorConfig,
    answer_for,
    count_tokens,
    serve_in_thread,
)

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
    system = {
        "role": "system",
        "content": [{"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}}],
    }
    messages = [system, {"role": "user", "content": "Summarise."}]
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
    async with sim.serve() as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=KEY, timeout=10) as client:
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
