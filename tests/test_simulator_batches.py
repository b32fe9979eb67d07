"""The simulator's Files + Batches API over real loopback sockets, driven by the official
`openai` SDK; progress is moved by a controlled clock (no sleeps). Output is read with
wire/batch.py and compared with the chat/completions endpoint's answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import openai
import pytest
from helpers import Clock, invoke_cli

from batchrunner.simulator import FaultRule, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.wire import batch as wb


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


# ----------------------------------------------------------------- pacing, faults, test model


def create(client: openai.OpenAI, file_id: str, endpoint: str = "/v1/chat/completions") -> str:
    return client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h").id  # type: ignore[arg-type]


def status(client: openai.OpenAI, batch_id: str) -> wb.Batch:
    return wb.parse_batch(client.batches.retrieve(batch_id).model_dump())


@pytest.mark.sim(TIMING, batch_seconds=100.0, batch_validate_s=60.0)
def test_batch_seconds_sets_how_long_every_batch_takes(client: openai.OpenAI, clock: Clock) -> None:
    start = clock.now
    four, one = create(client, upload(client, jsonl(4))), create(client, upload(client, jsonl(1)))
    clock.now = start + 9.9  # validation takes min(60, 100 / 10) = 10 s
    assert status(client, four).status == "validating"
    clock.now = start + 10
    b = status(client, four)
    assert b.status == "in_progress" and b.request_counts.completed == 0
    assert b.timestamps["in_progress_at"] - b.timestamps["created_at"] == 10
    clock.now = start + 32.5  # the other 90 s are shared by the 4 lines: one every 22.5 s
    assert status(client, four).request_counts.completed == 1
    clock.now = start + 99.9
    assert status(client, four).request_counts.completed == 3
    assert status(client, one).status == "in_progress"  # one line takes the whole 90 s
    clock.now = start + 100
    assert [status(client, b).status for b in (four, one)] == ["completed", "completed"]
    assert status(client, four).request_counts == wb.RequestCounts(4, 4, 0)


@pytest.mark.sim(TIMING, batch_throttle_creates=1, batch_drop_creates=1)
def test_throttled_and_dropped_creates(client: openai.OpenAI, handle: ThreadHandle) -> None:
    file_id = upload(client, jsonl(1))
    with pytest.raises(openai.RateLimitError) as throttled:
        create(client, file_id)
    assert throttled.value.code == "limit_requests"
    assert client.batches.list().data == []  # a throttled create makes nothing
    with pytest.raises(openai.APIConnectionError):  # made, but the answer never came
        create(client, file_id)
    [made] = client.batches.list().data
    assert made.input_file_id == file_id
    assert create(client, file_id) != made.id  # the knobs are used up: answered normally
    stats = handle.sim.stats()
    assert (stats["creates_throttled"], stats["creates_dropped"], stats["batches_created"]) == (1, 1, 2)
    assert stats["batch_calls"]["create"] == 3


@pytest.mark.sim(TIMING, batch_download_503=True, batch_cut_downloads=1)
def test_download_faults(client: openai.OpenAI, handle: ThreadHandle) -> None:
    data = jsonl(30)
    first, second = upload(client, data), upload(client, data)
    with pytest.raises(openai.InternalServerError) as unavailable:  # each file's first download
        client.files.content(first)
    assert unavailable.value.status_code == 503
    with pytest.raises(openai.APIConnectionError):  # cut halfway, Content-Length unmet
        client.files.content(first)
    assert client.files.content(first).content == data
    with pytest.raises(openai.InternalServerError):
        client.files.content(second)
    assert client.files.content(second).content == data
    assert handle.sim.stats()["downloads_failed"] == 3


def line_with(i: int, text: str) -> bytes:
    return wb.encode_line(f"row-{i}", {"model": "qwen-plus", "messages": [{"role": "user", "content": text}]})


LINE_FAULTS = (
    FaultRule("poison", ("always:400",)),
    FaultRule("flaky", (503,)),
    FaultRule("dropme", ("drop",)),
    FaultRule("quota", ("Throttling.AllocationQuota",)),
)


@pytest.mark.sim(TIMING, batch_line_s=0.0, faults=LINE_FAULTS)
def test_scripted_line_faults_land_in_the_error_file(client: openai.OpenAI, handle: ThreadHandle, clock: Clock) -> None:
    texts = ["a plain question", "poison pill", "a flaky one", "dropme now", "quota please"]
    data = b"".join(line_with(i, t) for i, t in enumerate(texts))
    batch_id = create(client, upload(client, data))
    clock.advance(10)
    b = status(client, batch_id)
    assert b.status == "completed" and b.request_counts == wb.RequestCounts(5, 1, 4)
    assert list(results(client, b.output_file_id)) == ["row-0"]
    failed = results(client, b.error_file_id)
    assert {cid: (r.status_code, r.code, r.resubmit) for cid, r in failed.items()} == {
        "row-1": (400, "invalid_request_error", False),
        "row-2": (503, "internal_error", True),
        "row-3": (500, "internal_error", True),  # a transport kind is a 500 line
        "row-4": (429, "insufficient_quota", True),
    }
    assert handle.sim.stats()["lines_billed"] == 1

    again = create(client, upload(client, line_with(1, "poison pill") + line_with(2, "a flaky one")))
    clock.advance(10)  # second arrival of each body: "always:400" repeats, 503 was a one-off
    b = status(client, again)
    assert list(results(client, b.output_file_id)) == ["row-2"]
    assert [r.status_code for r in results(client, b.error_file_id).values()] == [400]
    assert handle.sim.stats()["lines_billed"] == 2


def model_test_lines(n: int, size: int = 0) -> bytes:
    lines = []
    for i in range(n):
        body = {"model": wb.TEST_MODEL, "messages": [{"role": "user", "content": f"q{i} " + "x" * size}]}
        lines.append(wb.encode_line(f"t-{i}", body, url=wb.TEST_ENDPOINT))
    return b"".join(lines)


def test_batch_test_model_answers_a_fixed_text_for_free(
    client: openai.OpenAI, handle: ThreadHandle, clock: Clock
) -> None:
    batch_id = create(client, upload(client, model_test_lines(3)), wb.TEST_ENDPOINT)
    clock.advance(20)
    b = status(client, batch_id)
    assert b.status == "completed" and b.error_file_id is None
    answered = results(client, b.output_file_id)
    assert sorted(answered) == ["t-0", "t-1", "t-2"]
    for line in answered.values():
        assert line.completion is not None and line.completion.first.content == "This is a test result."
        assert (line.completion.usage.input_tokens, line.completion.usage.output_tokens) == (10, 6)
    stats = handle.sim.stats()
    assert (stats["lines_billed"], stats["batch_input_tokens"], stats["batch_output_tokens"]) == (0, 0, 0)


def test_batch_test_model_limits(client: openai.OpenAI, handle: ThreadHandle, clock: Clock) -> None:
    small = upload(client, model_test_lines(2))
    first, second = create(client, small, wb.TEST_ENDPOINT), create(client, small, wb.TEST_ENDPOINT)
    with pytest.raises(openai.RateLimitError):  # two test batches are running already
        create(client, small, wb.TEST_ENDPOINT)
    create(client, upload(client, jsonl(1)))  # the limit is for test batches only
    clock.advance(20)
    assert [status(client, b).status for b in (first, second)] == ["completed", "completed"]
    too_many = create(client, upload(client, model_test_lines(101)), wb.TEST_ENDPOINT)
    too_big = create(client, upload(client, model_test_lines(3, size=400_000)), wb.TEST_ENDPOINT)
    clock.advance(20)
    assert [(e.code, e.line) for e in status(client, too_many).errors] == [("too_many_lines", 101)]
    assert [e.code for e in status(client, too_big).errors] == ["file_too_large"]
    assert handle.sim.stats()["creates_throttled"] == 1


@pytest.mark.parametrize(
    "fields",
    [{"batch_seconds": 0.0}, {"batch_drop_creates": -1}, {"batch_cut_downloads": -2}, {"batch_fail_gets": -1}],
)
def test_bad_batch_fault_fields_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**fields)  # type: ignore[arg-type]


def test_simulate_command_builds_the_batch_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchrunner.simulator

    served: list[SimulatorConfig] = []
    monkeypatch.setattr(batchrunner.simulator, "run_simulator", lambda config, **_: served.append(config))
    options = ["--batch-seconds", "30", "--batch-validate-s", "2", "--batch-line-s", "0.5", "--batch-drop-creates", "1"]
    options += ["--batch-throttle-creates", "2", "--batch-fail-gets", "3", "--batch-download-503"]
    result = invoke_cli("simulate", "--port", "0", *options, "--batch-cut-downloads", "4", "--batch-none-id", "")
    assert result.exit_code == 0, result.output
    [config] = served
    assert (config.batch_seconds, config.batch_validate_s, config.batch_line_s) == (30.0, 2.0, 0.5)
    assert (config.batch_drop_creates, config.batch_throttle_creates, config.batch_fail_gets) == (1, 2, 3)
    assert (config.batch_download_503, config.batch_cut_downloads, config.batch_none_id) == (True, 4, "")
    invoke_cli("simulate", "--port", "0")
    assert served[-1].batch_none_id is None and served[-1].batch_seconds is None and not served[-1].batch_download_503
