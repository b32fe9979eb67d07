"""Narrow unit tests of the wire format and its classification (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from batchrunner import wire
from batchrunner.client import CallFailed, DashScopeClient, TransportFailed
from batchrunner.pacing import FlightGate, backoff_delay
from batchrunner.render import Request
from batchrunner.wire import Outcome, Usage, classify, parse_completion, parse_error


def test_message_format_answer() -> None:
    body = {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": "hi",
                        "reasoning_content": "thought",
                        "tool_calls": [{"id": "c1", "type": "function"}],
                    },
                }
            ]
        },
        "usage": {
            "input_tokens": 22,
            "output_tokens": 17,
            "total_tokens": 39,
            "prompt_tokens_details": {"cached_tokens": 8, "cache_creation_input_tokens": 4},
            "output_tokens_details": {"reasoning_tokens": 5},
        },
        "request_id": "abc",
    }
    c = parse_completion(json.dumps(body).encode())
    assert (c.content, c.reasoning_content, c.finish_reason, c.request_id) == (
        "hi",
        "thought",
        "stop",
        "abc",
    )
    assert c.tool_calls == [{"id": "c1", "type": "function"}]
    u = c.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens) == (22, 17, 39, 8)
    assert (u.cache_creation_input_tokens, u.reasoning_tokens) == (4, 5)
    assert u.raw == body["usage"]


def test_text_format_and_multimodal_shapes() -> None:
    c = parse_completion(
        {
            "output": {"text": "t", "finish_reason": "length"},
            "usage": {"input_tokens": 1, "output_tokens": 2},
        }
    )
    assert (c.content, c.finish_reason, c.usage.total_tokens) == ("t", "length", 3)
    vl = {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"text": "a"}, {"text": "b"}]},
                }
            ]
        },
        "usage": {
            "input_tokens": 1292,
            "output_tokens": 87,
            "image_tokens": 1249,
            "cached_tokens": 1152,
            "total_tokens": 1379,
            "input_tokens_details": {"text_tokens": 43, "image_tokens": 1249},
        },
    }
    c = parse_completion(vl)
    assert c.content == "ab" and c.usage.cached_tokens == 1152 and c.usage.image_tokens == 1249


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"output": {}}', b"[1]"])
def test_malformed_answers(body: bytes) -> None:
    with pytest.raises(wire.MalformedResponse):
        parse_completion(body)


def test_openai_usage_names_map_to_the_same_fields() -> None:
    u = Usage.from_wire(
        {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    )
    assert (
        u.input_tokens,
        u.output_tokens,
        u.total_tokens,
        u.cached_tokens,
        u.reasoning_tokens,
    ) == (10, 3, 13, 4, 2)


def test_error_bodies() -> None:
    e = parse_error(401, b'{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"r1"}')
    assert (e.code, e.message, e.request_id, e.outcome) == (
        "InvalidApiKey",
        "Invalid API-key provided.",
        "r1",
        Outcome.ABORT,
    )
    sse = (
        b"id:1\nevent:error\n:HTTP_STATUS/429\n"
        b'data:{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded","request_id":"r2"}\n\n'
    )
    e = parse_error(429, sse, {"Retry-After": "3"})
    assert (e.code, e.outcome, e.retry_after) == ("Throttling.AllocationQuota", Outcome.RETRY, 3.0)
    e = parse_error(400, b'{"error":{"message":"bad","type":"invalid_request_error","code":"invalid_value"}}')
    assert (e.code, e.message, e.outcome) == ("invalid_value", "bad", Outcome.ROW_FAILED)
    e = parse_error(502, b"", {"x-request-id": "r3", "retry-after-ms": "250"})
    assert (e.code, e.request_id, e.retry_after, e.outcome) == (
        "HTTP502",
        "r3",
        0.25,
        Outcome.RETRY,
    )


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, "InvalidParameter", Outcome.ROW_FAILED),
        (400, "DataInspectionFailed", Outcome.ROW_FAILED),
        (400, "Arrearage", Outcome.ABORT),
        (401, "InvalidApiKey", Outcome.ABORT),
        (403, "AccessDenied.Unpurchased", Outcome.ABORT),
        (404, "ModelNotFound", Outcome.ABORT),
        (408, "RequestTimeOut", Outcome.RETRY),
        (413, "BadRequest.TooLarge", Outcome.ROW_FAILED),
        (429, "Throttling.RateQuota", Outcome.RETRY),
        (
            429,
            "Throttling.AllocationQuota",
            Outcome.RETRY,
        ),  # token quota: throttling, not exhaustion
        (429, "PrepaidBillOverdue", Outcome.ABORT),
        (500, "InternalError", Outcome.RETRY),
        (503, "ModelUnavailable", Outcome.RETRY),
    ],
)
def test_classification(status: int, code: str, outcome: Outcome) -> None:
    assert classify(status, code) is outcome


def test_endpoint_routing() -> None:
    assert wire.path_for_model("qwen-plus") == wire.TEXT_PATH
    assert wire.path_for_model("qwen3-max") == wire.TEXT_PATH
    for model in ("qwen3-vl-plus", "qwen-vl-max", "qwen3.6-plus", "QVQ-max"):
        assert wire.path_for_model(model) == wire.MULTIMODAL_PATH


REQUEST = Request(
    "k",
    0,
    "r0",
    wire.TEXT_PATH,
    wire.build_body("qwen-plus", [{"role": "user", "content": "hi"}], {"seed": 3}),
    5,
)


async def call(handler) -> wire.Completion:  # type: ignore[no-untyped-def]
    async with DashScopeClient(
        "https://example.invalid/api/v1",
        "sk-secret",
        timeout_s=5,
        max_connections=4,
        transport=httpx.MockTransport(handler),
    ) as client:
        return await client.generate(REQUEST)


async def test_client_sends_the_documented_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]},
                "usage": {"input_tokens": 3, "output_tokens": 1},
                "request_id": "q",
            },
        )

    completion = await call(handler)
    assert completion.content == "ok"
    (req,) = seen
    assert str(req.url) == "https://example.invalid/api/v1/services/aigc/text-generation/generation"
    assert req.headers["authorization"] == "Bearer sk-secret"
    assert json.loads(req.content) == {
        "model": "qwen-plus",
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "parameters": {"result_format": "message", "seed": 3},
    }


async def test_client_errors_are_classified() -> None:
    with pytest.raises(CallFailed) as err:
        await call(lambda r: httpx.Response(429, json={"code": "Throttling", "message": "slow down"}))
    assert err.value.error.outcome is Outcome.RETRY
    with pytest.raises(TransportFailed) as terr:
        await call(lambda r: httpx.Response(200, content=b'{"output": '))
    assert terr.value.code == "MalformedResponse" and terr.value.possibly_billed

    def read_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransportFailed) as terr:
        await call(read_timeout)
    assert terr.value.code == "ReadTimeout" and terr.value.possibly_billed

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransportFailed) as terr:
        await call(refused)
    assert terr.value.code == "ConnectError" and not terr.value.possibly_billed


def test_backoff_is_full_jitter_and_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jitter is drawn from exactly [0, min(cap, initial * 2**(attempt - 1))], or from
    [0, initial] on top of Retry-After (itself capped); the draw is replaced by a fixed point."""
    ranges: list[tuple[float, float]] = []

    def quarter_of_the_way(low: float, high: float) -> float:
        ranges.append((low, high))
        return low + (high - low) / 4

    monkeypatch.setattr(random, "uniform", quarter_of_the_way)
    assert [backoff_delay(n, initial=1.0, cap=60.0) for n in (1, 2, 3, 4, 7)] == [0.25, 0.5, 1.0, 2.0, 15.0]
    assert ranges == [(0, 1.0), (0, 2.0), (0, 4.0), (0, 8.0), (0, 60.0)]  # 2**6 = 64: capped at 60
    ranges.clear()
    assert backoff_delay(20, initial=1.0, cap=5.0) == 1.25
    assert backoff_delay(1, initial=0.5, cap=60.0, retry_after=3.0) == 3.125
    assert backoff_delay(1, initial=0.5, cap=60.0, retry_after=600.0) == 60.125
    assert ranges == [(0, 5.0), (0, 0.5), (0, 0.5)]


