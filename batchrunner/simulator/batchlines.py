"""One batch's lines: checking an input file when its batch validates, and answering a line.

A chat line is answered exactly as POST /compatible-mode/v1/chat/completions answers the same
body, unless a scripted FaultRule matches its last user message: then the line gets the
rule's outcome as its status and an OpenAI-shaped error body (transport kinds become 500).
A `batch-test-model` line (endpoint /v1/chat/ds-test) is not inferred at all: it always gets
the same short answer, which is never billed. Its files are limited to 1 MB and 100 lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from batchrunner.wire import batch as wb

from . import compat, reply
from .catalogue import SimError, error_for_status
from .config import Fault
from .validate import check_request

_NO_CACHE = {"cached_tokens": 0}  # the Batch API gives no cache discount

TEST_CONTENT = "This is a test result."
TEST_USAGE = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
TEST_MAX_BYTES = 1024 * 1024
TEST_MAX_LINES = 100
TEST_MAX_RUNNING = 2  # test batches not yet finished, per simulator
FILE_TOO_LARGE = "file_too_large"

# Asked once per line answered: (last user message, line body) -> the scripted Fault or None.
LineFaultPicker = Callable[[str, dict[str, Any]], Fault | None]


def parse_lines(data: bytes, endpoint: str) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """The lines of an input file and the validation errors that fail the batch (1-based lines)."""
    lines: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def fail(code: str, message: str, param: str | None, line: int) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": line})

    test = endpoint == wb.TEST_ENDPOINT
    most = TEST_MAX_LINES if test else wb.MAX_LINES
    raw_lines = [raw for raw in data.split(b"\n") if raw.strip()]
    if test and len(data) > TEST_MAX_BYTES:
        fail(FILE_TOO_LARGE, f"A {wb.TEST_MODEL} file is at most {TEST_MAX_BYTES} bytes.", None, 1)
    if len(raw_lines) > most:
        fail(wb.TOO_MANY_LINES, f"The file has more than {most} requests.", None, most + 1)
    for n, raw in enumerate(raw_lines[:most], start=1):
        if len(raw) > wb.MAX_LINE_BYTES:
            fail(wb.LINE_TOO_LARGE, f"The line is larger than {wb.MAX_LINE_BYTES} bytes.", None, n)
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("body"), dict):
            fail(wb.INVALID_LINE, "The line is not a JSON object with a body.", None, n)
            continue
        custom_id, url, body = str(obj.get("custom_id")), obj.get("url"), obj["body"]
        if url != endpoint:
            fail(wb.URL_NOT_FOUND, f"The provided url '{url}' is not supported by the Batch API.", "url", n)
        if custom_id in seen:
            fail(wb.DUPLICATE_CUSTOM_ID, f"The custom_id '{custom_id}' is duplicated.", "custom_id", n)
        seen.add(custom_id)
        models.add(str(body.get("model")))
        if len(models) > 1:
            fail(wb.MISMATCHED_MODEL, "All requests in a file must use the same model.", "body.model", n)
            models = {str(body.get("model"))}
        lines.append((custom_id, body))
    return lines, errors


def line_key(body: dict[str, Any]) -> str:
    """What makes two lines the same request, for counting a FaultRule's arrivals."""
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def test_answer(body: dict[str, Any], request_id: str, created: int) -> dict[str, Any]:
    """The fixed chat.completion every batch-test-model line gets."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": str(body.get("model") or wb.TEST_MODEL),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEST_CONTENT}, "finish_reason": "stop"}],
        "usage": dict(TEST_USAGE),
    }


def answer_line(
    body: dict[str, Any],
    request_id: str,
    created: int,
    max_output: int,
    pick_fault: LineFaultPicker | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, chat.completion or error body) of one chat line. `pick_fault(prompt, body)`
    returns the scripted Fault for this arrival of the line, or None to answer it."""
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    try:
        native, path, _, options = compat.to_native(body, created)
        call = check_request(path, native, False, max_output)
        fault = pick_fault(call.prompt, body) if pick_fault is not None else None
        answer = reply.compose(call) if fault is None else None
    except SimError as err:
        return err.status, compat.error(err, request_id)
    if answer is None:  # a scripted failure: its error, or a 500 for a transport kind
        scripted = fault.error if fault is not None and fault.error is not None else error_for_status(500)
        return scripted.status, compat.error(scripted, request_id)
    return 200, compat.body(call, answer, dict(_NO_CACHE), request_id, options)
