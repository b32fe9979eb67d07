"""The answer to a valid call: generated text, token usage and the JSON body around them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .answers import answer_material, count_message_tokens, count_tokens, generate, text_of
from .validate import Call


@dataclass(slots=True)
class Answer:
    """What the simulator generated for one call, before it is shaped into a body.

    choices: (content, output_tokens, finish_reason) per requested choice (n).
    reasoning: thinking text when enable_thinking is on, with its token count.
    counts: text tokens per input message; input_tokens adds the per-message overhead.
    """

    choices: list[tuple[str, int, str]]
    reasoning: str | None
    reasoning_tokens: int
    counts: list[int]
    input_tokens: int

    @property
    def output_tokens(self) -> int:
        return sum(c[1] for c in self.choices) + self.reasoning_tokens


def _apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def compose(call: Call) -> Answer:
    """Generate the answer to `call`; choice 0 is exactly `answer_for(...)` unless the call
    asks for JSON output (then it is wrapped as {"answer": text}) or hits a stop string."""
    counts = [count_message_tokens(text_of(m.get("content"))) for m in call.messages]
    material = answer_material(call.model, call.messages, call.seed)
    choices: list[tuple[str, int, str]] = []
    for i in range(call.n):
        seedling = material if i == 0 else material + b"|choice:%d" % i
        text, tokens, finish = generate(seedling, call.max_tokens)
        if call.stop:
            text, stopped = _apply_stop(text, call.stop)
            if stopped:
                tokens, finish = count_tokens(text), "stop"
        if call.json_mode:
            text = json.dumps({"answer": text}, ensure_ascii=False)
            tokens = count_tokens(text)
        choices.append((text, tokens, finish))
    reasoning, reasoning_tokens = None, 0
    if call.thinking:
        reasoning, reasoning_tokens, _ = generate(material + b"|thinking", call.thinking_budget)
    return Answer(choices, reasoning, reasoning_tokens, counts, sum(counts) + 4 * len(counts) + 3)


def usage(call: Call, answer: Answer, details: dict[str, Any], output_tokens: int) -> dict[str, Any]:
    """The `usage` object; `output_tokens` may be a partial count while streaming."""
    body: dict[str, Any] = {
        "input_tokens": answer.input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": answer.input_tokens + output_tokens,
        "prompt_tokens_details": details,
    }
    if answer.reasoning is not None:
        body["output_tokens_details"] = {"reasoning_tokens": answer.reasoning_tokens}
    if call.multimodal:
        body["image_tokens"] = 0
        body["video_tokens"] = 0
        body["input_tokens_details"] = {"text_tokens": answer.input_tokens, "image_tokens": 0}
    return body


def message(call: Call, content: str, reasoning: str | None) -> dict[str, Any]:
    """An assistant message; content is [{"text": ...}] on the multimodal endpoint."""
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": [{"text": content}] if call.multimodal else content,
    }
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def body(call: Call, answer: Answer, details: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The complete 200 body of a non-streaming call, in the call's result_format."""
    if call.result_format == "text":
        text, _, finish = answer.choices[0]
        output: dict[str, Any] = {"finish_reason": finish, "text": text}
    else:
        output = {
            "choices": [
                {"finish_reason": finish, "message": message(call, text, answer.reasoning)}
                for text, _, finish in answer.choices
            ]
        }
    return {
        "output": output,
        "usage": usage(call, answer, details, answer.output_tokens),
        "request_id": request_id,
    }
