"""The OpenAI-compatible chat endpoint: POST /compatible-mode/v1/chat/completions.

A body is translated into the native body it stands for (`to_native`) and then validated and
answered by the same code as the native endpoints, so content, token counts, tool calls and
logprobs are identical to a native call with the same model, messages, seed and parameters.
Only the shapes differ: chat.completion bodies, `data: {chunk}` streams closed by
`data: [DONE]`, and {"error": {...}} error bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchrunner.wire import MULTIMODAL_PATH, TEXT_PATH, path_for_model

from .catalogue import SimError
from .reply import Answer
from .stream import CONTENT, REASONING, plan
from .validate import Call

COMPAT_BASE = "/compatible-mode/v1"  # the OpenAI client's base path on the server's host
COMPAT_PATH = COMPAT_BASE + "/chat/completions"

# Top-level body keys that are native `parameters` under the same name.
PASSED = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "enable_thinking",
    "thinking_budget",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "vl_high_resolution_images",
    "vl_enable_image_hw_output",
)

# OpenAI part type -> (key holding the value, native key); the value may be {"url": ...}.
_PARTS = {
    "text": ("text", "text"),
    "image_url": ("image_url", "image"),
    "video_url": ("video_url", "video"),
    "video": ("video", "video"),
    "image": ("image", "image"),
}

# Native error code -> OpenAI-mode code; other codes map by HTTP status (`_BY_STATUS`).
_CODES = {
    "InvalidApiKey": "invalid_api_key",
    "ModelNotFound": "model_not_found",
    "DataInspectionFailed": "data_inspection_failed",
    "Throttling": "limit_requests",
    "Throttling.RateQuota": "limit_requests",
    "Throttling.Concurrency": "limit_requests",
    "Throttling.BurstRate": "limit_burst_rate",
    "Throttling.AllocationQuota": "insufficient_quota",
}
# Account codes are passed through verbatim so a client can still tell them apart.
_KEPT = frozenset({"Arrearage", "PrepaidBillOverdue", "PostpaidBillOverdue", "CommodityNotPurchased"})
_BY_STATUS = {401: "invalid_api_key", 403: "access_denied", 404: "model_not_found", 408: "request_timeout"}
_REQUEST_ERROR = "invalid_request_error"
# Codes whose `type` is invalid_request_error; every other code is its own type.
_REQUEST_TYPED = frozenset({_REQUEST_ERROR, "invalid_api_key", "model_not_found"})


@dataclass(slots=True)
class Options:
    """What the OpenAI shapes need besides the call: the body's model, the `created` time
    (epoch seconds) and whether stream_options.include_usage asked for a usage chunk."""

    model: str
    created: int
    include_usage: bool


def _part(part: Any) -> Any:
    """One OpenAI content part as a native multimodal item (unknown parts are left as they are)."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    spec = _PARTS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        return part
    source, target = spec
    value = part.get(source)
    if source in ("image_url", "video_url") and isinstance(value, dict):
        value = value.get("url")
    item = {target: value}
    item.update((k, v) for k, v in part.items() if k not in ("type", source))
    return item


def _message(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        return {**message, "content": [_part(p) for p in message["content"]]}
    return message


def to_native(body: dict[str, Any], created: int) -> tuple[dict[str, Any], str, bool, Options]:
    """(native body, native path, stream, options) for an OpenAI-mode body.

    Content parts are converted only for multimodal models; a text model gets its parts as
    they are, so media there fails the native check ("input content must be a string.")."""
    model = body.get("model")
    path = path_for_model(model) if isinstance(model, str) else TEXT_PATH
    messages = body.get("messages")
    if path == MULTIMODAL_PATH and isinstance(messages, list):
        messages = [_message(m) for m in messages]
    params = {k: body[k] for k in PASSED if body.get(k) is not None}
    params["result_format"] = "message"
    stream = body.get("stream") is True
    if stream:
        params["incremental_output"] = True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    native = {"model": model, "input": {} if messages is None else {"messages": messages}, "parameters": params}
    return native, path, stream, Options(model if isinstance(model, str) else "", created, include_usage)


def error(err: SimError, request_id: str) -> dict[str, Any]:
    """The OpenAI-mode error body for a native error (same message, mapped code)."""
    code = _CODES.get(err.code)
    if code is None:
        if err.code in _KEPT:
            code = err.code
        elif err.status >= 500:
            code = "internal_error"
        elif err.status == 429:
            code = "limit_requests"
        else:
            code = _BY_STATUS.get(err.status, _REQUEST_ERROR)
    kind = _REQUEST_ERROR if code in _REQUEST_TYPED else code
    return {
        "error": {"message": err.message, "type": kind, "param": None, "code": code},
        "request_id": request_id,
    }


def usage(call: Call, answer: Answer, details: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `usage` object: the native counts under OpenAI names."""
    prompt = dict(details)
    if call.multimodal:
        image, video = answer.image_tokens, answer.video_tokens
        prompt.update(text_tokens=answer.input_tokens - image - video, image_tokens=image, video_tokens=video)
    out = answer.output_tokens
    body: dict[str, Any] = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": out,
        "total_tokens": answer.input_tokens + out,
        "prompt_tokens_details": prompt,
    }
    if answer.reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": answer.reasoning_tokens}
    return body


def _head(request_id: str, options: Options, kind: str) -> dict[str, Any]:
    return {"id": "chatcmpl-" + request_id, "object": kind, "created": options.created, "model": options.model}


def body(call: Call, answer: Answer, details: dict[str, Any], request_id: str, options: Options) -> dict[str, Any]:
    """The chat.completion body of a non-streaming call."""
    choices = []
    lps = answer.logprobs
    for i, (text, _, finish) in enumerate(answer.choices):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if answer.reasoning is not None:
            message["reasoning_content"] = answer.reasoning
        if i == 0 and answer.tool_calls is not None:
            message["tool_calls"] = answer.tool_calls
        logprobs = {"content": lps[i]} if lps is not None else None
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs})
    out = _head(request_id, options, "chat.completion")
    out["choices"] = choices
    out["usage"] = usage(call, answer, details)
    return out


def _data(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def chunks(call: Call, answer: Answer, details: dict[str, Any], request_id: str, options: Options) -> list[bytes]:
    """Every `data:` event of a streamed call, the last one ending with `data: [DONE]`.

    Choices stream one after the other; each choice's first delta has role "assistant".
    Deltas carry new text only; with thinking both `content` and `reasoning_content` are
    present, the one not growing set to null. Tool calls come whole in the last delta."""
    head = _head(request_id, options, "chat.completion.chunk")
    thinking = answer.reasoning is not None
    out: list[bytes] = []
    started = -1
    for step in plan(answer, len(answer.choices)):
        delta: dict[str, Any] = {}
        if step.choice != started:
            delta["role"] = "assistant"
            started = step.choice
        if thinking:
            delta["content"] = step.text if step.field == CONTENT else None
            delta["reasoning_content"] = step.text if step.field == REASONING else None
        else:
            delta["content"] = step.text
        if step.last and step.choice == 0 and answer.tool_calls is not None:
            delta["tool_calls"] = answer.tool_calls
        finish = answer.choices[step.choice][2] if step.last else None
        logprobs = {"content": step.logprobs} if step.logprobs is not None else None
        choice = {"index": step.choice, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        out.append(_data({**head, "choices": [choice]}))
    if options.include_usage:
        out.append(_data({**head, "choices": [], "usage": usage(call, answer, details)}))
    out[-1] += b"data: [DONE]\n\n"
    return out
