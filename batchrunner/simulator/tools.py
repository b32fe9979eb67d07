"""Function calling: validation of `parameters.tools` / `tool_choice` and deterministic calls.

Which tools get called (decided at validation time, stored as `Call.call_tools`):
    last message has role "tool" ........ none (answer with text, finish "stop")
    tool_choice "none" .................. none
    tool_choice {"type":"function","function":{"name":X}} .. X
    tool_choice "auto" or absent ........ tools[0], or every tool once in order when
                                          parallel_tool_calls is true and there are >= 2 tools
A call's arguments are a JSON object built from the tool's JSON-schema `properties` (only the
`required` ones when `required` is given): enum -> its first value, string -> a word of the
plain answer text, integer -> 0..100, number -> 0.00..99.99, boolean -> true, array -> [],
object -> {}. The bytes behind every choice come from SHAKE-256 of the answer material.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .catalogue import SimError

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NO_TOOL_MODELS = ("qwen-vl", "qvq")  # model-name prefixes that reject tools
_WORD = re.compile(r"\w+")

BAD_CHOICE = 'tool_choice must be "auto", "none" or {"type": "function", "function": {"name": "<tool name>"}}'


def _invalid(message: str) -> SimError:
    return SimError(400, "InvalidParameter", message)


def _check_tool(tool: Any, position: int) -> dict[str, Any]:
    """The `function` object of one well-formed tool entry."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _invalid(f'tools[{position}].type must be "function"')
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _invalid(f"tools[{position}].function must be an object with a name")
    name = function.get("name")
    if not isinstance(name, str) or TOOL_NAME.fullmatch(name) is None:
        raise _invalid(
            f"tools[{position}].function.name {name!r} is invalid: use 1 to 64 letters, digits, underscores or hyphens"
        )
    schema = function.get("parameters")
    if schema is not None and not isinstance(schema, dict):
        raise _invalid(f"tools[{position}].function.parameters must be a JSON Schema object")
    return function


def _forced(choice: Any, functions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function `tool_choice` forces, or None for "auto", "none" or no choice."""
    if not isinstance(choice, dict):
        if choice not in (None, "auto", "none"):
            raise _invalid(BAD_CHOICE)
        return None
    target = choice.get("function")
    name = target.get("name") if isinstance(target, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise _invalid(BAD_CHOICE)
    forced = next((f for f in functions if f["name"] == name), None)
    if forced is None:
        raise _invalid(f"tool_choice names the function {name!r}, which is not in tools")
    return forced


def check_tools(params: dict[str, Any], model: str, result_format: str, last_role: str) -> list[dict[str, Any]] | None:
    """Validate the tool parameters; the `function` objects to call, [] to answer with text,
    or None when the request has no tools."""
    tools = params.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise _invalid("tools must be a list of function tools")
    if model.lower().startswith(NO_TOOL_MODELS):
        raise _invalid(f"The model {model} does not support tools.")
    functions = [_check_tool(tool, i) for i, tool in enumerate(tools)]
    if result_format != "message":
        raise _invalid('The result_format parameter must be "message" when tools are used')
    parallel = params.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls must be a boolean")
    choice = params.get("tool_choice")
    forced = _forced(choice, functions)
    if last_role == "tool" or choice == "none":
        return []
    if forced is not None:
        return [forced]
    if parallel is True and len(functions) >= 2:
        return functions
    return functions[:1]


def _value(schema: Any, rand: bytes, words: list[str]) -> Any:
    """A deterministic value for one property schema; `rand` holds 3 random bytes."""
    if isinstance(schema, dict):
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
    else:
        kind = "string"
    if kind == "integer":
        return rand[0] % 101
    if kind == "number":
        return round(((rand[1] << 8) | rand[2]) % 10000 / 100, 2)
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    if kind == "null":
        return None
    return words[rand[0] % len(words)] if words else "value"


def arguments(function: dict[str, Any], rand: bytes, words: list[str]) -> dict[str, Any]:
    """The arguments object of one call of `function`; `rand` holds 3 bytes per property."""
    schema = function.get("parameters") or {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = [n for n in properties if n in required] if isinstance(required, list) else list(properties)
    return {name: _value(properties[name], rand[3 * k : 3 * k + 3], words) for k, name in enumerate(names)}


def build_calls(targets: list[dict[str, Any]], material: bytes, answer_text: str) -> tuple[list[dict[str, Any]], str]:
    """The `tool_calls` list for `targets`, and the concatenated arguments text (for counting).

    Call i has id "call_" + 16 hex digits of SHAKE-256(material + "|tool:i")."""
    words = _WORD.findall(answer_text)
    calls: list[dict[str, Any]] = []
    texts: list[str] = []
    for i, function in enumerate(targets):
        properties = (function.get("parameters") or {}).get("properties")
        width = 8 + 3 * (len(properties) if isinstance(properties, dict) else 0)
        rand = hashlib.shake_256(material + b"|tool:%d" % i).digest(width)
        text = json.dumps(arguments(function, rand[8:], words), ensure_ascii=False)
        texts.append(text)
        calls.append(
            {
                "index": i,
                "id": "call_" + rand[:8].hex(),
                "type": "function",
                "function": {"name": function["name"], "arguments": text},
            }
        )
    return calls, " ".join(texts)
