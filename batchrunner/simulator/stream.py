"""Server-sent-event answers (header `X-DashScope-SSE: enable`), framed like the service.

Each frame is `id:N`, `event:result`, the comment `:HTTP_STATUS/200` and one `data:` line,
with no space after the colons and no closing sentinel. Thinking text streams first. With
incremental_output each frame carries only new text, else the text so far; `finish_reason`
is the string "null" until the last frame; usage is cumulative in every frame.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import reply
from .answers import pieces
from .reply import Answer
from .validate import Call

TOKENS_PER_FRAME = 4


def frames(call: Call, answer: Answer, details: dict[str, Any], request_id: str) -> list[bytes]:
    """Every SSE frame of one streamed answer (first choice only), encoded."""
    content, _, finish = answer.choices[0]
    steps: list[tuple[str, str, int]] = []  # (field, new text, new tokens)
    if answer.reasoning is not None:
        steps += [("reasoning", p, n) for p, n in pieces(answer.reasoning, TOKENS_PER_FRAME)]
    steps += [("content", p, n) for p, n in pieces(content, TOKENS_PER_FRAME)]
    sent = {"reasoning": "", "content": ""}
    produced = 0
    out: list[bytes] = []
    for index, (where, new, tokens) in enumerate(steps, start=1):
        produced += tokens
        sent[where] += new
        last = index == len(steps)
        shown = {k: (new if k == where else "") for k in sent} if call.incremental else sent
        reason = finish if last else "null"
        if call.result_format == "text":
            output: dict[str, Any] = {"finish_reason": reason, "text": shown["content"]}
        else:
            thinking = shown["reasoning"] if answer.reasoning is not None else None
            msg = reply.message(call, shown["content"], thinking)
            output = {"choices": [{"finish_reason": reason, "message": msg}]}
        payload = {
            "output": output,
            "usage": reply.usage(call, answer, details, produced),
            "request_id": request_id,
        }
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        out.append(f"id:{index}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n".encode())
    return out


async def send(
    request: web.Request,
    call: Call,
    answer: Answer,
    details: dict[str, Any],
    request_id: str,
    malformed: bool = False,
) -> web.StreamResponse:
    """Write the streamed answer; `malformed` cuts the last frame's JSON short."""
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream;charset=UTF-8", "x-request-id": request_id},
    )
    await response.prepare(request)
    chunks = frames(call, answer, details, request_id)
    if malformed:
        chunks[-1] = chunks[-1][: len(chunks[-1]) // 2]
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
