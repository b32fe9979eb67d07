"""The OpenAI-compatible dialect: chat/completions (DashScope compatible mode, vLLM, Ollama).

POST {base}/chat/completions   body {model, messages, ...parameters}; SSE by `stream: true`

The Batch Chat API takes the same body at its own root (BATCH_CHAT_BASE_URL): it queues the
request and answers over the open connection, at the batch price.
"""

from __future__ import annotations

from typing import Any

from .native import NATIVE_ONLY_PARAMETERS, SSE_HEADERS
from .sse import ChoiceBuilder, SSEEvent, StreamAssembler, StreamError, all_finished, event_error
from .types import Choice, Completion, MalformedResponse, Usage, load_json, text_of

CHAT_PATH = "/chat/completions"
COMPATIBLE_SUFFIX = "/compatible-mode/v1"
BATCH_CHAT_BASE_URL = "https://batch.dashscope.aliyuncs.com" + COMPATIBLE_SUFFIX  # Beijing only


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


def parse_chat_completion(body: bytes | str | dict[str, Any]) -> Completion:
    """Read an OpenAI chat.completion object. Raises MalformedResponse."""
    data = load_json(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        msg = "answer has no choices"
        raise MalformedResponse(msg)
    parsed = tuple(
        Choice(
            content=text_of((c.get("message") or {}).get("content")),
            reasoning_content=(c.get("message") or {}).get("reasoning_content") or None,
            finish_reason=c.get("finish_reason"),
            tool_calls=(c.get("message") or {}).get("tool_calls") or None,
            logprobs=c.get("logprobs") or None,
        )
        for c in sorted(choices, key=lambda c: c.get("index", 0))
    )
    return Completion(parsed, data.get("request_id") or data.get("id"), Usage.from_wire(data.get("usage")))


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
        body.update((k, v) for k, v in parameters.items() if k not in NATIVE_ONLY_PARAMETERS)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def headers(self, stream: bool) -> dict[str, str]:
        return dict(SSE_HEADERS) if stream else {}

    def parse(self, body: bytes) -> Completion:
        return parse_chat_completion(body)

    def assembler(self, body: dict[str, Any]) -> StreamAssembler:
        return OpenAIStream()


class OpenAIStream:
    """Assembles an OpenAI-style SSE answer (deltas; usage in a last chunk; `[DONE]`)."""

    def __init__(self) -> None:
        self._accs: dict[int, ChoiceBuilder] = {}
        self._usage: dict[str, Any] | None = None
        self._request_id: str | None = None
        self._finished = False

    def feed(self, event: SSEEvent) -> None:
        if event.data.strip() == "[DONE]":
            self._finished = True
            return
        if not event.data:
            return
        data = load_json(event.data)
        if isinstance(data.get("error"), dict) or event.event == "error":
            raise StreamError(event_error(event))
        self._request_id = data.get("request_id") or data.get("id") or self._request_id
        self._usage = data.get("usage") or self._usage
        for raw in data.get("choices") or []:
            acc = self._accs.setdefault(raw.get("index", 0), ChoiceBuilder())
            delta = raw.get("delta") or {}
            acc.content += delta.get("content") or ""
            acc.reasoning += delta.get("reasoning_content") or ""
            if delta.get("tool_calls"):
                acc.add_calls(delta["tool_calls"], incremental=True)
            logprobs = (raw.get("logprobs") or {}).get("content")
            if logprobs:
                acc.logprobs.extend(logprobs)
            if raw.get("finish_reason"):
                acc.finish = raw["finish_reason"]

    def result(self) -> Completion:
        if not (self._finished and all_finished(self._accs)):
            msg = "stream ended before [DONE] (connection cut mid-answer)"
            raise MalformedResponse(msg)
        choices = tuple(self._accs[i].choice() for i in sorted(self._accs))
        return Completion(choices, self._request_id, Usage.from_wire(self._usage))
