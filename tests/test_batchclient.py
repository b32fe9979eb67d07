"""BatchClient against the simulator's Batch API on 127.0.0.1: round trip, finding batches by
ds_name, the create that must never be sent twice, retries over injected faults. Batches are
moved by a hand-driven clock and every backoff wait goes to a recording `sleep`, so nothing
here waits on the wall clock."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import SimServer
from helpers import Clock

from batchrunner.batchclient import BatchCallFailed, BatchClient, BatchUnavailable, CreateUnknown
from batchrunner.simulator import Simulator, SimulatorConfig
from batchrunner.wire import batch as wb
from batchrunner.wire import compatible_root

KEY = "sk-batchclient-secret-7f3a9c"
BASE = SimulatorConfig(batch_validate_s=10.0, batch_line_s=1.0, valid_keys=frozenset({KEY}))
pytestmark = pytest.mark.sim(BASE)


class Sleeps:
    """An injected `sleep` that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def server(sim_config: SimulatorConfig, clock: Clock) -> AsyncIterator[SimServer]:
    sim = Simulator(dataclasses.replace(sim_config, clock=clock))
    async with sim.serve("127.0.0.1", 0) as base_url:
        yield SimServer(base_url, sim)


def make_client(
    root: str, sleeps: Sleeps, *, tries: int = 4, backoff_s: float = 1.0, backoff_max_s: float = 8.0
) -> BatchClient:
    return BatchClient(
        root, KEY, timeout_s=10.0, tries=tries, backoff_s=backoff_s, backoff_max_s=backoff_max_s, sleep=sleeps
    )


@pytest.fixture
async def client(server: SimServer, sleeps: Sleeps) -> AsyncIterator[BatchClient]:
    async with make_client(compatible_root(server.base_url), sleeps) as c:
        yield c


def input_file(folder: Path, n: int, name: str = "in.jsonl") -> Path:
    lines = []
    for i in range(n):
        body = {"model": "qwen-plus", "messages": [{"role": "user", "content": f"Tell me about item {i}."}], "seed": 3}
        lines.append(wb.encode_line(f"row-{i}", body))
    path = folder / name
    path.write_bytes(b"".join(lines))
    return path


async def new_batch(client: BatchClient, tmp_path: Path, ds_name: str, n: int = 2) -> wb.Batch:
    remote = await client.upload(input_file(tmp_path, n, f"{ds_name.replace(':', '_')}.jsonl"), "in.jsonl")
    return await client.create(remote.id, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={"ds_name": ds_name})


def calls(server: SimServer, route: str) -> int:
    return int(server.sim.stats()["batch_calls"].get(route, 0))


def no_part_files(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.iterdir())


