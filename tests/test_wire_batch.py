"""wire/batch.py: the Batch API's lines, file and batch objects, result lines, limits, paths."""

from __future__ import annotations

import json

import pytest

from batchrunner.wire import MalformedResponse
from batchrunner.wire import batch as wb

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "qwen-flash",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
    "usage": {"prompt_tokens": 26, "completion_tokens": 49, "total_tokens": 75},
}


def test_input_line_wraps_a_chat_body_and_drops_streaming() -> None:
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "héllo"}], "stream": True}
    line = wb.input_line("7", body)
    assert line == {
        "custom_id": "7",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "qwen-plus", "messages": [{"role": "user", "content": "héllo"}]},
    }
    raw = wb.encode_line("7", body)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == line
    assert "héllo".encode() in raw  # UTF-8, not escaped


def test_a_line_over_6_mb_is_refused() -> None:
    big = {"model": "qwen-plus", "messages": [{"role": "user", "content": "x" * wb.MAX_LINE_BYTES}]}
    with pytest.raises(ValueError, match="at most"):
        wb.encode_line("1", big)


def test_limits_and_windows() -> None:
    assert (wb.MAX_LINES, wb.MAX_FILE_BYTES, wb.MAX_LINE_BYTES) == (50_000, 500 * 2**20, 6 * 2**20)
    assert wb.window_hours("24h") == 24 and wb.window_hours("336h") == 336
    for bad in ("23h", "337h", "1d", "", "24"):
        with pytest.raises(ValueError, match="completion_window"):
            wb.window_hours(bad)
    body = wb.create_body("file-batch-1", window="48h", ds_name="job-1")
    assert body == {
        "input_file_id": "file-batch-1",
        "endpoint": "/v1/chat/completions",
        "completion_window": "48h",
        "metadata": {"ds_name": "job-1"},
    }


def test_paths_and_list_query() -> None:
    assert wb.file_path("f") == "/files/f"
    assert wb.file_content_path("f") == "/files/f/content"
    assert wb.batch_path("b") == "/batches/b"
    assert wb.cancel_path("b") == "/batches/b/cancel"
    query = wb.list_query(limit=5, after="b1", ds_name="job", status=["completed", "cancelled"], input_file_ids=["a"])
    assert query == {
        "limit": "5",
        "after": "b1",
        "ds_name": "job",
        "status": "completed,cancelled",
        "input_file_ids": "a",
    }
    assert wb.list_query() == {}


def test_file_object() -> None:
    raw = {"id": "file-batch-1", "object": "file", "bytes": 7, "filename": "a.jsonl", "purpose": "batch",
           "status": "processed", "created_at": 1700000000}  # fmt: skip
    f = wb.parse_file(json.dumps(raw))
    assert f == wb.RemoteFile("file-batch-1", 7, "a.jsonl", "batch", "processed", 1700000000)
    with pytest.raises(MalformedResponse):
        wb.parse_file({"object": "file"})


def _batch(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-batch-1",
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "created_at": 1700000000,
        "in_progress_at": None,
        "metadata": {"ds_name": "job", "ds_description": None},
    }
    base.update(kw)
    return base


def test_batch_object_fresh() -> None:
    b = wb.parse_batch(_batch())
    assert b.status == "validating" and not b.terminal
    assert b.result_files == () and b.created_at == 1700000000
    assert b.timestamps == {"created_at": 1700000000}
    assert b.metadata == {"ds_name": "job"}
    assert b.completion_window == "24h" and b.input_file_id == "file-batch-1"


@pytest.mark.parametrize("status", wb.STATUSES)
def test_terminal_statuses(status: str) -> None:
    assert wb.parse_batch(_batch(status=status)).terminal == (status in ("completed", "failed", "expired", "cancelled"))


def test_unknown_status_or_no_id_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        wb.parse_batch(_batch(status="running"))
    with pytest.raises(MalformedResponse):
        wb.parse_batch(_batch(id=None))


