"""`[scale] engine = "ray"`: the job sharded over a Ray cluster, one store, one output table.

The driver (this process, holding the job's lock and its store) plans the shards (fixed row
ranges, kept in the store's manifest, so a resume and a restarted driver get the same ones),
starts one Ray task per shard still to do (shardtask.py), serves the shares of the limits
(shares.py, as a Ray actor), shows one progress line from the shards' reports, merges each
shard's store into the job's as its task ends (store/shards.py), and writes the output table
from the job's store, in input order, as a one-process run does.

Ctrl-C (or SIGTERM) tells every shard to stop as a one-process run stops: requests in flight
finish for `[limits] grace_s`, answers are committed, a last snapshot is taken and merged. A
second one cancels the tasks at once; what their last snapshots hold is merged.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import raysetup, sink
from .endings import counted, finish_run, finished
from .errors import ExitCode, SpecError
from .records import RunCounts, RunSummary
from .service import BASE_URL_ENV
from .shardtask import (
    COUNTED,
    KEY_SHARE_ENV,
    RowsRunner,
    ShardJob,
    ShardOutcome,
    ShardSetupError,
    run_shard,
    split_key,
)
from .shares import Shares
from .snapshots import Shared

if TYPE_CHECKING:
    from .runner import _Run

log = logging.getLogger("batchrunner")

TICK_S = 0.5
RECORD_S = 5.0  # how often the running shards' counts go into the manifest
TASK_RETRIES = 3  # a shard's task is started again this many times after its worker or node dies
STOP_MARGIN_S = 15.0  # after grace_s, how long stopping shards get for their last commit and snapshot
# How a shard's run ending turns into the job's, most serious first.
_SERIOUS = ("aborted", "setup", "unreachable", "store_failed", "interrupted", "outage", "budget", "crashed")


async def run(r: _Run, run_rows: RowsRunner) -> RunSummary:
    """The job on Ray; `run_rows` is the runner's entry for one shard (runner.run_rows)."""
    spec, store = r.spec, r.store
    if r.options.limit is not None:  # the shards could not share it: refused, not ignored
        msg = "--limit is not shared across Ray shards; run with --engine local to send a few rows first"
        raise SpecError(msg)
    with raysetup.connected(spec) as ray:
        if r.svc.simulated and len(raysetup.alive_nodes(ray)) > 1:
            msg = "--simulate serves the simulator on this machine's loopback: it needs a one-machine Ray cluster"
            raise SpecError(msg)
        location = raysetup.shared_location(spec, ray)
        shared = raysetup.check_shared(spec, ray, location)
        signature = r.source.signature()
        shards = raysetup.plan(spec, store, ray, n_rows=r.source.n_rows, signature=signature, location=location)
        run_id = store.start_run(
            job=spec.job.name,
            spec_digest=spec.digest,
            simulated=r.svc.simulated,
            base_url=r.route.base_url,
            rows_total=r.rows_total,
            input_signature=signature,
            mode=r.route.mode,
            render_context=r.source.renderer.render_context(signature),
        )
        driver = _Driver(r, ray, shared, run_id, run_rows)
        driver.adopt(shards)
        return await driver.go(store.shards(spec.job.name))


