"""DashScope's native dialect: paths, the request body, answers whole and streamed.

    POST {base}/services/aigc/text-generation/generation        text models
    POST {base}/services/aigc/multimodal-generation/generation  vision and Qwen3.5+ models
    body {model, input: {messages}, parameters}; SSE when the X-DashScope-SSE header says so

Facts are from the DashScope text-generation reference (request body, usage fields, SSE framing).
"""

from __future__ import annotations

from typing import Any

from .sse import ChoiceBuilder, SSEEvent, StreamAssembler, StreamError, all_finished, event_error
from .types import Choice, Completion, MalformedResponse, Usage, load_json, text_of

TEXT_PATH = "/services/aigc/text-generation/generation"
MULTIMODAL_PATH = "/services/aigc/multimodal-generation/generation"
SSE_HEADER = "X-DashScope-SSE"
SSE_HEADERS = {"Accept": "text/event-stream", "X-Accel-Buffering": "no"}

INTL_BASE_URL = "https://dashscope-intl.aliyuncs.com/api/v1"
CN_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"

# Models served by the multimodal-generation endpoint (vision models and the natively
# multimodal Qwen3.5+ plus/flash families). Matched by prefix; everything else is text.
MULTIMODAL_MODEL_PREFIXES: tuple[str, ...] = (
    "qwen3-vl",
    "qwen-vl",
    "qwen2.5-vl",
    "qvq",
    "qwen3.5-plus",
    "qwen3.5-flash",
    "qwen3.6-plus",
    "qwen3.6-flash",
    "qwen3.7-plus",
    "qwen3.8-max",
    "qwen3.8-flash",
)

# Parameters that only mean something on the native wire.
NATIVE_ONLY_PARAMETERS = frozenset({"result_format", "incremental_output"})


def is_multimodal_model(model: str) -> bool:
    """Whether `model` is served by the multimodal-generation endpoint."""
    return model.lower().startswith(MULTIMODAL_MODEL_PREFIXES)


def path_for_model(model: str) -> str:
    """The endpoint path (relative to the base URL) that serves `model`."""
    return MULTIMODAL_PATH if is_multimodal_model(model) else TEXT_PATH


def build_body(model: str, messages: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a generation call; result_format defaults to "message"."""
    params = {"result_format": "message", **parameters}
    return {"model": model, "input": {"messages": messages}, "parameters": params}


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


def _choice(raw: dict[str, Any]) -> Choice:
    message = raw.get("message") or {}
    return Choice(
        content=text_of(message.get("content")),
        reasoning_content=message.get("reasoning_content") or None,
        finish_reason=raw.get("finish_reason"),
        tool_calls=message.get("tool_calls") or None,
        logprobs=raw.get("logprobs") or None,
    )


def parse_completion(body: bytes | str | dict[str, Any]) -> Completion:
    """Read a native 200 body (result_format message or text). Raises MalformedResponse."""
    data = load_json(body)
    output = data.get("output")
    if not isinstance(output, dict):
        msg = "answer has no 'output' object"
        raise MalformedResponse(msg)
    usage = Usage.from_wire(data.get("usage"))
    request_id = data.get("request_id")
    choices = output.get("choices")
    if choices:
        return Completion(tuple(_choice(c) for c in choices), request_id, usage)
    if "text" in output:
        return Completion((Choice(output.get("text"), None, output.get("finish_reason")),), request_id, usage)
    msg = "answer has neither output.choices nor output.text"
    raise MalformedResponse(msg)


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
        return build_body(model, converted, params)

    def headers(self, stream: bool) -> dict[str, str]:
        return {SSE_HEADER: "enable", **SSE_HEADERS} if stream else {}

    def parse(self, body: bytes) -> Completion:
        return parse_completion(body)

    def assembler(self, body: dict[str, Any]) -> StreamAssembler:
        return NativeStream(incremental=bool(body["parameters"].get("incremental_output", False)))


class NativeStream:
    """Assembles a DashScope SSE answer (usage is cumulative in every chunk)."""

    def __init__(self, *, incremental: bool) -> None:
        self.incremental = incremental
        self._accs: dict[int, ChoiceBuilder] = {}
        self._usage: dict[str, Any] | None = None
        self._request_id: str | None = None

    def feed(self, event: SSEEvent) -> None:
        if event.event == "error":
            raise StreamError(event_error(event))
        if not event.data:
            return
        data = load_json(event.data)
        if data.get("code") and not data.get("output"):
            raise StreamError(event_error(event))
        self._request_id = data.get("request_id") or self._request_id
        self._usage = data.get("usage") or self._usage
        output = data.get("output") or {}
        if "choices" not in output and "text" in output:  # result_format text
            output = {
                "choices": [{"finish_reason": output.get("finish_reason"), "message": {"content": output["text"]}}]
            }
        for n, raw in enumerate(output.get("choices") or []):
            acc = self._accs.setdefault(raw.get("index", n), ChoiceBuilder())
            message = raw.get("message") or {}
            content = text_of(message.get("content")) or ""
            reasoning = message.get("reasoning_content") or ""
            if self.incremental:
                acc.content += content
                acc.reasoning += reasoning
            else:
                acc.content = content or acc.content
                acc.reasoning = reasoning or acc.reasoning
            if message.get("tool_calls"):
                acc.add_calls(message["tool_calls"], incremental=self.incremental)
            logprobs = (raw.get("logprobs") or {}).get("content")
            if logprobs:
                acc.logprobs = acc.logprobs + logprobs if self.incremental else list(logprobs)
            if raw.get("finish_reason") not in (None, "null"):
                acc.finish = raw["finish_reason"]

    def result(self) -> Completion:
        if not all_finished(self._accs):
            msg = "stream ended before its last chunk (connection cut mid-answer)"
            raise MalformedResponse(msg)
        choices = tuple(self._accs[i].choice() for i in sorted(self._accs))
        return Completion(choices, self._request_id, Usage.from_wire(self._usage))
