"""SSE framing: events with or without the blank line between them, CRLF, a byte-order mark,
gzip. The parser on its own, then real streams from the simulator over loopback, read by
batchrunner's client (native and OpenAI-compatible dialects) and by whole jobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SimServer
from helpers import read_table, write_job

from batchrunner import run_job, wire
from batchrunner.client import DashScopeClient, TransportFailed
from batchrunner.render import Request
from batchrunner.simulator import FaultRule, Simulator, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.wire import MalformedResponse, NativeWire, OpenAIWire, SSEEvent, SSEParser, Wire

# ----------------------------------------------------------------- the parser on its own

RESULT = '{"output":{"text":"a"}}'
ERROR = '{"code":"Throttling.AllocationQuota","message":"quota"}'
SPACED = (
    f"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{RESULT}\n\n"
    f"id:2\nevent:result\n:HTTP_STATUS/200\ndata:{RESULT}\n\n"
    f"id:3\nevent:error\n:HTTP_STATUS/429\ndata:{ERROR}\n\n"
)
COMPACT = SPACED.replace("\n\n", "\n")
EXPECTED = [
    SSEEvent("result", RESULT, 200),
    SSEEvent("result", RESULT, 200),
    SSEEvent("error", ERROR, 429),
]


def parse(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.close()


def test_compact_native_events_are_read_like_spaced_ones() -> None:
    assert parse(SPACED.encode()) == EXPECTED
    assert parse(COMPACT.encode()) == EXPECTED


@pytest.mark.parametrize("text", [SPACED, COMPACT], ids=["spaced", "compact"])
@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_ends_split_anywhere(text: str, line_end: str) -> None:
    raw = text.replace("\n", line_end).encode()
    for cut in range(len(raw) + 1):  # every split point, including between CR and LF
        assert parse(raw[:cut], raw[cut:]) == EXPECTED, cut


def test_a_byte_order_mark_is_dropped_and_multibyte_text_may_be_split() -> None:
    data = json.dumps({"output": {"text": "最近的公园"}}, ensure_ascii=False)
    raw = b"\xef\xbb\xbf" + f"data:{data}\ndata:{data}\n".encode()
    for cut in range(len(raw) + 1):
        assert parse(raw[:cut], raw[cut:]) == [SSEEvent("message", data), SSEEvent("message", data)], cut


def test_only_cr_and_lf_end_lines() -> None:
    # JSON written with ensure_ascii=False may hold U+2028, U+2029 and U+0085 raw; str.splitlines
    # (and so httpx's aiter_lines) would cut the event there
    data = json.dumps({"output": {"text": "a\u2028b\u2029c\x85d"}}, ensure_ascii=False)
    (event,) = parse(f"data:{data}\n\n".encode())
    assert json.loads(event.data)["output"]["text"] == "a\u2028b\u2029c\x85d"


async def test_the_client_keeps_unicode_line_separators_in_answers() -> None:
    text = "one\u2028two\x85three"
    frame = {"output": {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}, "usage": {}}
    body = f"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(frame, ensure_ascii=False)}\n".encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    dialect = NativeWire()
    request = Request(
        "k", 0, "r0", wire.TEXT_PATH, dialect.body("qwen-plus", HELLO, {}, multimodal=False, stream=True), 5
    )
    transport = httpx.MockTransport(handler)
    async with DashScopeClient(
        "https://example.invalid/api/v1", "sk-x", timeout_s=5, max_connections=1, transport=transport, stream=True
    ) as client:
        assert (await client.generate(request)).content == text


def test_openai_events_with_and_without_blank_lines() -> None:
    spaced = 'data: {"a":1}\n\ndata: {"a":2}\n\ndata: [DONE]\n\n'
    expected = [SSEEvent("message", '{"a":1}'), SSEEvent("message", '{"a":2}'), SSEEvent("message", "[DONE]")]
    assert parse(spaced.encode()) == expected
    assert parse(spaced.replace("\n\n", "\n").encode()) == expected


def test_a_last_line_without_its_line_end_and_comments() -> None:
    assert parse(b": keep-alive\n\nevent:result\r\ndata:x\r") == [SSEEvent("result", "x")]
    assert parse(b"event:result\ndata:x") == [SSEEvent("result", "x")]
    assert parse(b"id:1\nevent:result\n:HTTP_STATUS/200\n") == []  # no data: no event


def test_what_an_event_carries_is_forgotten_after_it() -> None:
    events = parse(b"event:error\n:HTTP_STATUS/500\ndata:a\ndata:b\n")
    assert events == [SSEEvent("error", "a", 500), SSEEvent("message", "b", None)]


def test_text_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="not UTF-8"):
        parse(b"data:\xff\xfe\n")
    with pytest.raises(MalformedResponse, match="inside a UTF-8 character"):
        parse("data:最".encode()[:-1])


# ----------------------------------------------------------------- real streams over loopback

FRAMINGS = {
    "blank": SimulatorConfig(),
    "compact": SimulatorConfig(sse_framing="compact"),
    "compact-crlf": SimulatorConfig(sse_framing="compact", sse_crlf=True),
    "compact-bom-gzip": SimulatorConfig(sse_framing="compact", sse_bom=True, sse_gzip=True),
    "blank-crlf-bom-gzip": SimulatorConfig(sse_crlf=True, sse_bom=True, sse_gzip=True),
}


@pytest.fixture(params=list(FRAMINGS.values()), ids=list(FRAMINGS))
def sim_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    config: SimulatorConfig = request.param
    return config


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something about the sea."}]

# (model, messages, parameters): every kind of stream a job can ask for
CASES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "text": ("qwen-plus", HELLO, {"result_format": "text", "seed": 3, "max_tokens": 40}),
    "text-full": ("qwen-plus", HELLO, {"result_format": "text", "incremental_output": False, "seed": 3}),
    "message": ("qwen-plus", HELLO, {"seed": 4, "max_tokens": 60}),
    "message-full": ("qwen-plus", HELLO, {"seed": 4, "incremental_output": False}),
    "n=2": ("qwen-plus", HELLO, {"seed": 5, "n": 2, "max_tokens": 30}),
    "thinking": ("qwen3-max", HELLO, {"seed": 6, "enable_thinking": True}),
    "tools": ("qwen-plus", ASK, {"seed": 7, "tools": [WEATHER]}),
    "logprobs": ("qwen-plus", HELLO, {"seed": 8, "logprobs": True, "top_logprobs": 1}),
}
OPENAI_CASES = ("message", "n=2", "thinking", "tools", "logprobs")


def request_for(dialect: Wire, case: str, *, stream: bool) -> Request:
    model, messages, parameters = CASES[case]
    if isinstance(dialect, OpenAIWire):
        parameters = {k: v for k, v in parameters.items() if k not in ("result_format", "incremental_output")}
    body = dialect.body(model, messages, parameters, multimodal=False, stream=stream)
    path = wire.OPENAI_CHAT_PATH if isinstance(dialect, OpenAIWire) else wire.TEXT_PATH
    return Request(case, 0, "r0", path, body, 10)


async def generate(base_url: str, dialect: Wire, request: Request, *, stream: bool) -> wire.Completion:
    async with DashScopeClient(
        base_url, "sk-framing", timeout_s=10, max_connections=4, wire=dialect, stream=stream
    ) as client:
        return await client.generate(request)


async def streamed_and_plain(server: SimServer, dialect: Wire, case: str) -> tuple[wire.Completion, wire.Completion]:
    base = server.base_url
    if isinstance(dialect, OpenAIWire):
        base = base.removesuffix("/api/v1") + "/compatible-mode/v1"
    streamed = await generate(base, dialect, request_for(dialect, case, stream=True), stream=True)
    plain = await generate(base, dialect, request_for(dialect, case, stream=False), stream=False)
    return streamed, plain


def assert_same_answer(streamed: wire.Completion, plain: wire.Completion) -> None:
    assert streamed.choices == plain.choices
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert streamed.usage.input_tokens == plain.usage.input_tokens
    assert streamed.usage.reasoning_tokens == plain.usage.reasoning_tokens


@pytest.mark.parametrize("case", list(CASES))
async def test_native_streams_read_whatever_the_framing(sim_server: SimServer, case: str) -> None:
    streamed, plain = await streamed_and_plain(sim_server, NativeWire(), case)
    assert_same_answer(streamed, plain)
    assert streamed.content or case == "tools"
    if case == "thinking":
        assert streamed.choices[0].reasoning_content
    if case == "tools":
        assert streamed.choices[0].tool_calls and streamed.finish_reason == "tool_calls"
    if case == "n=2":
        assert len(streamed.choices) == 2


@pytest.mark.parametrize("case", OPENAI_CASES)
async def test_openai_streams_read_whatever_the_framing(sim_server: SimServer, case: str) -> None:
    streamed, plain = await streamed_and_plain(sim_server, OpenAIWire(), case)
    assert_same_answer(streamed, plain)
    if case == "tools":
        assert streamed.choices[0].tool_calls


async def test_the_framing_is_what_the_simulator_was_told(sim_server: SimServer) -> None:
    """The wire itself, read raw: the options really change the bytes sent."""
    config = sim_server.sim.config
    body = request_for(NativeWire(), "message", stream=True).body
    headers = {"Authorization": "Bearer sk-x", "X-DashScope-SSE": "enable", "Accept-Encoding": "gzip"}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(sim_server.base_url + wire.TEXT_PATH, json=body, headers=headers)
    raw = response.content  # decoded from gzip by httpx
    assert (response.headers.get("content-encoding") == "gzip") == config.sse_gzip
    assert raw.startswith(b"\xef\xbb\xbf") == config.sse_bom
    assert raw.count(b"id:") > 2
    assert (b"\r\n" in raw) == config.sse_crlf
    lf = raw.replace(b"\r\n", b"\n")
    assert lf.count(b"\n\nid:") == (lf.count(b"id:") - 1 if config.sse_framing == "blank" else 0)


async def test_a_cut_stream_is_still_a_cut(sim_config: SimulatorConfig) -> None:
    sim = Simulator(replace(sim_config, faults=(FaultRule("sea", ("always:malformed",)),)))
    async with sim.serve("127.0.0.1", 0) as base_url:
        compat = base_url.removesuffix("/api/v1") + "/compatible-mode/v1"
        for dialect, base in ((NativeWire(), base_url), (OpenAIWire(), compat)):
            request = request_for(dialect, "message", stream=True)
            with pytest.raises(TransportFailed) as failed:
                await generate(base, dialect, request, stream=True)
            assert failed.value.code == "StreamCut"


# ----------------------------------------------------------------- whole jobs


ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(8)]


@pytest.fixture
def compact_sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    config = SimulatorConfig(sse_framing="compact", sse_crlf=True, sse_gzip=True)
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-framing")
        yield handle


@pytest.mark.parametrize(
    ("protocol", "parameters", "model"),
    [
        ("dashscope", {"result_format": "text"}, "qwen-plus"),
        ("dashscope", {}, "qwen-plus"),
        ("dashscope", {"enable_thinking": True}, "qwen3-max"),
        ("openai", {}, "qwen-plus"),
        ("openai", {"enable_thinking": True}, "qwen3-max"),
    ],
    ids=["native-text", "native-message", "native-thinking", "openai-message", "openai-thinking"],
)
def test_a_job_streamed_without_blank_lines_runs_every_row(
    tmp_path: Path,
    compact_sim: ThreadHandle,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    parameters: dict[str, Any],
    model: str,
) -> None:
    base = compact_sim.base_url if protocol == "dashscope" else compact_sim.compat_base_url
    monkeypatch.setenv("DASHSCOPE_BASE_URL", base)
    api = {"protocol": protocol}
    spec = write_job(
        tmp_path / "stream", ROWS, {"api": api, "model": {"name": model}, "parameters": {**parameters, "stream": True}}
    )
    summary = run_job(spec, handle_signals=False)
    assert summary.table == {"ok": len(ROWS)}
    assert compact_sim.sim.stats()["answered"] == len(ROWS)
    plain = run_job(
        write_job(tmp_path / "plain", ROWS, {"api": api, "model": {"name": model}, "parameters": parameters}),
        handle_signals=False,
    )
    columns = ["id", "content", "reasoning_content", "output_tokens", "finish_reason"]
    streamed_out, plain_out = read_table(summary.output_path), read_table(plain.output_path)
    assert streamed_out.select(columns).equals(plain_out.select(columns))