class _Driver:
    def __init__(self, r: _Run, ray: Any, shared: Shared, run_id: int, run_rows: RowsRunner) -> None:
        self.r, self.ray, self.shared, self.run_id, self.run_rows = r, ray, shared, run_id, run_rows
        self.spec, self.store = r.spec, r.store
        self.job = self.spec.job.name
        self.counts = RunCounts()
        self.endings: dict[int, str] = {}
        self.problems: list[str] = []
        self.outcomes: dict[int, ShardOutcome] = {}
        self._waiting: list[dict[str, Any]] = []
        self._recorded = 0.0
        self.unsettled: set[int] = set()

    def _budget_pusd(self) -> int | None:
        limits, left = self.spec.limits, []
        if limits.max_cost_usd is not None:
            left.append(max(0, round(limits.max_cost_usd * 1e12) - self.store.spent(self.job)))
        if limits.max_cost_usd_per_run is not None:
            left.append(round(limits.max_cost_usd_per_run * 1e12))
        return min(left) if left else None

    def adopt(self, shards: list[dict[str, Any]]) -> None:
        """Merge what the shards of an earlier driver saved and it did not merge (it died), so
        that the store, and the budget left, count it before anything is sent."""
        for s in shards:
            if s["state"] not in ("planned", "merged"):  # merging is idempotent: again is harmless
                self._merge(s["shard"], "adopted")
        self.endings.clear()

    def _needs_run(self, shard: dict[str, Any]) -> bool:
        if shard["state"] != "merged" or shard["exit_code"] != 0 or self.r.options.retry_failed:
            return True
        return shard["shard"] in self.unsettled  # a transient failure: a plain rerun sends it again

    async def go(self, shards: list[dict[str, Any]]) -> RunSummary:
        ray, spec, r = self.ray, self.spec, self.r
        self.unsettled = self.store.unsettled_shards(self.job)
        todo = [s for s in shards if self._needs_run(s)]
        repeat = spec.job.repeat
        quiet = sum(s["end_row"] - s["first_row"] for s in shards if not self._needs_run(s)) * repeat
        limits = spec.limits
        # Shards run at most one per CPU (Ray would start more while one waits in ray.get), and
        # never more than the limit has requests per minute (each needs at least one).
        slots = max(1, min(int(ray.cluster_resources().get("CPU", 1)), limits.requests_per_minute, len(todo) or 1))
        store_id = self.store.get_meta("store_id") or "store"
        actor = ray.remote(num_cpus=0)(Shares).options(name=f"batchrunner-{self.job}-{store_id[:8]}-run{self.run_id}")
        coordinator = actor.remote(
            limits.requests_per_minute, limits.tokens_per_minute, self._budget_pusd(), slots=slots, shards=len(todo)
        )
        share, pad = split_key(r.svc.api_key)  # Ray logs a runtime env: it gets one share of the key
        env = {KEY_SHARE_ENV: share, BASE_URL_ENV: r.svc.base_url}
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(run_shard)
        self._task = task.options(runtime_env={"env_vars": env})
        self._waiting = list(todo)

        def start(s: dict[str, Any]) -> tuple[asyncio.Future[Any], tuple[int, Any]]:
            job = ShardJob(
                spec=spec,
                prices=r.prices,
                shard=s["shard"],
                rows=(s["first_row"], s["end_row"]),
                shared_dir=self.shared.location,
                store_id=store_id,
                driver_run=self.run_id,
                snapshot_s=spec.scale.snapshot_s,
                coordinator=coordinator,
                run_rows=self.run_rows,
                key_pad=pad,
                retry_failed=r.options.retry_failed,
            )
            ref = self._task.remote(job)
            self.store.update_shard(self.job, s["shard"], state="running", tries=s["tries"] + 1)
            return asyncio.wrap_future(ref.future()), (s["shard"], ref)

        self._start = start
        running = dict(start(self._waiting.pop(0)) for _ in range(min(slots, len(self._waiting))))
        log.info(
            "%s: %d shard(s) to run on %d CPU(s), %d already merged",
            self.job,
            len(todo),
            slots,
            len(shards) - len(todo),
        )
        r.progress.start(r.rows_total, self.counts, done=quiet)
        r._task = asyncio.current_task()
        try:
            await self._watch(running, coordinator, quiet)
        except asyncio.CancelledError:
            if not r.interrupted:
                raise
            for _, ref in running.values():
                ray.cancel(ref, force=True)
            for shard, _ in running.values():
                self._merge(shard, "interrupted")
        finally:
            r.progress.close()
            ray.kill(coordinator)
        return self._end(todo)

    async def _watch(self, running: dict[asyncio.Future[Any], tuple[int, Any]], coordinator: Any, quiet: int) -> None:
        shown, stop_by = quiet, None
        while running:
            done, _ = await asyncio.wait(running, timeout=TICK_S)
            for future in done:
                self._ended(running.pop(future)[0], future, coordinator)
                if self._waiting and not self.r.interrupted:
                    started, entry = self._start(self._waiting.pop(0))
                    running[started] = entry
            reports = await coordinator.snapshot.remote()
            shown = self._show(reports, quiet, shown, len(self._waiting))
            if time.monotonic() >= self._recorded + RECORD_S:
                self._record(reports, [shard for shard, _ in running.values()])
            if self.r.interrupted and stop_by is None:
                await coordinator.stop.remote()
                stop_by = time.monotonic() + self.spec.limits.grace_s + STOP_MARGIN_S
            if stop_by is not None and time.monotonic() > stop_by:
                for shard, ref in running.values():
                    log.warning("%s: shard %d did not stop in time; cancelling its task", self.job, shard)
                    self.ray.cancel(ref, force=True)
                stop_by = float("inf")
        self._show(await coordinator.snapshot.remote(), quiet, shown, 0)

    def _record(self, reports: dict[int, dict[str, Any]], running: list[int]) -> None:
        """The running shards' last reports, into the manifest (what `status` shows)."""
        self._recorded = time.monotonic()
        for shard in running:
            rep = reports.get(shard)
            if rep:
                self.store.update_shard(self.job, shard, **_manifest_fields(rep))

    def _ended(self, shard: int, future: asyncio.Future[Any], coordinator: Any) -> None:
        try:
            outcome: ShardOutcome = future.result()
        except asyncio.CancelledError:
            self._merge(shard, "interrupted")
            return
        except Exception as exc:  # noqa: BLE001 - a task that failed (setup error, or died TASK_RETRIES times)
            cause = getattr(exc, "cause", None)
            setup = isinstance(cause, ShardSetupError)
            message = str(cause) if setup else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.problems.append(f"shard {shard}: {message}")
            coordinator.leave.remote(shard, {}, "failed")
            self.store.update_shard(self.job, shard, state="failed", message=message[:500])
            self._merge(shard, "setup" if setup else "crashed")
            return
        self.outcomes[shard] = outcome
        rep = outcome.report
        self.store.update_shard(
            self.job, shard, exit_code=outcome.exit_code, message=outcome.message[:500] or None, **_manifest_fields(rep)
        )
        self._merge(shard, outcome.status)

    def _merge(self, shard: int, ending: str) -> None:
        """Merge the shard's last snapshot into the job's store (nothing when it has none yet)."""
        self.endings[shard] = ending
        with tempfile.TemporaryDirectory(prefix="batchrunner-merge-") as folder:
            copy = Path(folder) / "shard.sqlite"
            if not self.shared.get(Shared.snapshot_name(shard), copy):
                return
            rows = self.store.merge_shard(self.job, shard, copy, self.run_id)
        if ending != "adopted":
            self.store.update_shard(self.job, shard, state="merged" if ending == "finished" else ending)
        log.info("%s: shard %d %s; %d result(s) merged", self.job, shard, ending, rows)

    def _show(self, reports: dict[int, dict[str, Any]], quiet: int, shown: int, waiting: int) -> int:
        for name in COUNTED:
            setattr(self.counts, name, sum(int(rep.get(name, 0)) for rep in reports.values()))
        done = quiet + sum(int(rep.get("rows_done", 0)) for rep in reports.values())
        if done > shown:
            self.r.progress.advance(done - shown)
            shown = done
        states = [rep.get("state") for rep in reports.values()]
        ended = len(self.endings)
        self.r.progress.batch_state(
            f"cost={self.counts.cost_text(4)}; ok={self.counts.ok:,}; failed={self.counts.failed:,}; "
            f"shards: {states.count('running')} running, {ended} ended, {waiting} waiting"
        )
        return shown

    def _end(self, todo: list[dict[str, Any]]) -> RunSummary:
        r, spec = self.r, self.spec
        ending = next((e for e in _SERIOUS if e in self.endings.values()), "finished")
        status, code, message = _ending(ending, self.problems, self.outcomes)
        table: dict[str, int] = {}
        output: Path | None = None
        if status in ("finished", "budget", "outage") or (status == "interrupted" and r.options.write_partial):
            output, table = sink.export(spec, self.store, r.source)
            if status == "finished":
                code, message = finished(table, limited=False)
        c = self.counts
        finish_run(
            self.store,
            self.run_id,
            status=status,
            exit_code=int(code),
            rows_total=r.rows_total,
            **counted(c),
        )
        return RunSummary(
            run_id=self.run_id,
            exit_code=int(code),
            status=status,
            db_path=spec.db_path,
            output_path=output,
            rows_total=r.source.n_rows,
            already_done=0,
            skipped=0,
            counts=c,
            table=table,
            simulated=r.svc.simulated,
            elapsed_s=0.0,
            message=message,
            job=self.job,
            mode=r.route.mode,
        )


