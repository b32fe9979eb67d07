"""A soak run: a large job through a fault mix, SIGKILLed again and again, then checked.

    python -m benchmarks.soak [--rows 20000] [--kills 10] [--seed 1]

The simulator (in this process, on 127.0.0.1) answers with 10% 5xx, 3% dropped connections,
1% malformed bodies and 1% answers slower than the job's timeout. A `batchrunner run` child
process is SIGKILLed at random points `--kills` times, then run to the end. The soak checks
that the output table is complete, that every row has exactly one stored success, and that
the requests answered more than once stay within what was in flight (or answered in the
last moments) at each kill; then prints its figures. Bounded: every wait has a deadline,
and every child is killed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchrunner import load_spec
from batchrunner.simulator import RequestRecord, SimulatorConfig, ThreadHandle, serve_in_thread
from batchrunner.store import Store

from .proc import child_env

FAULTS = {"500": 0.07, "503": 0.03, "drop": 0.03, "malformed": 0.01, "slow": 0.01}
CONCURRENCY = 64
KILL_WAIT_S = 600.0
FINAL_RUN_S = 3600.0
RECENT_S = 0.15  # answers this close before a kill may not have been committed
SPEC = """
[job]
name = "soak"
[input]
path = "rows.parquet"
id_column = "id"
[prompt]
template = "Soak test row {{id}}: {{text}}"
[model]
name = "qwen-plus"
[parameters]
max_tokens = 24
seed = 1
[limits]
requests_per_minute = 1000000
concurrency = {concurrency}
timeout_s = 1.0
max_retries = 40
backoff_initial_s = 0.05
backoff_max_s = 1.0
[output]
path = "out/soak.parquet"
"""


@dataclass(frozen=True)
class Stored:
    """What the store holds after the soak."""

    results: int
    distinct_rows: int
    ok_attempts: dict[str, int]  # per request key
    attempts: int


def write_job(folder: Path, rows: int) -> Path:
    """The input table of `rows` rows and the spec over it; returns the spec's path."""
    ids = [f"s{i:06d}" for i in range(rows)]
    texts = [f"payload {i * 7919 % 10007}" for i in range(rows)]
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(folder / "rows.parquet")
    spec = folder / "soak.toml"
    spec.write_text(SPEC.format(concurrency=CONCURRENCY), encoding="utf-8")
    return spec


@contextmanager
def job_process(spec: Path, base_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m batchrunner run SPEC -q` against `base_url`; SIGKILLed on exit if still running."""
    cmd = [sys.executable, "-m", "batchrunner", "run", str(spec), "-q"]
    proc = subprocess.Popen(cmd, env=child_env(base_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)


def kill_runs(handle: ThreadHandle, spec: Path, rows: int, kills: int, rng: random.Random) -> list[float]:
    """Start the job `kills` times, SIGKILLing it each time a random number more requests
    were answered; returns the wall-clock times of the kills."""
    kill_times: list[float] = []
    for _ in range(kills):
        target = int(handle.sim.stats()["answered"]) + rng.randint(rows // (kills * 4), rows // (kills + 1))
        with job_process(spec, handle.base_url) as proc:
            handle.sim.wait_for_requests(min(target, rows), timeout=KILL_WAIT_S)
            proc.send_signal(signal.SIGKILL)
            kill_times.append(time.time())
    return kill_times


def final_run(spec: Path, base_url: str) -> None:
    """Run the job to its end; SystemExit if it fails."""
    with job_process(spec, base_url) as proc:
        _, err = proc.communicate(timeout=FINAL_RUN_S)
    if proc.returncode != 0:
        raise SystemExit(f"the final run failed ({proc.returncode}): {err.decode()[-2000:]}")


def read_store(path: Path) -> Stored:
    """The soak's figures from the job's store, through the Store's read methods."""
    with closing(Store(path, readonly=True)) as store:
        return Stored(
            results=sum(store.counts().values()),
            distinct_rows=store.distinct_row_count(),
            ok_attempts=store.attempt_counts("ok"),
            attempts=sum(store.attempt_counts().values()),
        )


def checks(rows: int, table: pl.DataFrame, stored: Stored, paid_twice: int, bound: int) -> dict[str, bool]:
    """The soak's verdicts, each True when it holds."""
    return {
        "table complete, all ok": table.height == rows and set(table["status"].to_list()) == {"ok"},
        "one result per row": stored.results == stored.distinct_rows == rows,
        "one stored success per row": len(stored.ok_attempts) == rows and set(stored.ok_attempts.values()) == {1},
        "re-bought only in flight / last moments": paid_twice <= bound,
    }


def soak(rows: int, kills: int, seed: int, folder: Path) -> dict[str, Any]:
    """Run the soak in `folder`; returns its figures, `checks` among them."""
    rng = random.Random(seed)
    spec = write_job(folder, rows)
    config = SimulatorConfig(latency_ms=20, fault_mix=FAULTS, slow_s=2.0, rng_seed=seed)
    t0 = time.monotonic()
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        kill_times = kill_runs(handle, spec, rows, kills, rng)
        final_run(spec, handle.base_url)
        stats = handle.sim.stats()
        answered: list[RequestRecord] = [r for r in list(handle.sim.log) if r.status == 200 and not r.fault]
    wall = time.monotonic() - t0
    job = load_spec(spec)
    table = pl.read_parquet(job.output.path)
    stored = read_store(job.db_path)
    paid_twice = sum(n - 1 for n in Counter(r.prompt for r in answered).values())
    recent = sum(1 for t in kill_times for r in answered if t - RECENT_S <= r.time <= t)
    bound = kills * CONCURRENCY + recent
    return {
        "rows": rows,
        "kills": kills,
        "requests seen by the service": stats["requests"],
        "attempts stored": stored.attempts,
        "faults injected": dict(stats["faults_injected"]),
        "answered twice (paid twice)": paid_twice,
        "bound (in flight + last 150 ms, summed over kills)": bound,
        "wall time (s)": round(wall, 1),
        "checks": checks(rows, table, stored, paid_twice, bound),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchrunner-soak-") as tmp:
        figures = soak(args.rows, args.kills, args.seed, Path(tmp))
    for key, value in figures.items():
        print(f"{key:52} {value}")
    if not all(figures["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
