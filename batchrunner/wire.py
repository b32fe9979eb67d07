"""The two wire protocols a job can speak, behind one small interface.

    NativeWire   DashScope's own API: {model, input: {messages}, parameters}; SSE by header
    OpenAIWire   the OpenAI-compatible chat/completions API (DashScope compatible mode, vLLM,
                 Ollama, llama.cpp): {model, messages, ...parameters}; SSE by `stream: true`

Messages arrive here in one neutral form: `content` is a string, or a list of native items
({"text": ...}, {"image": url}, {"video": url | [frame urls]}, optionally with
"cache_control"). Each wire turns that into what its endpoint takes, builds the body and
headers, and reads answers (whole or streamed) into a protocol.Completion.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import protocol
from .sse import NativeStream, OpenAIStream, StreamAssembler

SSE_HEADERS = {"Accept": "text/event-stream", "X-Accel-Buffering": "no"}


class Wire(Protocol):
    name: str

    def body(
        self, model: str, messages: list[dict[str, Any]], parameters: dict[str, Any], *, multimodal: bool, stream: bool
    ) -> dict[str, Any]: ...

    def headers(self, stream: bool) -> dict[str, str]: ...

    def parse(self, body: bytes) -> protocol.Completion: ...

    def assembler(self, body: dict[str, Any]) -> StreamAssembler: ...


def _has_cache_marker(items: list[dict[str, Any]]) -> bool:
    return any("cache_control" in item for item in items)


def native_content(content: Any, *, multimodal: bool) -> Any:
    """Neutral content -> native content for the text or the multimodal endpoint."""
    if isinstance(content, str):
        return [{"text": content}] if multimodal else content
    if not isinstance(content, list) or multimodal:
        return content
    # text endpoint: explicit-cache blocks use the {"type": "text", ...} list form
    if _has_cache_marker(content):
        return [{"type": "text", **item} if "text" in item else item for item in content]
    return "".join(str(item.get("text", "")) for item in content)


class NativeWire:
    """DashScope's native generation API."""

    name = "dashscope"

    def body(
        self, model: str, messages: list[dict[str, Any]], parameters: dict[str, Any], *, multimodal: bool, stream: bool
    ) -> dict[str, Any]:
        converted = [{**m, "content": native_content(m.get("content"), multimodal=multimodal)} for m in messages]
        params = dict(parameters)
        if stream:
            params.setdefault("incremental_output", True)
        return protocol.build_body(model, converted, params)

    def headers(self, stream: bool) -> dict[str, str]:
        return {protocol.SSE_HEADER: "enable", **SSE_HEADERS} if stream else {}

    def parse(self, body: bytes) -> protocol.Completion:
        return protocol.parse_completion(body)

    def assembler(self, body: dict[str, Any]) -> StreamAssembler:
        return NativeStream(incremental=bool(body["parameters"].get("incremental_output", False)))


# Parameters that only mean something on the native wire.
_NATIVE_ONLY = frozenset({"result_format", "incremental_output"})


def openai_part(item: dict[str, Any]) -> dict[str, Any]:
    """A neutral content item -> an OpenAI content part."""
    extra = {"cache_control": item["cache_control"]} if "cache_control" in item else {}
    if "image" in item:
        return {"type": "image_url", "image_url": {"url": item["image"]}, **extra}
    if "video" in item:
        video = item["video"]
        if isinstance(video, list):
            return {"type": "video", "video": video, **extra}
        return {"type": "video_url", "video_url": {"url": video}, **extra}
    return {"type": "text", "text": item.get("text", ""), **extra}


class OpenAIWire:
    """The OpenAI-compatible chat/completions API."""

    name = "openai"

    def body(
        self, model: str, messages: list[dict[str, Any]], parameters: dict[str, Any], *, multimodal: bool, stream: bool
    ) -> dict[str, Any]:
        converted = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = [openai_part(item) for item in content]
            converted.append({**m, "content": content})
        body: dict[str, Any] = {"model": model, "messages": converted}
        body.update((k, v) for k, v in parameters.items() if k not in _NATIVE_ONLY)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def headers(self, stream: bool) -> dict[str, str]:
        return dict(SSE_HEADERS) if stream else {}

    def parse(self, body: bytes) -> protocol.Completion:
        data = protocol.load_json(body)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            msg = "answer has no choices"
            raise protocol.MalformedResponse(msg)
        parsed = tuple(
            protocol.Choice(
                content=protocol.text_of((c.get("message") or {}).get("content")),
                reasoning_content=(c.get("message") or {}).get("reasoning_content") or None,
                finish_reason=c.get("finish_reason"),
                tool_calls=(c.get("message") or {}).get("tool_calls") or None,
                logprobs=c.get("logprobs") or None,
            )
            for c in sorted(choices, key=lambda c: c.get("index", 0))
        )
        return protocol.Completion(
            parsed, data.get("request_id") or data.get("id"), protocol.Usage.from_wire(data.get("usage"))
        )

    def assembler(self, body: dict[str, Any]) -> StreamAssembler:
        return OpenAIStream()


def for_protocol(name: str) -> Wire:
    return OpenAIWire() if name == "openai" else NativeWire()
