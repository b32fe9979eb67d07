"""`--engine ray`: a job sharded over a real local Ray instance (ray.init(num_cpus=2), started
once for this module and shut down at its end), against the simulator on loopback.

What a sharded run must keep of a one-process run: the same output table row for row, a store
that passes the same checks, nothing re-bought on a rerun, a killed worker costing at most its
shard's requests in flight plus its last snapshot interval, and the account's rate kept across
the whole cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import API_KEY, Launch, query, read_table, write_job

from batchrunner.records import RunSummary
from batchrunner.runner import run_job
from batchrunner.shardtask import local_store
from batchrunner.simulator import SimulatorConfig, ThreadHandle
from batchrunner.spec import load

ray = pytest.importorskip("ray")

ROWS = 60
# Columns that differ between any two runs (times, ids the service makes up).
VARYING = {"request_id", "latency_ms", "started_at", "finished_at", "run_id"}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def rows(n: int = ROWS) -> list[dict[str, Any]]:
    return [{"id": f"r{i:04d}", "text": f"item number {i}"} for i in range(n)]


def job(
    folder: Path, n: int = ROWS, *, shards: int | None = 5, limits: dict[str, Any] | None = None, **scale: Any
) -> Path:
    overrides: dict[str, dict[str, Any] | None] = {"scale": {"engine": "ray", "snapshot_s": 0.5, **scale}}
    if shards is not None:
        overrides["scale"] = {**(overrides["scale"] or {}), "shards": shards}
    if limits:
        overrides["limits"] = limits
    return write_job(folder, rows(n), overrides)


def one_process(folder: Path, n: int = ROWS) -> Path:
    return write_job(folder, rows(n))


def comparable(table: pl.DataFrame) -> pl.DataFrame:
    return table.drop([c for c in table.columns if c in VARYING]).sort("id")


def store_checks(db: Path) -> dict[str, Any]:
    """What any store of a finished job must satisfy; returns its totals to compare."""
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA foreign_key_check") == []
    orphans = query(
        db,
        "SELECT count(*) FROM results r WHERE r.answer IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.id = r.answer)",
    )
    assert orphans == [(0,)]
    no_run = query(db, "SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = a.run_id)")
    assert no_run == [(0,)]
    no_shape = query(
        db, "SELECT count(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM shapes s WHERE s.id = r.shape)"
    )
    assert no_shape == [(0,)]
    (totals,) = query(
        db,
        "SELECT count(*), sum(status = 'ok'), sum(input_tokens), sum(output_tokens), sum(total_cost_pusd), "
        "count(DISTINCT key), count(DISTINCT row_index) FROM results_view",
    )
    (attempts,) = query(db, "SELECT count(*), sum(cost_pusd) FROM attempts_view")
    return {"results": totals, "attempts": attempts}


def keys_answered(sim: ThreadHandle) -> Counter[str]:
    return Counter(r.key for r in sim.sim.log if r.status == 200)


def test_sharded_output_equals_one_process_run_row_for_row(local_ray: Any, sim: ThreadHandle, tmp_path: Path) -> None:
    single = run_job(one_process(tmp_path / "one"))
    sent_once = sim.sim.stats()["requests"]
    sharded = run_job(job(tmp_path / "ray"))
    assert single.exit_code == 0 and sharded.exit_code == 0, sharded.message
    assert sharded.counts.ok == ROWS and sim.sim.stats()["requests"] == 2 * sent_once
    one, many = read_table(tmp_path / "one/out/result.csv"), read_table(tmp_path / "ray/out/result.csv")
    assert list(many["id"]) == [r["id"] for r in rows()]  # input order
    assert comparable(many).equals(comparable(one))
    db = tmp_path / "ray/out/t.sqlite"
    assert store_checks(db) == store_checks(tmp_path / "one/out/t.sqlite")
    shards = query(db, "SELECT shard, first_row, end_row, state, exit_code, ok FROM shards ORDER BY shard")
    assert [(s[1], s[2]) for s in shards] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 60)]
    assert {(s[3], s[4]) for s in shards} == {("merged", 0)} and sum(s[5] for s in shards) == ROWS
    # The key reached the workers in two shares (runtime env + task), and is written nowhere:
    # not in the job's files, nor in any of Ray's session files (its logs show runtime envs).
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    files = [p for p in [*(tmp_path / "ray").rglob("*"), *session.rglob("*")] if p.is_file() and not p.is_symlink()]
    assert any("runtime_env" in p.name for p in files)
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path


def test_a_rerun_buys_nothing_and_a_merge_is_idempotent(local_ray: Any, sim: ThreadHandle, tmp_path: Path) -> None:
    spec = job(tmp_path, shards=3)
    assert run_job(spec).exit_code == 0
    sent = sim.sim.stats()["requests"]
    db = tmp_path / "out/t.sqlite"
    before = store_checks(db)
    again = run_job(spec)
    assert again.exit_code == 0 and again.counts.sent == 0
    assert sim.sim.stats()["requests"] == sent
    from batchrunner.store import Store

    shared = Path(f"{db}.shards") / "t"
    with Store(db) as store:  # merging every snapshot once more adds nothing
        for shard in range(3):
            store.merge_shard("t", shard, shared / f"shard-{shard:05d}.sqlite", 1)
    assert store_checks(db) == before


def shard_pids(prefix: str) -> dict[int, dict[str, Any]]:
    names = [n for n in ray.util.list_named_actors() if n.startswith(prefix)]
    if not names:
        return {}
    return dict(ray.get(ray.get_actor(names[0]).snapshot.remote()))


@pytest.mark.sim(SimulatorConfig(latency_ms=40, keep_log=True))
def test_a_worker_killed_mid_shard_loses_nothing_and_rebuys_little(
    local_ray: Any, sim: ThreadHandle, tmp_path: Path
) -> None:
    n, rpm, concurrency, snapshot_s = 400, 3000, 4, 0.5
    spec = job(tmp_path, n, shards=2, limits={"requests_per_minute": rpm, "concurrency": concurrency})
    result: list[RunSummary] = []
    runner = threading.Thread(target=lambda: result.append(run_job(spec)))
    runner.start()
    try:
        assert sim.sim.wait_for_requests(100, timeout=120)
        victim = next(
            (rep for _ in range(200) if (rep := shard_pids("batchrunner-t").get(0)) and rep.get("rows_done", 0) > 20),
            None,
        )
        assert victim is not None
        assert (tmp_path / "out/t.sqlite.shards/t/shard-00000.sqlite").exists()
        store_id = query(tmp_path / "out/t.sqlite", "SELECT value FROM meta WHERE name = 'store_id'")[0][0]
        local = local_store(store_id, 0)
        for part in (local, Path(f"{local}-wal"), Path(f"{local}-shm")):  # the node's disk is lost too
            part.unlink(missing_ok=True)
        os.kill(int(victim["pid"]), signal.SIGKILL)
    finally:
        runner.join(timeout=180)
    assert not runner.is_alive() and result and result[0].exit_code == 0, result and result[0].message
    table = read_table(tmp_path / "out/result.csv")
    assert len(table) == n and set(table["status"]) == {"ok"}
    answered = keys_answered(sim)
    rebought = sum(count - 1 for count in answered.values())
    per_shard_rate = rpm / 60 / 2
    assert len(answered) == n
    assert rebought <= concurrency + per_shard_rate * snapshot_s * 2 + 2, rebought
    assert query(tmp_path / "out/t.sqlite", "SELECT tries FROM shards WHERE shard = 0") == [(1,)]
    # Ray started the task again; it went on from the snapshot (the local store was gone): the
    # killed run is in the shard's store, marked killed, before the one that finished.
    shard_runs = query(tmp_path / "out/t.sqlite.shards/t/shard-00000.sqlite", "SELECT status FROM runs ORDER BY id")
    assert shard_runs == [("killed",), ("finished",)]
    print(f"re-bought {rebought} of {n} (bound {concurrency} in flight + {per_shard_rate * snapshot_s:.0f} a snapshot)")


@pytest.mark.sim(SimulatorConfig(rpm=1200, keep_log=True))
def test_the_cluster_keeps_the_accounts_rate(local_ray: Any, sim: ThreadHandle, tmp_path: Path) -> None:
    spec = job(tmp_path, 240, shards=4, limits={"requests_per_minute": 1200})
    summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    stats = sim.sim.stats()
    assert stats["throttled"] == 0 and stats["requests"] == 240
    times = sorted(r.time for r in sim.sim.log)
    busiest = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert busiest <= 1200 / 60, busiest


def test_without_ray_installed_the_error_names_the_extra(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from batchrunner.errors import SpecError

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(SpecError, match=r"pip install 'batchrunner\[ray\]'"):
        run_job(job(tmp_path))
    assert sim.sim.stats()["requests"] == 0


def test_an_unreachable_address_is_refused_before_anything_is_sent(
    tmp_path: Path, sim: ThreadHandle, launch: Launch
) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proc = launch("run", str(job(tmp_path)), "--address", f"127.0.0.1:{port}", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert sim.sim.stats()["requests"] == 0


def test_a_shared_dir_the_nodes_do_not_share_is_refused(local_ray: Any, tmp_path: Path, sim: ThreadHandle) -> None:
    from batchrunner.errors import SpecError

    # fsspec's memory filesystem lives in each process: the workers' files are not the driver's.
    with pytest.raises(SpecError, match="is not shared: node .* wrote there, but this machine does not see"):
        run_job(job(tmp_path, shared_dir="memory://batchrunner-test"))
    assert sim.sim.stats()["requests"] == 0


def test_a_shared_dir_that_cannot_be_written_is_refused(local_ray: Any, tmp_path: Path, sim: ThreadHandle) -> None:
    from batchrunner.errors import SpecError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecError, match="shared_dir .* is not writable"):
        run_job(job(tmp_path, shared_dir=str(blocker / "shards")))
    assert sim.sim.stats()["requests"] == 0


def test_spec_refuses_what_shards_cannot_share(tmp_path: Path) -> None:
    from batchrunner.errors import SpecError

    spec = write_job(tmp_path, rows(3), {"scale": {"engine": "ray"}, "limits": {"max_requests": 10}})
    with pytest.raises(SpecError, match="max_requests is not shared across Ray shards"):
        load(spec)


@pytest.mark.sim(SimulatorConfig(latency_ms=30, keep_log=True))
def test_ctrl_c_stops_every_shard_and_a_rerun_finishes_the_job(
    local_ray: Any, sim: ThreadHandle, tmp_path: Path, launch: Launch
) -> None:
    n = 600
    spec = job(tmp_path, n, shards=4, limits={"requests_per_minute": 3000, "concurrency": 4, "grace_s": 2})
    proc = launch("run", str(spec), "-q", stderr=subprocess.PIPE, text=True)  # its own local Ray
    assert sim.sim.wait_for_requests(60, timeout=120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    db = tmp_path / "out/t.sqlite"
    (saved,) = query(db, "SELECT count(*) FROM results WHERE status = 'ok'")[0]
    assert 0 < saved < n
    states = {s for (s,) in query(db, "SELECT state FROM shards")}
    assert "interrupted" in states and "running" not in states
    assert run_job(spec).exit_code == 0
    answered = keys_answered(sim)
    assert len(answered) == n and sum(answered.values()) - n <= 4 * 4  # at most what was in flight


@pytest.mark.sim(SimulatorConfig(latency_ms=30, keep_log=True))
def test_a_killed_driver_is_adopted_by_the_next_run(
    local_ray: Any, sim: ThreadHandle, tmp_path: Path, launch: Launch
) -> None:
    n, concurrency = 600, 4
    spec = job(tmp_path, n, shards=4, limits={"requests_per_minute": 3000, "concurrency": concurrency})
    proc = launch("run", str(spec), "-q", stderr=subprocess.DEVNULL)
    assert sim.sim.wait_for_requests(150, timeout=120)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=30)
    db = tmp_path / "out/t.sqlite"
    planned = query(db, "SELECT shard, first_row, end_row FROM shards ORDER BY shard")
    summary = run_job(spec)
    assert summary.exit_code == 0, summary.message
    assert query(db, "SELECT shard, first_row, end_row FROM shards ORDER BY shard") == planned  # adopted
    table = read_table(tmp_path / "out/result.csv")
    assert len(table) == n and set(table["status"]) == {"ok"}
    answered = keys_answered(sim)
    assert len(answered) == n
    assert sum(answered.values()) - n <= 2 * concurrency  # the shards running had at most that in flight
    assert store_checks(db)["results"][:2] == (n, n)


def test_the_budget_is_a_ceiling_for_the_whole_sharded_job(local_ray: Any, sim: ThreadHandle, tmp_path: Path) -> None:
    budget = 0.001  # about a third of what the 60 rows cost
    limits = {"max_cost_usd": budget, "concurrency": 2}
    spec = write_job(
        tmp_path,
        rows(),
        {
            "scale": {"engine": "ray", "shards": 4, "snapshot_s": 0.5},
            "limits": limits,
            "parameters": {"temperature": 0.5, "max_tokens": 32, "seed": 1, "enable_thinking": False},
        },
    )
    summary = run_job(spec)
    assert summary.exit_code == 4, summary.message
    db = tmp_path / "out/t.sqlite"
    (spent,) = query(db, "SELECT sum(cost_pusd) FROM attempts")[0]
    (ok,) = query(db, "SELECT count(*) FROM results WHERE status = 'ok'")[0]
    assert 0 < ok < ROWS and spent <= budget * 1e12
    # The job's budget counts what earlier runs spent. (A shard stops when its own part cannot
    # cover a request's worst case, so a rerun, pooling what is left, may buy a few rows more.)
    again = run_job(spec)
    assert again.exit_code == 4
    (spent_after,) = query(db, "SELECT sum(cost_pusd) FROM attempts")[0]
    assert spent <= spent_after <= budget * 1e12
