"""The simulator's OpenAI-compatible endpoint over real loopback sockets: same answers as the
native endpoints, OpenAI body, stream and error shapes, and the official `openai` client."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from batchrunner.simulator import FaultRule, Simulator, SimulatorConfig, answer_for, count_tokens
from batchrunner.wire import MULTIMODAL_PATH, TEXT_PATH, parse_error

KEY = {"Authorization": "Bearer sk-test"}
COMPAT = "/compatible-mode/v1/chat/completions"
HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who are you?"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"properties": {"zone": {"type": "string"}}}},
}


def root(base_url: str) -> str:
    return base_url.removesuffix("/api/v1")


async def compat(base_url: str, payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=root(base_url), timeout=10) as client:
        if isinstance(payload, bytes):
            return await client.post(COMPAT, content=payload, headers=headers or KEY)
        return await client.post(COMPAT, json=payload, headers=headers or KEY)


async def native(base_url: str, model: str, messages: list[dict[str, Any]], sse: bool = False, **params: Any) -> Any:
    path = MULTIMODAL_PATH if model.startswith("qwen3-vl") else TEXT_PATH
    payload = {"model": model, "input": {"messages": messages}, "parameters": {"result_format": "message", **params}}
    headers = {**KEY, "X-DashScope-SSE": "enable"} if sse else KEY
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        r = await client.post(path, json=payload, headers=headers)
    assert r.status_code == 200, r.text
    if sse:
        return [json.loads(f.split("\ndata:", 1)[1]) for f in r.text.split("\n\n") if f]
    return r.json()


def data_events(text: str) -> list[Any]:
    """The payloads of an OpenAI-style stream; the [DONE] sentinel is kept as the string."""
    assert text.endswith("data: [DONE]\n\n")
    events = []
    for block in text.split("\n\n"):
        if block:
            assert block.startswith("data: ")
            raw = block[len("data: ") :]
            events.append(raw if raw == "[DONE]" else json.loads(raw))
    return events


# --------------------------------------------------------------------------- same answers as native

CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"seed": 3}),
    ("cut", {"seed": 3, "max_tokens": 5}),
    ("several", {"seed": 1, "n": 3}),
    ("thinking", {"seed": 2, "enable_thinking": True, "thinking_budget": 20}),
    ("tools", {"seed": 4, "tools": [WEATHER, CLOCK], "parallel_tool_calls": True}),
    ("forced", {"tools": [WEATHER, CLOCK], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    ("logprobs", {"seed": 5, "logprobs": True, "top_logprobs": 2, "n": 2}),
    ("json", {"seed": 5, "response_format": {"type": "json_object"}}),
]


@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
async def test_non_stream_matches_native(sim_server: Any, name: str, params: dict[str, Any]) -> None:
    messages = HELLO if name != "json" else [{"role": "user", "content": "Answer in JSON."}]
    asked_at = int(time.time())
    r = await compat(sim_server.base_url, {"model": "qwen-plus", "messages": messages, **params})
    assert r.status_code == 200, r.text
    data = r.json()
    ref = await native(sim_server.base_url, "qwen-plus", messages, **params)
    assert data["id"] == "chatcmpl-" + r.headers["x-request-id"]
    assert data["object"] == "chat.completion" and data["model"] == "qwen-plus"
    assert isinstance(data["created"], int) and asked_at <= data["created"] <= time.time()  # the request's Unix time
    assert len(data["choices"]) == len(ref["output"]["choices"])
    for i, (mine, theirs) in enumerate(zip(data["choices"], ref["output"]["choices"], strict=True)):
        assert mine["index"] == i
        assert mine["finish_reason"] == theirs["finish_reason"]
        assert mine["message"] == theirs["message"]
        assert mine["logprobs"] == theirs.get("logprobs")
    usage, ref_usage = data["usage"], ref["usage"]
    assert usage["prompt_tokens"] == ref_usage["input_tokens"]
    assert usage["completion_tokens"] == ref_usage["output_tokens"]
    assert usage["total_tokens"] == ref_usage["total_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    if name == "thinking":
        reasoning = ref_usage["output_tokens_details"]["reasoning_tokens"]
        assert usage["completion_tokens_details"] == {"reasoning_tokens": reasoning}
        assert data["choices"][0]["message"]["reasoning_content"]
    else:
        assert "completion_tokens_details" not in usage


@pytest.mark.parametrize("params", [{"seed": 9}, {"seed": 9, "enable_thinking": True}, {"tools": [WEATHER]}])
async def test_stream_matches_native(sim_server: Any, params: dict[str, Any]) -> None:
    payload = {"model": "qwen-plus", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    r = await compat(sim_server.base_url, {**payload, **params, "logprobs": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk, _ = events
    ref = await native(sim_server.base_url, "qwen-plus", HELLO, **params, logprobs=True)
    ref_choice = ref["output"]["choices"][0]
    for chunk in chunks + [usage_chunk]:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "qwen-plus"
        assert chunk["id"] == "chatcmpl-" + r.headers["x-request-id"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content") or "" for d in deltas) == ref_choice["message"]["content"]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert reasoning == ref_choice["message"].get("reasoning_content", "")
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes == [None] * (len(chunks) - 1) + [ref_choice["finish_reason"]]
    assert deltas[-1].get("tool_calls") == ref_choice["message"].get("tool_calls")
    assert all("tool_calls" not in d for d in deltas[:-1])
    tokens = [e for c in chunks for e in (c["choices"][0]["logprobs"] or {"content": []})["content"]]
    assert tokens == ref_choice["logprobs"]["content"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == ref["usage"]["output_tokens"]
    assert usage_chunk["usage"]["prompt_tokens"] == ref["usage"]["input_tokens"]
    plain = await compat(sim_server.base_url, {**payload, **params, "stream_options": None})
    assert all(isinstance(e, str) or e["choices"] for e in data_events(plain.text))  # no usage chunk


async def test_multimodal_parts_match_native(sim_server: Any) -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        {"type": "video_url", "video_url": {"url": "https://x/clip.mp4"}},
        {"type": "text", "text": "What happens?"},
    ]
    payload = {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": parts}], "seed": 1}
    data = (await compat(sim_server.base_url, {**payload, "vl_high_resolution_images": True})).json()
    converted = [{"image": "https://x/cat.png"}, {"video": "https://x/clip.mp4"}, {"text": "What happens?"}]
    messages = [{"role": "user", "content": converted}]
    ref = await native(sim_server.base_url, "qwen3-vl-plus", messages, seed=1, vl_high_resolution_images=True)
    assert data["choices"][0]["message"]["content"] == ref["output"]["choices"][0]["message"]["content"][0]["text"]
    assert data["choices"][0]["message"]["content"] == answer_for("qwen3-vl-plus", messages, 1, None)[0]
    text = count_tokens("What happens?") + 4 + 3
    assert data["usage"]["prompt_tokens"] == ref["usage"]["input_tokens"] == text + 1024 + 512
    details = data["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 0, "text_tokens": text, "image_tokens": 1024, "video_tokens": 512}
    bad = await compat(sim_server.base_url, {**payload, "model": "qwen-plus"})  # media for a text model
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_request_error"
    assert bad.json()["error"]["message"] == "input content must be a string."
    scheme = [{"type": "image_url", "image_url": {"url": "ftp://x/cat.png"}}]
    bad = await compat(sim_server.base_url, {**payload, "messages": [{"role": "user", "content": scheme}]})
    assert bad.status_code == 400 and "certain modal" in bad.json()["error"]["message"]


async def test_explicit_cache_usage(sim_server: Any) -> None:
    block = {"type": "text", "text": "context " * 1100, "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "system", "content": [block]}, {"role": "user", "content": "Summarise."}]
    first = (await compat(sim_server.base_url, {"model": "qwen-plus", "messages": messages})).json()
    second = (await compat(sim_server.base_url, {"model": "qwen-plus", "messages": messages})).json()
    assert first["usage"]["prompt_tokens_details"]["cache_creation_input_tokens"] == 1104
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1104


# --------------------------------------------------------------------------- errors


def assert_error(r: httpx.Response, status: int, code: str, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    data = r.json()
    assert set(data) == {"error", "request_id"} and data["request_id"] == r.headers["x-request-id"]
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] is None
    assert error["code"] == code and error["type"] == (kind or code) and error["message"]
    assert parse_error(status, r.content).code == code
    return error


async def test_error_shapes(sim_server: Any) -> None:
    base = sim_server.base_url
    ok = {"model": "qwen-plus", "messages": HELLO}
    assert_error(
        await compat(base, ok, {"Authorization": "Bearer nope"}), 401, "invalid_api_key", "invalid_request_error"
    )
    assert_error(await compat(base, {**ok, "model": "gpt-4o"}), 404, "model_not_found", "invalid_request_error")
    err = assert_error(await compat(base, {**ok, "temperature": 3}), 400, "invalid_request_error")
    assert err["message"] == "Temperature should be in [0.0, 2.0)"
    err = assert_error(await compat(base, b"{nope"), 400, "invalid_request_error")
    assert err["message"] == "Required body invalid, please check the request body format."
    assert_error(await compat(base, {"model": "qwen-plus"}), 400, "invalid_request_error")
    assert_error(await compat(base, {**ok, "tools": [{"type": "x"}]}), 400, "invalid_request_error")
    assert_error(await compat(base, {**ok, "logprobs": True, "top_logprobs": 8}), 400, "invalid_request_error")
    stats = sim_server.sim.stats()
    assert stats["by_status"] == {"401": 1, "404": 1, "400": 5}


async def test_faults_in_openai_shape() -> None:
    rules = (
        FaultRule("flaky", (500, 503, "DataInspectionFailed", "Throttling.BurstRate", "Arrearage")),
        FaultRule("broken", ("malformed", "drop")),
    )
    sim = Simulator(SimulatorConfig(faults=rules))
    async with sim.serve() as base_url:
        flaky = {"model": "qwen-plus", "messages": [{"role": "user", "content": "a flaky one"}]}
        expected = [
            (500, "internal_error"),
            (503, "internal_error"),
            (400, "data_inspection_failed"),
            (429, "limit_burst_rate"),
            (400, "Arrearage"),  # account codes keep their name
        ]
        for status, code in expected:
            assert_error(await compat(base_url, flaky), status, code)
        assert (await compat(base_url, flaky)).status_code == 200
        broken = {"model": "qwen-plus", "messages": [{"role": "user", "content": "broken"}], "stream": True}
        malformed = await compat(base_url, broken)
        assert malformed.status_code == 200 and not malformed.text.endswith("data: [DONE]\n\n")
        with pytest.raises(httpx.RemoteProtocolError):
            await compat(base_url, broken)
    log = [r.to_dict() for r in sim.log]
    assert [(e["prompt"], e["status"]) for e in log[:6]] == [("a flaky one", s) for s in (500, 503, 400, 429, 400, 200)]
    assert (log[-1]["prompt"], log[-1]["status"], log[-1]["fault"]) == ("broken", 0, "drop")
    assert sim.stats()["answered"] == 1  # the malformed answer does not count


async def test_rate_limits_in_openai_shape() -> None:
    ask = {"model": "qwen-plus", "messages": HELLO}
    async with Simulator(SimulatorConfig(rpm=60)).serve() as base_url:  # 1 request in any second
        assert (await compat(base_url, ask)).status_code == 200
        err = assert_error(await compat(base_url, ask), 429, "limit_requests")
        assert err["message"] == "Requests rate limit exceeded, please try again later."
    async with Simulator(SimulatorConfig(tpm=60)).serve() as base_url:  # 1 token in any second
        assert (await compat(base_url, ask)).status_code == 200
        assert_error(await compat(base_url, ask), 429, "insufficient_quota")


# --------------------------------------------------------------------------- official openai client


def test_openai_client_round_trip(sim_thread: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim_thread.compat_base_url, api_key="sk-test", max_retries=0)
    content, tokens, _ = answer_for("qwen-plus", HELLO, 7, None)
    completion = client.chat.completions.create(model="qwen-plus", messages=HELLO, seed=7)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == tokens
    stream = client.chat.completions.create(
        model="qwen-plus",
        messages=HELLO,  # type: ignore[arg-type]
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == tokens
    with httpx.Client(base_url=sim_thread.base_url, headers=KEY) as native_client:
        payload = {"model": "qwen-plus", "input": {"messages": HELLO}, "parameters": {"seed": 7}}
        assert native_client.post(TEXT_PATH, json=payload).json()["output"]["text"] == content
    tool = client.chat.completions.create(
        model="qwen-plus",
        messages=HELLO,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        logprobs=True,
        extra_body={"enable_thinking": True},
    )
    message = tool.choices[0].message
    assert tool.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    assert message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert tool.usage is not None and tool.usage.completion_tokens_details is not None
    with pytest.raises(openai.AuthenticationError) as auth:
        openai.OpenAI(base_url=client.base_url, api_key="bad", max_retries=0).chat.completions.create(
            model="qwen-plus",
            messages=HELLO,  # type: ignore[arg-type]
        )
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="qwen-plus", messages=HELLO, top_p=5)  # type: ignore[arg-type]
    assert bad.value.code == "invalid_request_error"


async def test_several_choices_stream(sim_server: Any) -> None:
    payload = {"model": "qwen-plus", "messages": HELLO, "seed": 4, "n": 2}
    whole = (await compat(sim_server.base_url, payload)).json()
    events = data_events((await compat(sim_server.base_url, {**payload, "stream": True})).text)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        index = choice["index"]
        assert ("role" in choice["delta"]) == (index not in texts)  # role opens each choice
        texts[index] = texts.get(index, "") + choice["delta"]["content"]
        if choice["finish_reason"]:
            finishes[index] = choice["finish_reason"]
    assert texts == {c["index"]: c["message"]["content"] for c in whole["choices"]}
    assert finishes == {c["index"]: c["finish_reason"] for c in whole["choices"]}