async def test_flight_gate_halves_on_429_and_grows_back() -> None:
    gate = FlightGate(16, cooldown_s=1000)
    gate.on_throttled()
    assert gate.limit == 8
    gate.on_throttled()  # within the cooldown: one storm cuts once
    assert gate.limit == 8
    for _ in range(8):
        await gate.on_success()
    assert gate.limit == 9
    for _ in range(200):
        await gate.on_success()
    assert gate.limit == 16


# ----------------------------------------------------------------- streaming (SSE) parsing

from batchrunner.wire import NativeWire, OpenAIWire  # noqa: E402


def native_frames(*chunks: dict, error: tuple[int, dict] | None = None) -> bytes:
    out = []
    for i, chunk in enumerate(chunks, start=1):
        out.append(f"id:{i}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(chunk)}\n\n")
    if error is not None:
        out.append(f"id:{len(chunks) + 1}\nevent:error\n:HTTP_STATUS/{error[0]}\ndata:{json.dumps(error[1])}\n\n")
    return "".join(out).encode()


def chunk(content: str, finish: str = "null", calls: list | None = None, out_tokens: int = 1) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {
        "output": {"choices": [{"message": message, "finish_reason": finish}]},
        "usage": {"input_tokens": 5, "output_tokens": out_tokens, "total_tokens": 5 + out_tokens},
        "request_id": "rid",
    }


