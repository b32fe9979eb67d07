"""One shard of a job, as a Ray task: today's runner over a slice of the input.

The task (on whichever node Ray picks):

1. checks that it can write the shared location (naming its node if not);
2. restores its shard store on the node's local disk: the local file when it is of the same
   lineage as the last snapshot (the task died, the node did not), else the snapshot (the
   node is new, or another node went further), else a new store;
3. asks the coordinator for its share of the limits (waiting while the others give it up);
4. runs the runner on its rows, its store local, reporting its counters and taking its
   share every half second (`ShardControl`), while a thread snapshots the store to the
   shared location every `snapshot_s` seconds;
5. takes a last snapshot and says how it ended (`ShardOutcome`).

A task killed anywhere in this loses at most its requests in flight and what it received
since its last snapshot (on the same node, not even that). The key comes from the task's
environment (Ray's runtime env, set by the driver), never from its arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .control import Control, RunHandle, Tally
from .pricing import PriceTable
from .progress import Progress
from .records import RunCounts, RunSummary
from .shares import CARRIED, Grant
from .snapshots import Shared
from .spec import JobSpec
from .store import Store
from .store.shards import backup, meta

log = logging.getLogger("batchrunner")

REPORT_S = 0.5  # how often a shard reports and hears its share
LOCK_WAIT_S = 60.0  # the longest a shard waits for a dead driver's task to let go of its store
JOIN_WAIT_S = 120.0  # the longest a shard waits for a share before it gives up
LOCAL_ROOT_ENV = "BATCHRUNNER_SHARD_DIR"  # where shard stores live on a node (default: the temp folder)
KEY_SHARE_ENV = "BATCHRUNNER_KEY_SHARE"  # the key XOR a one-time pad (the pad comes with the task)


def split_key(key: str) -> tuple[str, bytes]:
    """The key in two shares, each alone worth nothing: (the key XOR a fresh random pad, in
    hex, for the runtime env, which Ray logs; the pad, which goes with the task, unlogged)."""
    data = key.encode()
    pad = secrets.token_bytes(len(data))
    return bytes(a ^ b for a, b in zip(data, pad, strict=True)).hex(), pad


def joined_key(share: str, pad: bytes) -> str:
    return bytes(a ^ b for a, b in zip(bytes.fromhex(share), pad, strict=True)).decode()


RowsRunner = Callable[[JobSpec, PriceTable, tuple[int, int], Control, Progress, bool], Awaitable[RunSummary]]


class ShardSetupError(RuntimeError):
    """A shard could not start (nothing was sent): the message says what to fix, on which node."""


@dataclass(frozen=True)
class ShardJob:
    """What the driver gives one shard's task (no key: it comes from the environment)."""

    spec: JobSpec
    prices: PriceTable
    shard: int
    rows: tuple[int, int]
    shared_dir: str
    store_id: str  # the job store's identity: names the shard's local folder
    driver_run: int
    snapshot_s: float
    coordinator: Any = field(repr=False)  # the Ray actor serving shares.Shares
    run_rows: RowsRunner = field(repr=False)  # runner.run_rows (passed in: the runner imports the engine)
    key_pad: bytes = field(repr=False, default=b"")  # one share of the key (split_key); the env has the other
    retry_failed: bool = False  # --retry-failed: the shard sends its failed rows again


@dataclass(frozen=True)
class ShardOutcome:
    shard: int
    node: str
    pid: int
    status: str
    exit_code: int
    message: str
    report: dict[str, Any]


def local_store(store_id: str, shard: int) -> Path:
    root = Path(os.environ.get(LOCAL_ROOT_ENV) or Path(tempfile.gettempdir()) / "batchrunner-shards")
    return root / store_id / f"shard-{shard:05d}.sqlite"


def node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def run_shard(job: ShardJob) -> ShardOutcome:
    """The body of a shard's Ray task."""
    import ray

    node = node_id()
    share = os.environ.get(KEY_SHARE_ENV)
    if share is None:
        raise ShardSetupError(f"shard {job.shard}: the task's environment lacks {KEY_SHARE_ENV} (set by the driver)")
    os.environ[job.spec.api.api_key_env] = joined_key(share, job.key_pad)  # this worker's own environment
    shared = Shared(job.shared_dir, job.spec.job.name)
    problem = shared.probe(node)
    if problem is not None:
        raise ShardSetupError(f"[scale] shared_dir {job.shared_dir!r} is not writable on node {node}: {problem}")
    local = local_store(job.store_id, job.shard)
    _free(local, job.shard)
    restore(local, shared, job.shard)
    epoch = uuid.uuid4().hex
    with Store(local) as store:
        floor = max((int(r["id"]) for r in store.runs()), default=0)
        spent = store.spent(job.spec.job.name)
        store.set_meta("shard_epoch", epoch)
        store.set_meta(f"run_floor:{floor}", str(job.driver_run))
    report = {"node": node, "pid": os.getpid(), "rows_total": job.rows[1] - job.rows[0], "store_spent_pusd": spent}
    grant = _joined(job, report)
    snapper = Snapshotter(local, shared, Shared.snapshot_name(job.shard), job.snapshot_s)
    snapper.start()
    control = ShardControl(job, grant, report)
    try:
        summary = asyncio.run(_run(job, local, grant, control))
    finally:
        snapper.stop()
    control.report.update(rows_done=control.tally.done, **{name: getattr(summary.counts, name) for name in COUNTED})
    if control.handle is not None:  # exact: what the ended run may have spent
        control.report["spent_pusd"] = control.handle.spent_pusd
        control.report["recent_starts"] = control.handle.recent_starts()
    if not snapper.last_ok:
        raise RuntimeError(f"shard {job.shard}: its last snapshot could not be written to {job.shared_dir!r}")
    ray.get(job.coordinator.leave.remote(job.shard, control.report, summary.status))
    return ShardOutcome(
        job.shard, node, os.getpid(), summary.status, summary.exit_code, summary.message, control.report
    )