async def test_round_trip(client: BatchClient, server: SimServer, clock: Clock, tmp_path: Path) -> None:
    source = input_file(tmp_path, 3)
    remote = await client.upload(source, "rows.jsonl")
    assert remote.id.startswith("file-batch-") and remote.bytes == source.stat().st_size
    assert remote.filename == "rows.jsonl" and remote.purpose == "batch"
    meta = {"ds_name": "job:file-1", "ds_description": "a test"}
    created = await client.create(remote.id, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata=meta)
    assert created.status == "validating" and created.metadata == meta and created.input_file_id == remote.id

    clock.advance(11)
    running = await client.get(created.id)
    assert running.status == "in_progress" and running.request_counts.completed == 1
    clock.advance(5)
    done = await client.get(created.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id is None

    dest = tmp_path / "out" / "output.jsonl"
    dest.parent.mkdir()
    size = await client.download(done.output_file_id, dest)
    assert size == dest.stat().st_size > 0
    lines = list(wb.iter_result_lines(dest.read_bytes()))
    assert [r.custom_id for r in lines] == ["row-0", "row-1", "row-2"] and all(r.ok for r in lines)
    assert no_part_files(dest.parent)

    copy = tmp_path / "input-again.jsonl"
    assert await client.download(remote.id, copy) == source.stat().st_size
    assert copy.read_bytes() == source.read_bytes()

    assert await client.delete_file(remote.id) is True
    assert await client.delete_file(remote.id) is False  # already gone
    with pytest.raises(BatchCallFailed) as missing:
        await client.get("batch_nope")
    assert missing.value.status == 404 and not missing.value.transient
    assert server.sim.stats()["batch_calls"]["get"] == 3  # a 404 is not tried again


async def test_cancel(client: BatchClient, clock: Clock, tmp_path: Path) -> None:
    batch = await new_batch(client, tmp_path, "job:cancel", n=4)
    clock.advance(11)
    assert (await client.cancel(batch.id)).status == "cancelling"
    again = await client.cancel(batch.id)  # idempotent: the second cancel finds it finished
    assert again.status == "cancelled" and again.request_counts == wb.RequestCounts(4, 1, 3)


async def test_find_matches_ds_name_exactly_across_pages(
    client: BatchClient, server: SimServer, tmp_path: Path
) -> None:
    ours = [await new_batch(client, tmp_path, "job:1") for _ in range(3)]
    for other in ("job:10", "xjob:1", "job:1:retry", "other"):  # the service's filter matches most of these
        await new_batch(client, tmp_path, other)
    client.page_size = 2
    found = await client.find("job:1")
    assert [b.id for b in found] == [b.id for b in reversed(ours)]  # newest first
    assert calls(server, "list") == 3  # six substring matches, two a page
    only = await client.find("job:1", input_file_id=ours[1].input_file_id)
    assert [b.id for b in only] == [ours[1].id]
    assert await client.find("job:") == []


@pytest.mark.sim(BASE, batch_drop_creates=1)
async def test_a_lost_create_answer_raises_create_unknown_and_is_never_resent(
    client: BatchClient, server: SimServer, sleeps: Sleeps, tmp_path: Path
) -> None:
    remote = await client.upload(input_file(tmp_path, 2), "in.jsonl")
    with pytest.raises(CreateUnknown) as lost:
        await client.create(remote.id, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={"ds_name": "job:lost"})
    assert lost.value.status is None and KEY not in str(lost.value)
    stats = server.sim.stats()
    assert (stats["batch_calls"]["create"], stats["creates_dropped"], stats["batches_created"]) == (1, 1, 1)
    assert sleeps.waits == []
    [adopted] = await client.find("job:lost", input_file_id=remote.id)  # the batch was made
    assert adopted.input_file_id == remote.id


@pytest.mark.sim(BASE, batch_throttle_creates=1)
async def test_a_throttled_create_is_a_transient_failure_that_made_nothing(
    client: BatchClient, server: SimServer, tmp_path: Path
) -> None:
    remote = await client.upload(input_file(tmp_path, 1), "in.jsonl")
    with pytest.raises(BatchCallFailed) as throttled:
        await client.create(remote.id, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={"ds_name": "job:t"})
    assert throttled.value.status == 429 and throttled.value.transient and throttled.value.code == "limit_requests"
    assert server.sim.stats()["batches_created"] == 0 and calls(server, "create") == 1
    assert await client.find("job:t") == []
    made = await client.create(remote.id, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={"ds_name": "job:t"})
    assert [b.id for b in await client.find("job:t")] == [made.id]


async def test_a_refused_create_was_never_sent(sleeps: Sleeps) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_client(f"http://127.0.0.1:{port}/v1", sleeps) as client:
        with pytest.raises(BatchUnavailable) as refused:
            await client.create("file-x", window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={})
        assert refused.value.status is None and sleeps.waits == []
        with pytest.raises(BatchUnavailable) as down:
            await client.get("batch_x")
        assert len(sleeps.waits) == client.tries - 1 and KEY not in str(down.value)


@pytest.mark.sim(BASE, batch_download_503=True)
async def test_a_503_download_is_tried_again(
    client: BatchClient, server: SimServer, sleeps: Sleeps, tmp_path: Path
) -> None:
    source = input_file(tmp_path, 40)
    remote = await client.upload(source, "in.jsonl")
    dest = tmp_path / "copy.jsonl"
    assert await client.download(remote.id, dest) == source.stat().st_size
    assert dest.read_bytes() == source.read_bytes()
    assert calls(server, "content") == 2 and server.sim.stats()["downloads_failed"] == 1
    assert len(sleeps.waits) == 1 and no_part_files(tmp_path)


@pytest.mark.sim(BASE, batch_cut_downloads=2)
async def test_a_cut_download_is_tried_again_and_whole(
    client: BatchClient, server: SimServer, sleeps: Sleeps, tmp_path: Path
) -> None:
    source = input_file(tmp_path, 200)
    remote = await client.upload(source, "in.jsonl")
    dest = tmp_path / "copy.jsonl"
    dest.write_bytes(b"stale")
    assert await client.download(remote.id, dest) == source.stat().st_size
    assert dest.read_bytes() == source.read_bytes()
    assert calls(server, "content") == 3 and len(sleeps.waits) == 2 and no_part_files(tmp_path)


@pytest.mark.sim(BASE, batch_cut_downloads=10)
async def test_a_download_that_keeps_failing_leaves_no_file(
    client: BatchClient, sleeps: Sleeps, tmp_path: Path
) -> None:
    remote = await client.upload(input_file(tmp_path, 50), "in.jsonl")
    dest = tmp_path / "copy.jsonl"
    with pytest.raises(BatchUnavailable):
        await client.download(remote.id, dest)
    assert not dest.exists() and no_part_files(tmp_path) and len(sleeps.waits) == client.tries - 1


@pytest.mark.sim(BASE, batch_fail_gets=2)
async def test_get_is_tried_again_over_5xx(
    client: BatchClient, server: SimServer, sleeps: Sleeps, tmp_path: Path
) -> None:
    batch = await new_batch(client, tmp_path, "job:g")
    assert (await client.get(batch.id)).id == batch.id
    assert server.sim.stats()["gets_failed"] == 2 and calls(server, "get") == 3
    first, second = sleeps.waits
    assert 0.5 <= first <= 1.0 <= second <= 2.0  # backoff_s 1 doubling, each with jitter


@pytest.mark.sim(BASE, batch_fail_gets=100)
async def test_backoff_grows_is_capped_and_then_gives_up(server: SimServer, sleeps: Sleeps, tmp_path: Path) -> None:
    async with make_client(compatible_root(server.base_url), sleeps, tries=7, backoff_s=0.5, backoff_max_s=3) as c:
        batch = await new_batch(c, tmp_path, "job:b")
        with pytest.raises(BatchUnavailable) as gave_up:
            await c.get(batch.id)
    assert gave_up.value.status == 503 and "7 times" in str(gave_up.value)
    assert calls(server, "get") == 7 and len(sleeps.waits) == 6
    for n, wait in enumerate(sleeps.waits):
        full = min(3.0, 0.5 * 2**n)
        assert full / 2 <= wait <= full
    assert sleeps.waits[:3] == sorted(sleeps.waits[:3]) and max(sleeps.waits) <= 3.0


@pytest.mark.sim(BASE, batch_fail_gets=2, retry_after_s=5)
async def test_retry_after_is_honoured_up_to_the_cap(server: SimServer, sleeps: Sleeps, tmp_path: Path) -> None:
    async with make_client(compatible_root(server.base_url), sleeps) as c:
        batch = await new_batch(c, tmp_path, "job:r")
        await c.get(batch.id)
    assert sleeps.waits == [5.0, 5.0]
    sleeps.waits.clear()
    server.sim.reset()
    async with make_client(compatible_root(server.base_url), sleeps, backoff_max_s=2) as c:
        batch = await new_batch(c, tmp_path, "job:r2")
        await c.get(batch.id)
    assert sleeps.waits == [2.0, 2.0]


async def test_a_refused_key_is_final_and_never_shown(server: SimServer, sleeps: Sleeps, tmp_path: Path) -> None:
    wrong = "sk-wrong-key-5521"
    async with BatchClient(compatible_root(server.base_url), wrong, sleep=sleeps) as c:
        with pytest.raises(BatchCallFailed) as refused:
            await c.upload(input_file(tmp_path, 1), "in.jsonl")
        with pytest.raises(BatchCallFailed) as refused_create:
            await c.create("file-x", window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={"ds_name": wrong})
    for exc in (refused.value, refused_create.value):
        assert exc.status == 401 and not exc.transient
        assert wrong not in str(exc) and wrong not in repr(exc) and wrong not in exc.message
    assert sleeps.waits == []


async def test_the_client_blots_out_a_key_the_service_echoes(server: SimServer, sleeps: Sleeps) -> None:
    # The simulator names a missing file in its 404 message; here the "file id" is the key.
    async with make_client(compatible_root(server.base_url), sleeps) as c:
        with pytest.raises(BatchCallFailed) as echoed:
            await c.create(KEY, window="24h", endpoint=wb.BATCH_ENDPOINT, metadata={})
    assert echoed.value.status == 404 and KEY not in str(echoed.value) and "[key]" in str(echoed.value)
