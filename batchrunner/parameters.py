"""`[parameters]`: every DashScope generation parameter, with its range and the documented
combinations, checked before anything is sent.

Keys the reference does not list are refused (with the nearest known key suggested) unless
they are written under `[parameters.extra]`, which is passed through to the service untouched.
`stream` is not a body field: it selects SSE (the X-DashScope-SSE header) in the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

SEED_MAX = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedColumn(_Strict):
    """`seed = { column = "name" }`: each row's seed is read from that column."""

    column: Annotated[str, Field(min_length=1)]


def _seed(value: Any) -> int | str | SeedColumn | None:
    """One clear message for the three forms a seed may take."""
    if value is None:
        return None
    if value == "per-row":
        return "per-row"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX:
        return value
    if isinstance(value, dict) and set(value) == {"column"} and isinstance(value["column"], str) and value["column"]:
        return SeedColumn(column=value["column"])
    msg = f'must be an integer 0..{SEED_MAX}, "per-row", or {{ column = "name" }}'
    raise ValueError(msg)


SeedSpec = Annotated[Any, BeforeValidator(_seed)]


class FunctionSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ToolChoiceFunction(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class JsonSchema(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "output"
    description: str | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            msg = 'type "json_schema" needs a json_schema = { name = "...", schema = { ... } }'
            raise ValueError(msg)
        if self.type != "json_schema" and self.json_schema is not None:
            msg = f'json_schema is only used with type "json_schema", not {self.type!r}'
            raise ValueError(msg)
        return self


class Parameters(_Strict):
    """DashScope generation parameters (see the reference for what each does)."""

    temperature: Annotated[float, Field(ge=0, lt=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    seed: SeedSpec = None
    stop: str | list[str] | list[int] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    result_format: Literal["message", "text"] = "message"
    enable_thinking: bool | None = None
    thinking_budget: Annotated[int, Field(gt=0)] | None = None
    enable_code_interpreter: bool | None = None
    enable_search: bool | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: Literal["auto", "none"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    n: Annotated[int, Field(ge=1, le=4)] | None = None
    vl_high_resolution_images: bool | None = None
    vl_enable_image_hw_output: bool | None = None
    stream: bool = False
    incremental_output: bool | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _combinations(self) -> Parameters:
        problems = _combination_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def json_mode(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"

    def wire(self) -> dict[str, Any]:
        """The parameters sent on every request: the keys set, plus result_format and extras.

        The seed is left out: it may differ per row, and `source` adds it.
        """
        left_out = {"seed", "stream", "extra"}
        if not self.stream:
            # incremental_output only shapes a stream: the service accepts it on a plain call
            # and ignores it there, so it is accepted but not sent. The body, and so the request
            # key, is then the same as without it (adding or removing it does not re-send rows).
            left_out.add("incremental_output")
        body = self.model_dump(exclude_none=True, by_alias=True, exclude=left_out)
        return {**body, **self.extra}


_Rule = tuple[Callable[[Parameters, bool], bool], str]

# (broken, message): `broken(parameters, thinking)` is true when the combination is refused.
# The order is the order of the messages.
_RULES: tuple[_Rule, ...] = (
    (
        lambda p, thinking: thinking and p.result_format != "message",
        'enable_thinking = true needs result_format = "message"',
    ),
    (lambda p, thinking: bool(p.tools) and p.result_format != "message", 'tools need result_format = "message"'),
    (
        lambda p, thinking: _several(p) and thinking,
        "n > 1 is only available without thinking (enable_thinking = false)",
    ),
    (
        lambda p, thinking: _several(p) and bool(p.tools),
        "n > 1 cannot be combined with tools (the service fixes n at 1)",
    ),
    (
        lambda p, thinking: p.top_logprobs is not None and not p.logprobs,
        "top_logprobs only takes effect with logprobs = true",
    ),
    (
        lambda p, thinking: thinking and p.json_mode,
        "json_object / json_schema output is not supported with enable_thinking = true",
    ),
    (
        lambda p, thinking: p.thinking_budget is not None and not thinking,
        "thinking_budget needs enable_thinking = true",
    ),
    (
        lambda p, thinking: bool(p.enable_code_interpreter) and not thinking,
        "enable_code_interpreter works only in thinking mode (enable_thinking = true)",
    ),
    (
        lambda p, thinking: (p.tool_choice is not None or p.parallel_tool_calls is not None) and not p.tools,
        "tool_choice and parallel_tool_calls need tools",
    ),
)

# Checked after the tool_choice names (see `_tool_choice_problems`).
_STREAM_RULES: tuple[_Rule, ...] = (
    (
        lambda p, thinking: thinking and p.stream and p.incremental_output is False,
        "streaming with enable_thinking = true needs incremental_output = true",
    ),
)


def _several(p: Parameters) -> bool:
    return p.n is not None and p.n > 1


def _broken(rules: tuple[_Rule, ...], p: Parameters, thinking: bool) -> list[str]:
    return [message for broken, message in rules if broken(p, thinking)]


def _tool_choice_problems(p: Parameters, thinking: bool) -> list[str]:
    """A forced tool must be one of the tools, and cannot be forced in thinking mode."""
    if not isinstance(p.tool_choice, ToolChoice) or not p.tools:
        return []
    problems: list[str] = []
    names = [t.function.name for t in p.tools]
    if p.tool_choice.function.name not in names:
        problems.append(f"tool_choice names {p.tool_choice.function.name!r}, which is not in tools {names}")
    if thinking:
        problems.append("thinking mode cannot force a specific tool (tool_choice)")
    return problems


def _combination_problems(p: Parameters) -> list[str]:
    thinking = bool(p.enable_thinking)
    problems = _broken(_RULES, p, thinking)
    problems += _tool_choice_problems(p, thinking)
    problems += _broken(_STREAM_RULES, p, thinking)
    clash = sorted(set(p.extra) & set(Parameters.model_fields))
    if clash:
        problems.append(f"[parameters.extra] repeats known parameters {clash}; set them in [parameters]")
    return problems