def _manifest_fields(rep: dict[str, Any]) -> dict[str, Any]:
    counted = ("rows_done", "sent", "ok", "failed", "input_tokens", "output_tokens", "cost_pusd")
    return {"node": rep.get("node"), **{k: int(rep.get(k, 0)) for k in counted}}


def _ending(ending: str, problems: list[str], outcomes: dict[int, ShardOutcome]) -> tuple[str, ExitCode, str]:
    said = next((o.message for o in outcomes.values() if o.status == ending and o.message), "")
    joined = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    table = {
        "aborted": ("aborted", ExitCode.AUTH, said),
        "setup": ("aborted", ExitCode.BAD_INPUT, joined),
        "unreachable": ("unreachable", ExitCode.BAD_INPUT, said),
        "store_failed": ("store_failed", ExitCode.STORE, said),
        "interrupted": (
            "interrupted",
            ExitCode.INTERRUPTED,
            "interrupted: each shard's answers up to its last snapshot are merged; run the same command to resume",
        ),
        "outage": ("outage", ExitCode.OUTAGE, said),
        "budget": ("budget", ExitCode.BUDGET, said or "the budget is spent; raise the limit and run again to go on"),
        "crashed": (
            "failed",
            ExitCode.FAILED_ROWS,
            f"{joined}; what the shards saved is merged: run the same command again to resume them",
        ),
    }
    return table.get(ending, ("finished", ExitCode.OK, ""))
