"""Deterministic token log-probabilities for `parameters.logprobs`.

One entry per output token (the pieces of `answers.token_pieces`, whitespace attached, so the
tokens join back to the content):

    {"token": t, "bytes": list(t.encode()), "logprob": -0.0001..-2.0,
     "top_logprobs": [{"token", "bytes", "logprob"}, ...]}   # `top` entries, the first is t

Alternatives are vocabulary words carrying the chosen token's leading whitespace, each at
least 0.05 below the one before. Values are 4-decimal floats from SHAKE-256 of the answer
material and the choice index, so the same request always gets the same numbers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .answers import VOCABULARY, token_pieces

TOP_MAX = 5
TOP_RANGE = f"top_logprobs must be an integer in [0, {TOP_MAX}]"


def entries(text: str, material: bytes, choice: int, top: int) -> list[dict[str, Any]]:
    """The logprobs `content` list of one choice's `text`; `top` alternatives per token (0..5)."""
    tokens = token_pieces(text) if text else []
    if not tokens:
        return []
    width = 2 + 2 * max(top - 1, 0)
    rand = hashlib.shake_256(material + b"|logprobs:%d" % choice).digest(width * len(tokens))
    vocab, size = VOCABULARY, len(VOCABULARY)
    out: list[dict[str, Any]] = []
    for i, token in enumerate(tokens):
        b = rand[width * i : width * (i + 1)]
        logprob = -round((((b[0] << 8) | b[1]) % 20000 + 1) / 10000, 4)
        raw = list(token.encode())
        tops: list[dict[str, Any]] = []
        if top:
            tops.append({"token": token, "bytes": raw, "logprob": logprob})
            lead = token[: len(token) - len(token.lstrip())]
            seen = {token}
            value = logprob
            for j in range(1, top):
                pick = b[2 * j]
                alt = lead + vocab[pick % size]
                while alt in seen:
                    pick += 1
                    alt = lead + vocab[pick % size]
                seen.add(alt)
                value = round(value - 0.05 - b[2 * j + 1] / 1000, 4)
                tops.append({"token": alt, "bytes": list(alt.encode()), "logprob": value})
        out.append({"token": token, "bytes": raw, "logprob": logprob, "top_logprobs": tops})
    return out
