"""The service's formats, and the only package that knows them.

    types    Usage, Choice, Completion: an answer, whichever dialect carried it
    errors   error answers, and `classify` (retry / fail the row / abort the run)
    sse      server-sent events framing and the parts of stream assembly both dialects share
    native   DashScope's own API: paths, {model, input, parameters}, answers, streams
    openai   the OpenAI-compatible chat/completions API

The client builds bodies and reads answers through a `Wire`; the simulator imports the same
paths and types, so the two cannot drift apart. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import ACCOUNT_CODES, Outcome, ServiceError, classify, parse_error, status_for
from .native import (
    CN_BASE_URL,
    INTL_BASE_URL,
    MULTIMODAL_PATH,
    NATIVE_ONLY_PARAMETERS,
    SSE_HEADER,
    TEXT_PATH,
    NativeStream,
    NativeWire,
    build_body,
    is_multimodal_model,
    native_content,
    parse_completion,
    path_for_model,
)
from .openai import BATCH_CHAT_BASE_URL, COMPATIBLE_SUFFIX, OpenAIStream, OpenAIWire, openai_part, parse_chat_completion
from .openai import CHAT_PATH as OPENAI_CHAT_PATH
from .sse import SSEEvent, SSEParser, StreamAssembler, StreamError
from .types import USAGE_FIELDS, Choice, Completion, MalformedResponse, Usage, load_json, text_of


class Wire(Protocol):
    """One dialect: how a body is built, which headers stream it, how an answer is read."""

    name: str

    def body(
        self, model: str, messages: list[dict[str, Any]], parameters: dict[str, Any], *, multimodal: bool, stream: bool
    ) -> dict[str, Any]: ...

    def headers(self, stream: bool) -> dict[str, str]: ...

    def parse(self, body: bytes) -> Completion: ...

    def assembler(self, body: dict[str, Any]) -> StreamAssembler: ...


def for_protocol(name: str) -> Wire:
    """The dialect of `[api] protocol` ("dashscope" or "openai")."""
    return OpenAIWire() if name == "openai" else NativeWire()


def base_url_for(region: str, protocol: str = "dashscope") -> str:
    """The default base URL of a region (intl = Singapore, cn = Beijing) for a protocol."""
    native = CN_BASE_URL if region == "cn" else INTL_BASE_URL
    if protocol == "openai":
        return compatible_root(native)
    return native


def compatible_root(native_base_url: str) -> str:
    """The OpenAI-compatible root that sits beside a native base URL (…/api/v1)."""
    return native_base_url.removesuffix("/api/v1") + COMPATIBLE_SUFFIX


def path_for(model: str, protocol: str) -> str:
    """The endpoint path of a model for a protocol."""
    return OPENAI_CHAT_PATH if protocol == "openai" else path_for_model(model)


# ----------------------------------------------------------------- reading a built body


def model_of(body: dict[str, Any]) -> str:
    return str(body["model"])


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a body of either dialect."""
    return list(body["input"]["messages"] if "input" in body else body["messages"])


def parameters_of(body: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters of a body as sent (either dialect)."""
    if "parameters" in body:
        return dict(body["parameters"])
    return {k: v for k, v in body.items() if k not in ("model", "messages", "input")}


_NOT_IN_CHAT = NATIVE_ONLY_PARAMETERS | {"stream", "stream_options"}


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """A built body of either dialect as the chat/completions body the batch APIs take: the same
    model, messages and parameters, never streamed, and `enable_thinking` always set (false when
    the job leaves it out: some models think by default, and their thinking would be billed)."""
    messages = []
    for m in messages_of(body):
        content = m.get("content")
        if isinstance(content, list):
            content = [openai_part(item) for item in content]
        messages.append({**m, "content": content})
    chat: dict[str, Any] = {"model": model_of(body), "messages": messages}
    chat.update((k, v) for k, v in parameters_of(body).items() if k not in _NOT_IN_CHAT)
    chat.setdefault("enable_thinking", False)
    return chat


__all__ = [
    "ACCOUNT_CODES",
    "BATCH_CHAT_BASE_URL",
    "CN_BASE_URL",
    "COMPATIBLE_SUFFIX",
    "INTL_BASE_URL",
    "MULTIMODAL_PATH",
    "OPENAI_CHAT_PATH",
    "SSE_HEADER",
    "TEXT_PATH",
    "USAGE_FIELDS",
    "Choice",
    "Completion",
    "MalformedResponse",
    "NativeStream",
    "NativeWire",
    "OpenAIStream",
    "OpenAIWire",
    "Outcome",
    "SSEEvent",
    "SSEParser",
    "ServiceError",
    "StreamAssembler",
    "StreamError",
    "Usage",
    "Wire",
    "base_url_for",
    "build_body",
    "classify",
    "compatible_root",
    "for_protocol",
    "is_multimodal_model",
    "load_json",
    "messages_of",
    "model_of",
    "native_content",
    "openai_part",
    "parameters_of",
    "parse_chat_completion",
    "parse_completion",
    "parse_error",
    "path_for",
    "path_for_model",
    "status_for",
    "text_of",
]
