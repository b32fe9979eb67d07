"""Request validation: raw body bytes in, a checked `Call` out, or a `SimError` raised.

Checks run in the order the real service appears to apply them: body JSON, model, endpoint,
input, messages, then parameters. Messages are the reference's exact texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchrunner.wire import MULTIMODAL_PATH, path_for_model

from .answers import text_of
from .catalogue import GENERIC_INVALID, SimError, error_for_code
from .logprobs import TOP_MAX, TOP_RANGE
from .media import BAD_MODAL, Media, add_part
from .tools import check_tools

MODEL_PREFIXES = ("qwen", "qwq", "qvq", "deepseek")
SEED_MAX = 9223372036854775807
ROLES = frozenset({"system", "user", "assistant", "tool"})
MEDIA_KEYS = frozenset({"text", "image", "video", "audio"})
_MESSAGE_FORMAT_FIRST = ("qwen3-max", "qwen3-vl", "qwq", "qvq")
_QWEN3_OPEN = re.compile(r"qwen3-(\d+(\.\d+)?b|next-80b-a3b-thinking)")

BAD_BODY = "Required body invalid, please check the request body format."
BAD_ROLE = "Role must be user or assistant and Content length must be greater than 0"
NOT_STRING = "input content must be a string."
THINKING_N = "The n parameter must be 1 when enable_thinking is true"
VL_FLAGS = ("vl_high_resolution_images", "vl_enable_image_hw_output")


@dataclass(slots=True)
class Call:
    """A request that passed validation: what to answer and how to shape the answer.

    call_tools: the tool `function` objects to call (None: no tools; []: tools given, but
    answer with text). media: images and video found (multimodal endpoint only).
    high_res / image_hw: vl_high_resolution_images / vl_enable_image_hw_output.
    """

    model: str
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    multimodal: bool
    result_format: str
    prompt: str
    seed: int | None = None
    max_tokens: int | None = None
    n: int = 1
    thinking: bool = False
    thinking_budget: int | None = None
    json_mode: bool = False
    stream: bool = False
    incremental: bool = False
    stop: list[str] = field(default_factory=list)
    call_tools: list[dict[str, Any]] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    media: Media | None = None
    high_res: bool = False
    image_hw: bool = False


def invalid(message: str = GENERIC_INVALID) -> SimError:
    """A 400 InvalidParameter with `message`."""
    return SimError(400, "InvalidParameter", message)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 InvalidParameter."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid(BAD_BODY) from None
    if not isinstance(body, dict):
        raise invalid(BAD_BODY)
    return body


def default_result_format(model: str, multimodal: bool) -> str:
    """The result_format a model uses when the request names none."""
    if multimodal or model.startswith(_MESSAGE_FORMAT_FIRST) or _QWEN3_OPEN.match(model):
        return "message"
    return "text"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_part(part: Any, multimodal: bool, media: Media | None) -> None:
    """One entry of a list `content`: a media part (multimodal) or a text part."""
    if not isinstance(part, dict):
        raise invalid(BAD_MODAL if multimodal else NOT_STRING)
    if not multimodal:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise invalid(NOT_STRING)
        return
    if not MEDIA_KEYS.intersection(part):
        raise invalid(BAD_MODAL)
    if media is not None and ("image" in part or "video" in part):
        add_part(part, media)


def _check_message(message: Any, multimodal: bool, media: Media | None) -> None:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise invalid(BAD_ROLE)
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            _check_part(part, multimodal, media)
    elif content is not None and not isinstance(content, str):
        raise invalid(BAD_MODAL if multimodal else NOT_STRING)
    elif message["role"] == "user" and not content:
        raise invalid(BAD_ROLE)


def check_messages(messages: Any, multimodal: bool, media: Media | None = None) -> list[dict[str, Any]]:
    """The message list if every message is well formed for the endpoint; images and video
    of multimodal messages are checked and tallied into `media`."""
    if not isinstance(messages, list):
        raise invalid()
    if not messages:
        raise invalid("[] is too short")
    for message in messages:
        _check_message(message, multimodal, media)
    last = messages[-1]
    if last["role"] not in ("user", "tool") and not (last["role"] == "assistant" and last.get("partial") is True):
        raise SimError(500, "InternalError.Algo", "list index out of range")
    return messages


# (parameter, ok, message), checked in this order when the parameter is given: the first
# whose `ok(value)` is false is the error.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("temperature", _number, "'temperature' must be Float"),
    ("temperature", lambda v: 0.0 <= v < 2.0, "Temperature should be in [0.0, 2.0)"),
    ("top_p", lambda v: _number(v) and 0.0 < v <= 1.0, "Range of top_p should be (0.0, 1.0]"),
    ("top_k", lambda v: _number(v) and v >= 0, "Parameter top_k be greater than or equal to 0"),
    ("repetition_penalty", lambda v: _number(v) and v > 0, "Repetition_penalty should be greater than 0.0"),
    ("presence_penalty", lambda v: _number(v) and -2.0 <= v <= 2.0, "Presence_penalty should be in [-2.0, 2.0]"),
)


def _check_ranges(p: dict[str, Any]) -> None:
    for name, ok, message in _RANGES:
        value = p.get(name)
        if value is not None and not ok(value):
            raise invalid(message)


def _integer_in(p: dict[str, Any], name: str, low: int, high: int, message: str) -> int | None:
    """The integer parameter `name` if given: it must lie in [low, high]."""
    value = p.get(name)
    if value is not None and not (_integer(value) and low <= value <= high):
        raise invalid(message)
    return value


def _check_counts(call: Call, max_output: int) -> None:
    """n, seed, max_tokens and thinking_budget; fills them (and `thinking`) into `call`."""
    p = call.params
    n = _integer_in(p, "n", 1, 4, "Range of n should be [1, 4]")
    if n is not None:
        call.n = n
    seed = _integer_in(p, "seed", 0, SEED_MAX, f"Range of seed should be [0, {SEED_MAX}]")
    if seed is not None:
        call.seed = seed
    max_tokens = _integer_in(p, "max_tokens", 1, max_output, f"Range of max_tokens should be [1, {max_output}]")
    if max_tokens is not None:
        call.max_tokens = max_tokens
    call.thinking = p.get("enable_thinking") is True
    budget = _integer_in(
        p,
        "thinking_budget",
        1,
        max_output,
        f"The thinking_budget parameter must be a positive integer and not greater than {max_output}",
    )
    if budget is not None:
        call.thinking_budget = budget


def _check_output_mode(call: Call) -> None:
    """result_format and incremental_output, and what thinking mode requires of them."""
    p = call.params
    value = p.get("result_format")
    if value is not None and value not in ("message", "text"):
        raise invalid()
    if value is not None and not call.multimodal:
        call.result_format = value
    if call.thinking and call.result_format != "message":
        raise invalid('The result_format parameter must be "message" when enable_thinking is true')
    call.incremental = p.get("incremental_output") is True
    if call.stream and call.thinking and not call.incremental:
        raise invalid('The incremental_output parameter must be "true" when enable_thinking is true')


def _check_response_format(call: Call) -> None:
    fmt = call.params.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid()
    call.json_mode = kind != "text"
    if call.json_mode and call.thinking:
        raise invalid("Json mode response is not supported when enable_thinking is true")
    if kind == "json_object" and not any("json" in text_of(m.get("content")).lower() for m in call.messages):
        raise invalid(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
        )


def _set_stop(call: Call) -> None:
    stop = call.params.get("stop")
    if isinstance(stop, str):
        call.stop = [stop] if stop else []
    elif isinstance(stop, list):
        call.stop = [s for s in stop if isinstance(s, str) and s]


def check_parameters(call: Call, max_output: int) -> None:
    """Range checks on `call.params`; fills the typed fields of `call`."""
    _check_ranges(call.params)
    _check_counts(call, max_output)
    _check_output_mode(call)
    _check_response_format(call)
    _set_stop(call)
    _check_extras(call)


def _check_extras(call: Call) -> None:
    """logprobs, the vision flags, tools, and the n rules that depend on them."""
    p = call.params
    value = p.get("logprobs")
    if value is not None:
        if not isinstance(value, bool):
            raise invalid("logprobs must be a boolean")
        call.logprobs = value
        value = p.get("top_logprobs")
        if value is not None and call.logprobs:
            if not (_integer(value) and 0 <= value <= TOP_MAX):
                raise invalid(TOP_RANGE)
            call.top_logprobs = value
    high_res, image_hw = p.get(VL_FLAGS[0]), p.get(VL_FLAGS[1])
    if high_res is not None or image_hw is not None:
        for name, value in zip(VL_FLAGS, (high_res, image_hw), strict=True):
            if value is not None and not isinstance(value, bool):
                raise invalid(f"{name} must be a boolean")
        call.high_res = high_res is True
        call.image_hw = image_hw is True
    if "tools" in p:
        call.call_tools = check_tools(p, call.model, call.result_format, call.messages[-1]["role"])
        if call.call_tools is not None:
            call.n = 1  # the service fixes n at 1 when tools are given
    if call.thinking and call.n != 1:
        raise invalid(THINKING_N)


def _check_model(path: str, body: dict[str, Any]) -> str:
    """The model name, if it is known and served at `path`."""
    model = body.get("model")
    if model is None or model == "":
        raise error_for_code("BadRequest.EmptyModel")
    if not isinstance(model, str):
        raise invalid()
    if not model.lower().startswith(MODEL_PREFIXES):
        raise error_for_code("ModelNotFound")
    if path_for_model(model) != path:
        raise invalid("url error, please check url!")
    return model


def _given_messages(input_: dict[str, Any]) -> Any:
    """`input.messages` as given, or a single user message made from `input.prompt`."""
    messages = input_.get("messages")
    if messages is not None:
        return messages
    prompt = input_.get("prompt")
    if prompt is None:
        raise invalid('Either "prompt" or "messages" must exist and cannot both be none')
    if not isinstance(prompt, str) or not prompt:
        raise invalid(BAD_ROLE)
    return [{"role": "user", "content": prompt}]


def _last_user(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if message["role"] == "user":
            return text_of(message.get("content"))
    return ""


def check_request(path: str, body: dict[str, Any], stream: bool, max_output: int) -> Call:
    """Validate one parsed generation request sent to `path` (TEXT_PATH or MULTIMODAL_PATH)."""
    model = _check_model(path, body)
    input_ = body.get("input")
    if not isinstance(input_, dict) or not input_:
        raise error_for_code("BadRequest.EmptyInput")
    params = body.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise invalid()
    multimodal = path == MULTIMODAL_PATH
    media = Media() if multimodal else None
    messages = check_messages(_given_messages(input_), multimodal, media)
    call = Call(
        model=model,
        body=body,
        messages=messages,
        params=params,
        multimodal=multimodal,
        result_format=default_result_format(model.lower(), multimodal),
        prompt=_last_user(messages),
        stream=stream,
        media=media,
    )
    check_parameters(call, max_output)
    return call
