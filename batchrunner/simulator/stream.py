"""Server-sent-event answers (header `X-DashScope-SSE: enable`), framed like the service.

Each frame is `id:N`, `event:result`, the comment `:HTTP_STATUS/200` and one `data:` line,
with no space after the colons and no closing sentinel. Thinking text streams first. With
incremental_output each frame carries only new text, else the text so far; `finish_reason`
is the string "null" until a choice's last frame; usage is cumulative in every frame. With
n > 1 the choices stream one after the other. Tool calls, when the answer makes them, are in
the last frame's message (whole, in both modes), and `image_hw` in the last frame's output.
With logprobs, each frame's choice carries the token entries of its own text (incremental)
or of all that choice's content so far. `write` frames the events as the config says: a
blank line after each (the usual), or none ("compact"); CRLF, a byte-order mark, gzip.
"""

from __future__ import annotations

import codecs
import json
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import reply
from .answers import pieces
from .config import COMPACT, SimulatorConfig
from .reply import Answer
from .validate import Call

TOKENS_PER_FRAME = 4
REASONING = "reasoning"
CONTENT = "content"


@dataclass(slots=True)
class Step:
    """One streamed piece of one choice: the choice's index, which field grows (REASONING or
    CONTENT), the new text, its token count, the logprob entries of its tokens (None without
    logprobs), and whether it is the choice's last piece (which carries finish and tool calls)."""

    choice: int
    field: str
    text: str
    tokens: int
    logprobs: list[dict[str, Any]] | None
    last: bool = False


def plan(answer: Answer, count: int) -> list[Step]:
    """The steps of the first `count` choices, one choice after the other: reasoning pieces
    (choice 0 only; thinking implies n = 1), then content pieces; at least one per choice."""
    steps: list[Step] = []
    for i, (content, tokens_total, _) in enumerate(answer.choices[:count]):
        first = len(steps)
        if answer.reasoning is not None and i == 0:
            steps += [Step(0, REASONING, p, n, None) for p, n in pieces(answer.reasoning, TOKENS_PER_FRAME)]
        entries = answer.logprobs[i] if answer.logprobs is not None else None
        used = 0
        for text, tokens in pieces(content, TOKENS_PER_FRAME):
            lps = entries[used : used + tokens] if entries is not None else None
            used += tokens
            steps.append(Step(i, CONTENT, text, tokens, lps))
        steps[-1].last = True
        if i == 0 and answer.tool_calls is not None:  # the arguments' tokens arrive with the calls
            steps[-1].tokens = tokens_total
        if entries is not None:
            for step in steps[first:]:
                if step.logprobs is None:
                    step.logprobs = []
    return steps


def frames(call: Call, answer: Answer, details: dict[str, Any], request_id: str) -> list[bytes]:
    """Every SSE frame of one streamed answer, encoded. Choices stream one after the other
    (each frame holds one choice, with "index" when n > 1); result_format text streams
    choice 0 only."""
    count = 1 if call.result_format == "text" else len(answer.choices)
    steps = plan(answer, count)
    sent = {REASONING: "", CONTENT: ""}
    sent_lps: list[dict[str, Any]] = []
    produced = 0
    out: list[bytes] = []
    for index, step in enumerate(steps, start=1):
        produced += step.tokens
        sent[step.field] += step.text
        if call.incremental:
            shown = {k: (step.text if k == step.field else "") for k in sent}
            lps = step.logprobs
        else:
            shown = sent
            if step.logprobs:
                sent_lps = sent_lps + step.logprobs
            lps = sent_lps if step.logprobs is not None else None
        reason = answer.choices[step.choice][2] if step.last else "null"
        if call.result_format == "text":
            output: dict[str, Any] = {"finish_reason": reason, "text": shown[CONTENT]}
            if lps is not None:
                output["logprobs"] = reply.logprobs_of(lps)
        else:
            thinking = shown[REASONING] if answer.reasoning is not None else None
            calls = answer.tool_calls if step.last and step.choice == 0 else None
            choice: dict[str, Any] = {"finish_reason": reason}
            if count > 1:
                choice["index"] = step.choice
            choice["message"] = reply.message(call, shown[CONTENT], thinking, calls)
            if lps is not None:
                choice["logprobs"] = reply.logprobs_of(lps)
            output = {"choices": [choice]}
        if index == len(steps) and answer.image_hw is not None:
            output["image_hw"] = answer.image_hw
        payload = {
            "output": output,
            "usage": reply.usage(call, answer, details, produced),
            "request_id": request_id,
        }
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        out.append(f"id:{index}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n".encode())
        if step.last:  # the next choice starts from nothing
            sent = {REASONING: "", CONTENT: ""}
            sent_lps = []
    return out


def reframe(chunks: list[bytes], config: SimulatorConfig) -> list[bytes]:
    """The events as the config frames them: without the blank line after each event
    ("compact"), with CRLF line ends, after a byte-order mark. Event payloads are one-line
    JSON, so the only blank lines are the ones between events."""
    out = list(chunks)
    if config.sse_framing == COMPACT:
        out = [chunk.replace(b"\n\n", b"\n") for chunk in out]
    if config.sse_crlf:
        out = [chunk.replace(b"\n", b"\r\n") for chunk in out]
    if config.sse_bom and out:
        out[0] = codecs.BOM_UTF8 + out[0]
    return out


async def write(
    request: web.Request, chunks: list[bytes], request_id: str, config: SimulatorConfig, malformed: bool = False
) -> web.StreamResponse:
    """Send `chunks` as a text/event-stream answer, framed as `config` says; `malformed` cuts
    the last one's JSON short. Compressed streams are flushed event by event."""
    headers = {"Content-Type": "text/event-stream;charset=UTF-8", "x-request-id": request_id}
    gzip = zlib.compressobj(wbits=31) if config.sse_gzip else None  # wbits 31: the gzip container
    if gzip is not None:
        headers["Content-Encoding"] = "gzip"
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    if malformed:
        chunks[-1] = chunks[-1][: len(chunks[-1]) // 2]
    for chunk in reframe(chunks, config):
        await response.write(chunk if gzip is None else gzip.compress(chunk) + gzip.flush(zlib.Z_SYNC_FLUSH))
    if gzip is not None:
        await response.write(gzip.flush())
    await response.write_eof()
    return response