async def call_streamed(body: bytes, dialect=None, status: int = 200) -> wire.Completion:  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    dialect = dialect or NativeWire()
    request = Request(
        "k",
        0,
        "r0",
        wire.TEXT_PATH,
        dialect.body("qwen-plus", [{"role": "user", "content": "hi"}], {}, multimodal=False, stream=True),
        5,
    )
    async with DashScopeClient(
        "https://example.invalid/api/v1",
        "sk-secret",
        timeout_s=5,
        max_connections=2,
        transport=httpx.MockTransport(handler),
        wire=dialect,
        stream=True,
    ) as client:
        try:
            return await client.generate(request)
        finally:
            if isinstance(dialect, NativeWire):
                assert seen[0].headers["X-DashScope-SSE"] == "enable"
                assert json.loads(seen[0].content)["parameters"]["incremental_output"] is True


async def test_native_stream_is_assembled() -> None:
    calls_a = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":'}}]
    calls_b = [{"index": 0, "function": {"arguments": " 1}"}}]
    body = native_frames(
        chunk("Hel"),
        chunk("lo", calls=calls_a, out_tokens=2),
        chunk("", finish="tool_calls", calls=calls_b, out_tokens=3),
    )
    c = await call_streamed(body)
    assert (c.content, c.finish_reason, c.request_id, c.usage.output_tokens) == ("Hello", "tool_calls", "rid", 3)
    assert c.tool_calls == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]


async def test_native_stream_error_event_is_a_classified_failure() -> None:
    err = {"code": "Throttling.AllocationQuota", "message": "quota", "request_id": "x"}
    with pytest.raises(CallFailed) as failed:
        await call_streamed(native_frames(chunk("Hel"), error=(429, err)))
    assert (failed.value.error.status, failed.value.error.outcome) == (429, Outcome.RETRY)
    with pytest.raises(CallFailed) as failed:  # no status comment: inferred from the code
        await call_streamed(b'event:error\ndata:{"code":"InvalidParameter","message":"bad"}\n\n')
    assert (failed.value.error.status, failed.value.error.outcome) == (400, Outcome.ROW_FAILED)


async def test_a_stream_without_its_last_chunk_is_a_cut() -> None:
    with pytest.raises(TransportFailed) as failed:
        await call_streamed(native_frames(chunk("Hel"), chunk("lo")))
    assert failed.value.code == "StreamCut" and failed.value.possibly_billed


async def test_an_error_status_before_streaming_with_an_sse_body() -> None:
    body = (
        b'id:1\nevent:error\n:HTTP_STATUS/401\ndata:{"code":"InvalidApiKey","message":"Invalid API-key provided."}\n\n'
    )
    with pytest.raises(CallFailed) as failed:
        await call_streamed(body, status=401)
    assert failed.value.error.code == "InvalidApiKey" and failed.value.error.outcome is Outcome.ABORT


def openai_stream(*chunks: dict, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


async def test_openai_stream_is_assembled_with_usage_from_the_last_chunk() -> None:
    dialect = OpenAIWire()
    body = openai_stream(
        {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
        {
            "id": "c1",
            "choices": [{"index": 0, "delta": {"content": " there", "reasoning_content": ""}, "finish_reason": "stop"}],
        },
        {
            "id": "c1",
            "choices": [],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "total_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        },
    )
    c = await call_streamed(body, dialect)
    assert (c.content, c.finish_reason, c.usage.input_tokens, c.usage.cached_tokens) == ("Hi there", "stop", 7, 3)
    with pytest.raises(TransportFailed):
        await call_streamed(
            openai_stream({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}]}, done=False), dialect
        )
    error = {"error": {"message": "slow down", "type": "limit_requests", "code": "limit_requests"}}
    with pytest.raises(CallFailed) as failed:
        await call_streamed(openai_stream(error), dialect)
    assert failed.value.error.status == 429


def test_openai_body_carries_extras_and_parts() -> None:
    messages = [{"role": "user", "content": [{"image": "https://x/a.png"}, {"text": "what is it?"}]}]
    body = OpenAIWire().body(
        "qwen3-vl-plus", messages, {"result_format": "message", "top_k": 5, "seed": 2}, multimodal=True, stream=True
    )
    assert body == {
        "model": "qwen3-vl-plus",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                    {"type": "text", "text": "what is it?"},
                ],
            }
        ],
        "top_k": 5,
        "seed": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
