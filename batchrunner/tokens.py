"""A request's input tokens before it is sent: a best count, and a bound the bill cannot pass.

count   what `estimate` shows and what the context check compares with the model's limit: the
        Qwen tokenizer shipped in the `dashscope` package (offline) over each message's chat
        template (5 tokens a message, 3 for the reply's opening), media approximated
        (MEDIA_ESTIMATE each). None when that package is not installed.

bound   what the budget guard reserves: input tokens the service cannot bill more of.
        Each text counts the larger of the Qwen tokenizer's count and a character-class count
        (one token per CJK character, per punctuation mark, per run of letters and digits: a
        vocabulary that merges fewer of these than Qwen's, such as a newer one or the simulator's,
        cannot go above it), but never more than its UTF-8 size (no token of a byte-level BPE is
        shorter than a byte); without the tokenizer, the UTF-8 size. On top: the chat template,
        INTERNAL_TOKENS the service may add (a default system prompt, tokens after a cache
        marker), each image at IMAGE_MAX_TOKENS (the documented most, with
        vl_high_resolution_images), each video frame as an image, and the JSON of tools and of
        a response schema with TOOLS_TEMPLATE_TOKENS for the text that presents them. A video
        given as one file or URL, and audio, have no known bound: `bound` is None.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

MESSAGE_TOKENS = 5  # <|im_start|>role\n ... <|im_end|>\n
REPLY_TOKENS = 3  # <|im_start|>assistant\n
INTERNAL_TOKENS = 64  # what the service may add: a default system prompt, tokens after a cache marker
IMAGE_MAX_TOKENS = 16_384 + 2  # 16,384 tokens at most (vl_high_resolution_images), plus its start and end
TOOLS_TEMPLATE_TOKENS = 256  # the text that presents tools or a response schema to the model
MEDIA_ESTIMATE = 1024  # tokens counted per image (twice that per video) by `count`
CACHED_TEXT_MAX = 32 * 1024  # texts up to this size have their counts remembered (a shared system prompt)

TOKENIZER_NOTE = "exact: Qwen tokenizer from the dashscope package (chat template included; media approximated)"

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002ffff"
_CHAR_CLASSES = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")

Encode = Callable[[str], list[int]]


@functools.lru_cache(maxsize=1)
def qwen_encoder() -> Encode | None:
    """The Qwen tokenizer's `encode` from the `dashscope` package, or None when it is missing.
    Loaded once (it takes a second or two); every Qwen model name maps to the same vocabulary."""
    try:
        from dashscope.tokenizers import get_tokenizer  # optional, offline

        encode: Encode = get_tokenizer("qwen-plus").encode
    except Exception:  # not installed, or broken: the callers fall back
        return None
    return encode


def available() -> bool:
    """Whether exact counts are possible (the `dashscope` package is installed)."""
    return qwen_encoder() is not None


def _qwen_count(text: str) -> int:
    encode = qwen_encoder()
    assert encode is not None
    return len(encode(text))


_qwen_count_cached = functools.lru_cache(maxsize=1024)(_qwen_count)


def _text_count(text: str) -> int:
    return _qwen_count_cached(text) if len(text) <= CACHED_TEXT_MAX else _qwen_count(text)


def text_bound(text: str) -> int:
    """Tokens one text can be billed as at most (see the module docstring)."""
    size = max(len(text.encode("utf-8")), len(unicodedata.normalize("NFC", text).encode("utf-8")))
    if qwen_encoder() is None:
        return size
    return min(size, max(_text_count(text), len(_CHAR_CLASSES.findall(text))))


def _parts(content: Any) -> Iterator[tuple[str, Any]]:
    """(kind, value) of each part of a message's content: text, image, video (a URL/file, or a
    list of frames), audio; for either dialect's content shapes."""
    items = [{"text": content}] if isinstance(content, str) else content if isinstance(content, list) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, kind in (("image", "image"), ("image_url", "image"), ("video", "video"), ("video_url", "video")):
            if key in item:
                yield kind, item[key]
                break
        else:
            if "audio" in item or "input_audio" in item:
                yield "audio", None
            elif isinstance(item.get("text"), str):
                yield "text", item["text"]


def count(messages: list[dict[str, Any]]) -> int | None:
    """The Qwen tokenizer's count of a conversation's input, or None without the tokenizer."""
    if qwen_encoder() is None:
        return None
    total = REPLY_TOKENS
    for message in messages:
        total += MESSAGE_TOKENS
        for kind, value in _parts(message.get("content")):
            if kind == "text":
                total += _text_count(value)
            else:
                total += MEDIA_ESTIMATE * (2 if kind == "video" else 1)
    return total


def count_over(messages: list[dict[str, Any]], limit: int) -> int | None:
    """The Qwen count of a conversation when it is over `limit`, else None (also without the
    tokenizer: then nothing is refused before the service sees it). Texts are only tokenized
    when their UTF-8 size says they might be over (the tokenizer is not even loaded before one
    is: loading it takes a second, which a run's first request would wait for)."""
    quick = REPLY_TOKENS
    for message in messages:
        quick += MESSAGE_TOKENS
        content = message.get("content")
        if isinstance(content, str):  # the usual case, without the walk over parts
            quick += len(content.encode("utf-8"))
            continue
        for kind, value in _parts(content):
            quick += len(value.encode("utf-8")) if kind == "text" else 2 * MEDIA_ESTIMATE
    if quick <= limit or qwen_encoder() is None:  # the tokenizer is loaded only when it is needed
        return None
    exact = count(messages)
    return exact if exact is not None and exact > limit else None


def bound(messages: list[dict[str, Any]], parameters: dict[str, Any]) -> int | None:
    """Input tokens the service cannot bill more of for this conversation and these parameters,
    or None when the input has no known bound (a whole video, audio)."""
    total = REPLY_TOKENS + INTERNAL_TOKENS
    for message in messages:
        total += MESSAGE_TOKENS
        for kind, value in _parts(message.get("content")):
            if kind == "text":
                total += text_bound(value)
            elif kind == "image":
                total += IMAGE_MAX_TOKENS
            elif kind == "video" and isinstance(value, list):
                total += IMAGE_MAX_TOKENS * len(value)
            else:
                return None
        rest = {k: v for k, v in message.items() if k not in ("role", "content")}
        if rest:  # tool calls, tool call ids, names: sent as text too
            total += text_bound(json.dumps(rest, ensure_ascii=False))
    extras = {k: parameters[k] for k in ("tools", "response_format") if parameters.get(k)}
    if extras:
        total += TOOLS_TEMPLATE_TOKENS + text_bound(json.dumps(extras, ensure_ascii=False))
    return total


def cached_prefix(messages: list[dict[str, Any]]) -> int | None:
    """The Qwen count of the prefix that the last explicit-cache marker closes (from the first
    message through the marked block), or None without a marker or the tokenizer."""
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].get("content")
        if not isinstance(content, list):
            continue
        for j in range(len(content) - 1, -1, -1):
            if isinstance(content[j], dict) and content[j].get("cache_control"):
                head = count([*messages[:i], {**messages[i], "content": content[: j + 1]}])
                return None if head is None else head - REPLY_TOKENS
    return None