def _free(local: Path, shard: int) -> None:
    """Wait (bounded) while a task of a driver that died still holds this shard's store: Ray
    ends such orphans within seconds of noticing their driver is gone."""
    from .lock import live_holder

    deadline = time.monotonic() + LOCK_WAIT_S
    while live_holder(local) is not None:
        if time.monotonic() > deadline:
            raise ShardSetupError(f"shard {shard}: its store {local} stayed locked for {LOCK_WAIT_S:.0f} s")
        time.sleep(0.2)  # pacing the look at the lock, not synchronising


def restore(local: Path, shared: Shared, shard: int) -> None:
    """Put the shard's best store at `local`: see the module docstring."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fetched = local.with_name(local.name + ".restore")
    have = shared.get(Shared.snapshot_name(shard), fetched)
    if local.exists() and (not have or meta(local, "shard_epoch") == meta(fetched, "shard_epoch")):
        fetched.unlink(missing_ok=True)
        return
    if have:
        for stale in (local, local.with_name(local.name + "-wal"), local.with_name(local.name + "-shm")):
            stale.unlink(missing_ok=True)
        os.replace(fetched, local)


def _joined(job: ShardJob, report: dict[str, Any]) -> Grant:
    import ray

    deadline = time.monotonic() + JOIN_WAIT_S
    grant: Grant = ray.get(job.coordinator.join.remote(job.shard, report))
    while grant.rpm < 1 and not grant.stop:
        if time.monotonic() > deadline:
            raise ShardSetupError(f"shard {job.shard} got no share of the rate limit in {JOIN_WAIT_S:.0f} s")
        time.sleep(REPORT_S / 2)  # pacing the coordinator's polls, not synchronising
        grant = ray.get(job.coordinator.report.remote(job.shard, report))
    return grant


async def _run(job: ShardJob, local: Path, grant: Grant, control: ShardControl) -> Any:
    spec = job.spec
    limits = spec.limits.model_copy(
        update={
            "requests_per_minute": max(1, grant.rpm),
            "tokens_per_minute": grant.tpm or spec.limits.tokens_per_minute,
            "max_cost_usd": None if grant.budget_pusd is None else max(grant.budget_pusd, 1) / 1e12,
            "max_cost_usd_per_run": None,
        }
    )
    shard_spec = spec.model_copy(
        update={
            "job": spec.job.model_copy(update={"db": local}),
            "limits": limits,
            "api": spec.api.model_copy(update={"api_key_file": None}),
        }
    )
    return await job.run_rows(shard_spec, job.prices, job.rows, control, control.tally, job.retry_failed)


class ShardControl:
    """Reports the shard's counters to the coordinator and applies the share it answers."""

    def __init__(self, job: ShardJob, grant: Grant, report: dict[str, Any]) -> None:
        self.job, self.grant = job, grant
        self.report: dict[str, Any] = dict(report)
        self.tally = Tally()
        self.handle: RunHandle | None = None

    def _read(self, run: RunHandle) -> None:
        c: RunCounts = run.counts
        self.report.update(
            rows_done=run.rows_done,
            spent_pusd=run.spent_pusd,
            **{name: getattr(c, name) for name in COUNTED},
        )

    async def watch(self, run: RunHandle) -> None:
        self.handle = run
        while True:
            self._read(run)
            grant: Grant = await self.job.coordinator.report.remote(self.job.shard, self.report)
            if (grant.rpm, grant.tpm) != (self.grant.rpm, self.grant.tpm) and grant.rpm >= 1:
                run.regrant(grant.rpm, grant.tpm)
            if grant.budget_pusd is not None:
                run.raise_budget(grant.budget_pusd)
            self.grant = grant
            if grant.stop:
                run.interrupt()
                return
            await asyncio.sleep(REPORT_S)


COUNTED = CARRIED


class Snapshotter:
    """A thread that copies the shard store to the shared location every `every_s` seconds."""

    def __init__(self, local: Path, shared: Shared, name: str, every_s: float) -> None:
        self.local, self.shared, self.name, self.every_s = local, shared, name, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchrunner-snapshot", daemon=True)
        self.taken = 0
        self.last_ok = False

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        import sqlite3

        conn = sqlite3.connect(self.local, check_same_thread=False)
        try:
            while not self._stop.wait(self.every_s):
                self.take(conn)
            self.take(conn)  # the last one, after the run ended
        finally:
            conn.close()

    def take(self, conn: Any) -> None:
        copy = self.local.with_name(self.local.name + ".snapshot")
        try:
            copy.unlink(missing_ok=True)
            backup(conn, copy)
            self.shared.put(copy, self.name)
            self.taken += 1
            self.last_ok = True
        except Exception as exc:  # noqa: BLE001 - the run goes on; the next snapshot may work
            self.last_ok = False
            log.warning("shard snapshot %s failed: %s", self.name, exc)
        finally:
            copy.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
