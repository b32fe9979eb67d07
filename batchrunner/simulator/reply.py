"""The answer to a valid call: generated text, token usage and the JSON body around them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import logprobs, media, tools
from .answers import answer_material, count_message_tokens, count_tokens, generate, text_of
from .validate import Call


@dataclass(slots=True)
class Answer:
    """What the simulator generated for one call, before it is shaped into a body.

    choices: (content, output_tokens, finish_reason) per requested choice (n).
    reasoning: thinking text when enable_thinking is on, with its token count.
    counts: text tokens per input message; input_tokens adds the per-message overhead and
    the image and video tokens. tool_calls: the calls of choice 0 (its content is then "").
    logprobs: the logprobs `content` list per choice, when asked for.
    image_hw: [height, width] per image, when vl_enable_image_hw_output is on.
    """

    choices: list[tuple[str, int, str]]
    reasoning: str | None
    reasoning_tokens: int
    counts: list[int]
    input_tokens: int
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[list[dict[str, Any]]] | None = None
    image_tokens: int = 0
    video_tokens: int = 0
    image_hw: list[list[int]] | None = None

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
    tool_calls = None
    if call.call_tools:
        tool_calls, arguments = tools.build_calls(call.call_tools, material, generate(material, None)[0])
        choices.append(("", count_tokens(arguments), "tool_calls"))
    for i in range(len(choices), call.n):
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
    answer = Answer(choices, reasoning, reasoning_tokens, counts, sum(counts) + 4 * len(counts) + 3, tool_calls)
    if call.logprobs:
        answer.logprobs = [logprobs.entries(c[0], material, i, call.top_logprobs) for i, c in enumerate(choices)]
    found = call.media
    if found is not None and (found.images or found.video_tokens):
        answer.image_tokens = media.image_tokens(found, call.high_res)
        answer.video_tokens = found.video_tokens
        answer.input_tokens += answer.image_tokens + answer.video_tokens
        if call.image_hw:
            answer.image_hw = media.image_hw(found)
    return answer


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
        image, video = answer.image_tokens, answer.video_tokens
        body["image_tokens"] = image
        body["video_tokens"] = video
        body["input_tokens_details"] = {
            "text_tokens": answer.input_tokens - image - video,
            "image_tokens": image,
            "video_tokens": video,
        }
    return body


def message(
    call: Call, content: str, reasoning: str | None, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An assistant message; content is [{"text": ...}] on the multimodal endpoint. With
    tool calls the content is empty: "" on the text endpoint, [] on the multimodal one."""
    if tool_calls is not None:
        msg: dict[str, Any] = {"role": "assistant", "content": [] if call.multimodal else ""}
        msg["tool_calls"] = tool_calls
    else:
        msg = {"role": "assistant", "content": [{"text": content}] if call.multimodal else content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def logprobs_of(content: list[dict[str, Any]]) -> dict[str, Any]:
    """The `logprobs` object of a choice around its token entries."""
    return {"content": content}


def body(call: Call, answer: Answer, details: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The complete 200 body of a non-streaming call, in the call's result_format."""
    lps = answer.logprobs
    if call.result_format == "text":
        text, _, finish = answer.choices[0]
        output: dict[str, Any] = {"finish_reason": finish, "text": text}
        if lps is not None:
            output["logprobs"] = logprobs_of(lps[0])
    else:
        choices = []
        for i, (text, _, finish) in enumerate(answer.choices):
            calls = answer.tool_calls if i == 0 else None
            choice = {"finish_reason": finish, "message": message(call, text, answer.reasoning, calls)}
            if lps is not None:
                choice["logprobs"] = logprobs_of(lps[i])
            choices.append(choice)
        output = {"choices": choices}
    if answer.image_hw is not None:
        output["image_hw"] = answer.image_hw
    return {
        "output": output,
        "usage": usage(call, answer, details, answer.output_tokens),
        "request_id": request_id,
    }