def test_cancelled_batch_with_only_an_error_file() -> None:
    b = wb.parse_batch(
        _batch(
            status="cancelled",
            output_file_id=None,
            error_file_id="file-batch_output-9",
            request_counts={"total": 2, "completed": 0, "failed": 2},
            cancelling_at=1700000005,
            cancelled_at=1700000005,
        )
    )
    assert b.terminal and b.output_file_id is None
    assert b.result_files == ("file-batch_output-9",)
    assert b.request_counts == wb.RequestCounts(2, 0, 2)
    assert b.timestamps["cancelled_at"] == 1700000005


def test_empty_string_file_id_means_none() -> None:
    b = wb.parse_batch(_batch(status="completed", output_file_id="file-batch_output-1", error_file_id=""))
    assert b.error_file_id is None and b.result_files == ("file-batch_output-1",)


def test_completed_batch_whose_only_file_is_the_error_file() -> None:
    b = wb.parse_batch(_batch(status="completed", output_file_id="", error_file_id="file-batch_output-2"))
    assert b.terminal and b.output_file_id is None and b.result_files == ("file-batch_output-2",)


def test_failed_batch_errors_with_lines() -> None:
    errors = {"object": "list", "data": [
        {"code": "url_not_found", "message": "The provided url ...", "param": "url", "line": 1},
        {"code": "mismatched_model", "message": "m", "line": 3},
    ]}  # fmt: skip
    b = wb.parse_batch(_batch(status="failed", errors=errors))
    assert b.errors == (
        wb.BatchError("url_not_found", "The provided url ...", "url", 1),
        wb.BatchError("mismatched_model", "m", None, 3),
    )
    assert b.result_files == ()


def test_batch_list_with_null_data() -> None:
    assert wb.parse_batch_list({"object": "list", "data": None, "has_more": False}) == wb.BatchPage(())
    page = wb.parse_batch_list({"object": "list", "data": [_batch(), _batch(id="batch_2")], "has_more": True})
    assert [b.id for b in page.batches] == ["batch_1", "batch_2"]
    assert page.has_more and page.last_id == "batch_2"


def test_answered_line() -> None:
    line = {"id": "l1", "custom_id": "1", "error": None,
            "response": {"status_code": 200, "request_id": "r-1", "body": CHAT}}  # fmt: skip
    r = wb.parse_result_line(json.dumps(line).encode())
    assert r.ok and not r.resubmit and r.status_code == 200 and r.custom_id == "1"
    assert r.completion is not None
    assert r.completion.first.content == "Hi."
    assert (r.completion.usage.input_tokens, r.completion.usage.output_tokens) == (26, 49)
    assert r.request_id == "r-1"


def test_4xx_line_fails_and_is_not_resubmitted() -> None:
    body = {"error": {"message": "bad", "type": "invalid_request_error", "code": "invalid_request_error"}}
    line = wb.result_line("l2", "2", 400, body, "r-2")
    r = wb.parse_result_line(line)
    assert not r.ok and not r.resubmit
    assert (r.status_code, r.code, r.message) == (400, "invalid_request_error", "bad")


@pytest.mark.parametrize(
    ("status", "code"),
    [(None, "batch_expired"), (None, "batch_cancelled"), (429, "limit_requests"), (500, "internal_error")],
)
def test_lines_without_a_verdict_are_resubmitted(status: int | None, code: str) -> None:
    if status is None:
        line = wb.result_line("l3", "3", None, {"code": code, "message": "not run"})
        assert line["response"] is None
    else:
        line = wb.result_line("l3", "3", status, {"error": {"code": code, "message": "m"}})
    r = wb.parse_result_line(line)
    assert not r.ok and r.resubmit and r.code == code and r.status_code == status


def test_result_file_lines_and_malformed_lines() -> None:
    ok = {"id": "a", "custom_id": 5, "response": {"status_code": 200, "body": CHAT}, "error": None}
    content = (json.dumps(ok) + "\n\n" + json.dumps(wb.result_line("b", "6", None, {"code": "batch_expired"}))).encode()
    results = list(wb.iter_result_lines(content))
    assert [r.custom_id for r in results] == ["5", "6"]
    assert results[0].ok and results[1].resubmit
    with pytest.raises(MalformedResponse):
        wb.parse_result_line({"id": "x", "response": None})
    assert wb.parse_result_line({"custom_id": "7", "response": {"status_code": 200, "body": None}}).resubmit
