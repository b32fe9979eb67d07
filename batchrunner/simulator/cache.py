"""Context-cache bookkeeping: which prompt prefixes this simulator has already seen.

Implicit cache: a first message (usually the system prompt) of at least 256 tokens, seen
before for the same model, is a hit of its token count rounded down to a multiple of 64.
Explicit cache: content blocks marked `cache_control` cache the prefix up to the marker when
it is at least 1024 tokens; the first request creates it, later ones hit it. The two never
apply to the same request. Both sets are bounded (oldest prefixes are forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .answers import canonical_json, count_tokens

IMPLICIT_MIN_TOKENS = 256
IMPLICIT_BLOCK = 64
EXPLICIT_MIN_TOKENS = 1024
MAX_PREFIXES = 4096


class _BoundedSet:
    """An insertion-ordered set that forgets its oldest member beyond `size` members."""

    __slots__ = ("size", "_items")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, None] = OrderedDict()

    def seen(self, item: Any) -> bool:
        """Whether `item` was added before; adds it (or refreshes it) either way."""
        items = self._items
        if item in items:
            items.move_to_end(item)
            return True
        items[item] = None
        if len(items) > self.size:
            items.popitem(last=False)
        return False

    def clear(self) -> None:
        self._items.clear()


def _markers(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(message index, block index) of every content block carrying `cache_control`."""
    found: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("cache_control"):
                    found.append((i, j))
    return found[-4:]  # only the last four markers count


def _prefix_tokens(messages: list[dict[str, Any]], counts: list[int], i: int, j: int) -> int:
    """Tokens from the start of the conversation through block j of message i."""
    before = sum(counts[:i]) + 4 * i
    blocks = messages[i]["content"][: j + 1]
    return before + 4 + sum(count_tokens(str(b.get("text", ""))) for b in blocks)


class PrefixCache:
    """The prefixes seen so far, per model, for the implicit and the explicit cache."""

    def __init__(self, size: int = MAX_PREFIXES) -> None:
        self._implicit = _BoundedSet(size)
        self._explicit = _BoundedSet(size)

    def clear(self) -> None:
        """Forget every prefix."""
        self._implicit.clear()
        self._explicit.clear()

    def details(
        self, model: str, messages: list[dict[str, Any]], counts: list[int], input_tokens: int
    ) -> dict[str, Any]:
        """The `prompt_tokens_details` of one request; records its prefixes as seen."""
        markers = _markers(messages)
        if markers:
            return self._explicit_details(model, messages, counts, markers, input_tokens)
        first = counts[0]
        if first < IMPLICIT_MIN_TOKENS:
            return {"cached_tokens": 0}
        content = messages[0].get("content")
        key = hash((model, content if isinstance(content, str) else canonical_json(content)))
        if self._implicit.seen(key):
            cached = min(first - first % IMPLICIT_BLOCK, input_tokens)
            return {"cached_tokens": cached}
        return {"cached_tokens": 0}

    def _explicit_details(
        self,
        model: str,
        messages: list[dict[str, Any]],
        counts: list[int],
        markers: list[tuple[int, int]],
        input_tokens: int,
    ) -> dict[str, Any]:
        hit = 0
        created = 0
        for n, (i, j) in enumerate(markers):
            tokens = _prefix_tokens(messages, counts, i, j)
            if tokens < EXPLICIT_MIN_TOKENS:
                continue
            prefix = messages[:i] + [{**messages[i], "content": messages[i]["content"][: j + 1]}]
            if self._explicit.seen((model, canonical_json(prefix))):
                hit = max(hit, tokens)
            elif n == len(markers) - 1:
                created = tokens
        if created:
            created = max(0, created - hit)
        hit = min(hit, input_tokens)
        details: dict[str, Any] = {"cached_tokens": hit}
        if created or hit:
            details["cache_creation_input_tokens"] = created
            details["cache_creation"] = {"ephemeral_5m_input_tokens": created}
            details["cache_type"] = "ephemeral"
        return details
