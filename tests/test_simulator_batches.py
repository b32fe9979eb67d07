"""The simulator's Files + Batches API over real loopback sockets, driven by the official
`openai` SDK; progress is moved by a controlled clock (no sleeps). Output is read with
wire/batch.py and compared with the chat/completions endpoint's answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import openai
import pytest

from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.wire import batch as wb


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


TIMING = SimulatorConfig(batch_validate_s=10.0, batch_line_s=1.0)  # validate 10 s, then a line a second
pytestmark = pytest.mark.sim(TIMING)


@pytest.fixture
def handle(clock: Clock, sim_config: SimulatorConfig) -> Iterator[ThreadHandle]:
    with serve_in_thread(dataclasses.replace(sim_config, clock=clock)) as h:
        yield h


@pytest.fixture
def client(handle: ThreadHandle) -> Iterator[openai.OpenAI]:
    # No keep-alive: every connection is closed by the client before the server stops.
    http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    with openai.OpenAI(base_url=handle.compat_base_url, api_key="sk-test", max_retries=0, http_client=http) as c:
        yield c


def body(i: int, model: str = "qwen-plus") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": f"Question number {i}?"}], "seed": 7}


def jsonl(n: int, bad: tuple[int, ...] = ()) -> bytes:
    lines = []
    for i in range(n):
        b = body(i)
        if i in bad:
            b["temperature"] = 9  # out of range: a 400 for this line only
        lines.append(wb.encode_line(f"row-{i}", b))
    return b"".join(lines)


def upload(client: openai.OpenAI, data: bytes) -> str:
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert f.id.startswith("file-batch-") and f.bytes == len(data) and f.purpose == "batch"
    return f.id


def results(client: openai.OpenAI, file_id: str | None) -> dict[str, wb.LineResult]:
    if file_id is None:
        return {}
    return {r.custom_id: r for r in wb.iter_result_lines(client.files.content(file_id).content)}


def test_happy_path_with_the_openai_sdk(client: openai.OpenAI, handle: ThreadHandle, clock: Clock) -> None:
    file_id = upload(client, jsonl(3, bad=(1,)))
    assert client.files.retrieve(file_id).filename == "in.jsonl"
    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"ds_name": "job-a:file-1", "ds_description": "test"},
    )
    assert created.id.startswith("batch_") and created.status == "validating"
    assert created.request_counts is not None and created.request_counts.total == 3
    assert created.metadata == {"ds_name": "job-a:file-1", "ds_description": "test"}

    clock.advance(11)  # validated, one line answered
    mid = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert mid.status == "in_progress" and not mid.terminal and mid.request_counts.completed == 1
    clock.advance(5)
    done = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert done.status == "completed" and done.terminal
    assert done.request_counts == wb.RequestCounts(3, 2, 1)
    assert done.output_file_id and done.error_file_id

    answered = results(client, done.output_file_id)
    failed = results(client, done.error_file_id)
    assert sorted(answered) == ["row-0", "row-2"] and list(failed) == ["row-1"]
    assert failed["row-1"].status_code == 400 and not failed["row-1"].resubmit
    online = client.chat.completions.create(**body(2))  # type: ignore[call-overload]
    line = answered["row-2"].completion
    assert line is not None
    assert line.first.content == online.choices[0].message.content
    assert line.usage.input_tokens == online.usage.prompt_tokens
    assert line.usage.output_tokens == online.usage.completion_tokens

    stats = handle.sim.stats()
    assert stats["batches_created"] == 1 and stats["lines_billed"] == 2
    assert stats["batch_output_tokens"] == sum(
        r.completion.usage.output_tokens for r in answered.values() if r.completion
    )

    client.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_list_filters_and_pages(client: openai.OpenAI, clock: Clock) -> None:
    first, second = upload(client, jsonl(1)), upload(client, jsonl(2))
    a = client.batches.create(input_file_id=first, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"ds_name": "store-x:job:1"})  # fmt: skip
    b = client.batches.create(input_file_id=second, endpoint="/v1/chat/completions", completion_window="48h",
                              metadata={"ds_name": "store-x:job:2"})  # fmt: skip
    clock.advance(11)  # a (1 line) completes, b (2 lines) is still running
    assert [x.id for x in client.batches.list(limit=10)] == [b.id, a.id]  # newest first, every page
    page = client.batches.list(limit=1)
    assert [x.id for x in page.data] == [b.id] and page.has_more
    assert [x.id for x in client.batches.list(limit=1, after=b.id).data] == [a.id]
    raw = client.batches.with_raw_response.list(extra_query={"ds_name": "job:1"}).http_response.json()
    assert [x["id"] for x in raw["data"]] == [a.id]
    query = wb.list_query(status=["completed", "cancelled"])
    raw = client.batches.with_raw_response.list(extra_query=query).http_response.json()
    assert [x["id"] for x in raw["data"]] == [a.id]
    raw = client.batches.with_raw_response.list(extra_query={"input_file_ids": f"{second},zzz"}).http_response.json()
    assert [x["id"] for x in raw["data"]] == [b.id]
    raw = client.batches.with_raw_response.list(extra_query={"ds_name": "nothing"}).http_response.json()
    assert raw["data"] == [] and raw["has_more"] is False


def test_cancel_keeps_partial_output(client: openai.OpenAI, handle: ThreadHandle, clock: Clock) -> None:
    file_id = upload(client, jsonl(5))
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(12)  # two lines answered
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling"
    clock.advance(100)  # nothing more is answered once cancelled
    b = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert b.status == "cancelled" and b.request_counts == wb.RequestCounts(5, 2, 3)
    assert sorted(results(client, b.output_file_id)) == ["row-0", "row-1"]
    missing = results(client, b.error_file_id)
    assert sorted(missing) == ["row-2", "row-3", "row-4"]
    assert all(r.code == "batch_cancelled" and r.resubmit and r.status_code is None for r in missing.values())
    assert handle.sim.stats()["lines_billed"] == 2


@pytest.mark.sim(TIMING, batch_none_id="")
def test_cancel_before_any_line_has_only_an_error_file(client: openai.OpenAI) -> None:
    file_id = upload(client, jsonl(2))
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.cancel(created.id)
    raw = client.batches.with_raw_response.retrieve(created.id).http_response.json()
    assert raw["status"] == "cancelled" and raw["output_file_id"] == "" and raw["error_file_id"]
    b = wb.parse_batch(raw)
    assert b.output_file_id is None and b.result_files == (b.error_file_id,)


def test_a_batch_done_inside_its_window_completes(client: openai.OpenAI, clock: Clock) -> None:
    file_id = upload(client, jsonl(3))
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(10 + 24 * 3600)
    b = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert b.status == "completed"  # one line a second finishes well inside 24h
    assert b.request_counts == wb.RequestCounts(3, 3, 0) and b.error_file_id is None


@pytest.mark.sim(TIMING, batch_line_s=40_000.0)
def test_expired_batch(client: openai.OpenAI, clock: Clock) -> None:
    file_id = upload(client, jsonl(3))
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(10 + 24 * 3600)  # 86,400 s: two lines answered, then the window ends
    b = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert b.status == "expired" and b.request_counts == wb.RequestCounts(3, 2, 1)
    assert sorted(results(client, b.output_file_id)) == ["row-0", "row-1"]
    assert [(r.code, r.resubmit) for r in results(client, b.error_file_id).values()] == [("batch_expired", True)]


def test_all_lines_failing_completes_with_only_an_error_file(client: openai.OpenAI, clock: Clock) -> None:
    file_id = upload(client, jsonl(2, bad=(0, 1)))
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(20)
    b = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert b.status == "completed" and b.output_file_id is None and b.error_file_id is not None


def test_validation_failure_names_the_lines(client: openai.OpenAI, clock: Clock) -> None:
    data = jsonl(2) + wb.encode_line("row-0", body(9)) + wb.encode_line("x", body(1, "qwen-max"), url="/v1/chat/x")
    created = client.batches.create(
        input_file_id=upload(client, data), endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.advance(10)
    b = wb.parse_batch(client.batches.retrieve(created.id).model_dump())
    assert b.status == "failed" and b.result_files == ()
    assert [(e.code, e.line) for e in b.errors] == [
        ("duplicate_custom_id", 3),
        ("url_not_found", 4),
        ("mismatched_model", 4),
    ]


def test_bad_requests_are_refused(client: openai.OpenAI) -> None:
    file_id = upload(client, jsonl(1))
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", b"{}"), purpose="assistants")
    http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="nokey", max_retries=0, http_client=http)
    with bad, pytest.raises(openai.AuthenticationError):
        bad.batches.list()
