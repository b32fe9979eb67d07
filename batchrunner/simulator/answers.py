"""Deterministic answers and the simulator's tokenizer: pure functions, no state.

An answer depends only on (model, messages, seed): a PRNG seeded from the sha256 of their
canonical JSON picks 8 to 60 words from a fixed vocabulary and groups them into sentences.
Token counts use `count_tokens`, a cheap stand-in for the real BPE tokenizer: one token per
CJK character, one per run of other word characters, one per punctuation character.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002ffff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")

# Plain words, each a single token; answers are sentences made of them.
_WORDS = """
    the a an this that every each some many few most our your their its
    model answer question result value table row column batch request record token cloud
    service system process method report summary example reason detail idea pattern signal
    number list field price cost budget limit window second minute hour day week plan task
    job queue worker store cache prefix message prompt reply text sentence word paragraph
    river mountain garden city market harbor bridge forest valley island village station
    data sample test check note draft version change update step stage level point part
    is are was were has have gives takes keeps shows finds makes reads writes sends holds
    returns counts checks builds runs moves grows turns starts ends joins splits follows
    quickly slowly clearly simply often rarely always never usually carefully gently
    and but or so then also still only even just again later soon here there
    of in on at by for with from into over under about after before between through
    good clear simple small large early late short long quiet bright steady careful useful
    new old first last next same other whole open final main common stable exact
    """
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())

CACHED_TEXT_MAX = 32 * 1024  # longer texts are counted afresh each time
_JSON_DEFAULTS: dict[str, Any] = {"sort_keys": True, "separators": (",", ":")}


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys and compact separators (the simulator's hash input)."""
    return json.dumps(value, **_JSON_DEFAULTS)


def request_key(model: Any, input_: Any, parameters: Any) -> str:
    """sha256 hex of the canonical JSON of a body's model, input and parameters."""
    blob = canonical_json({"model": model, "input": input_, "parameters": parameters})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def count_tokens(text: str) -> int:
    """The simulator's token count of `text` (deterministic; not the real BPE count)."""
    return len(_TOKEN.findall(text))


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


@lru_cache(maxsize=512)
def _count_cached(text: str) -> int:
    return len(_TOKEN.findall(text))


def count_message_tokens(text: str) -> int:
    """`count_tokens` for message texts, remembering recent short-enough texts (a system
    prompt shared by every row is counted once)."""
    if len(text) > CACHED_TEXT_MAX:
        return len(_TOKEN.findall(text))
    return _count_cached(text)


def input_tokens(messages: list[dict[str, Any]]) -> int:
    """Input tokens of a conversation: text tokens + 4 per message + 3 for the reply prefix."""
    total = 3 + 4 * len(messages)
    for message in messages:
        total += count_message_tokens(text_of(message.get("content")))
    return total


def truncate(text: str, max_tokens: int) -> str:
    """`text` cut after its first `max_tokens` tokens."""
    end = 0
    for i, match in enumerate(_TOKEN.finditer(text)):
        if i == max_tokens:
            break
        end = match.end()
    return text[:end]


def generate(material: bytes, max_tokens: int | None) -> tuple[str, int, str]:
    """Plain sentences chosen by a PRNG seeded from sha256(material).

    The PRNG is SHAKE-256 keyed by the digest: its output bytes pick the word count (8 to 60),
    each word and each sentence length (5 to 12 words). Returns (text, tokens, finish_reason):
    "length" when cut at `max_tokens`, else "stop".
    """
    seed = hashlib.sha256(material).digest()
    stream = hashlib.shake_256(seed).digest(1 + 60 + 12)
    n_words = 8 + stream[0] % 53
    vocab, size = VOCABULARY, len(VOCABULARY)
    words = [vocab[b % size] for b in stream[1 : 1 + n_words]]
    lengths = stream[61:]
    sentences: list[str] = []
    i = 0
    k = 0
    while i < n_words:
        step = 5 + lengths[k] % 8
        k += 1
        chunk = words[i : i + step]
        i += step
        chunk[0] = chunk[0].capitalize()
        sentences.append(" ".join(chunk) + ".")
    text = " ".join(sentences)
    tokens = n_words + len(sentences)  # every word and every full stop is one token
    if max_tokens is not None and tokens > max_tokens:
        return truncate(text, max_tokens), max_tokens, "length"
    return text, tokens, "stop"


def answer_material(model: str, messages: list[dict[str, Any]], seed: int | None) -> bytes:
    """The bytes an answer is derived from: canonical JSON of model, messages and seed."""
    return canonical_json({"model": model, "messages": messages, "seed": seed}).encode("utf-8")


def answer_for(
    model: str, messages: list[dict[str, Any]], seed: int | None, max_tokens: int | None
) -> tuple[str, int, str]:
    """The simulator's answer: (content, output_tokens, finish_reason).

    Same (model, messages, seed) -> same content; `max_tokens` cuts it ("length").
    """
    return generate(answer_material(model, messages, seed), max_tokens)


def token_pieces(text: str) -> list[str]:
    """The tokens of `text` as `count_tokens` counts them, each carrying the whitespace before
    it (trailing whitespace joins the last one), so that "".join(result) == text. A text with
    no tokens gives [] when empty, else a single whitespace piece."""
    out: list[str] = []
    start = 0
    for match in _TOKEN.finditer(text):
        end = match.end()
        out.append(text[start:end])
        start = end
    if start < len(text):
        if out:
            out[-1] += text[start:]
        else:
            out.append(text[start:])
    return out


def pieces(text: str, size: int) -> list[tuple[str, int]]:
    """`text` split after every `size` tokens: (piece, tokens in it); pieces join to `text`."""
    out: list[tuple[str, int]] = []
    start = 0
    count = 0
    for match in _TOKEN.finditer(text):
        count += 1
        if count == size:
            out.append((text[start : match.end()], count))
            start, count = match.end(), 0
    if count or start < len(text) or not out:
        out.append((text[start:], count))
    return out
