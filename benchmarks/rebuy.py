"""How many answers a SIGKILL makes the next run buy again, at a given number in flight.

    python -m benchmarks.rebuy [--rows 3000] [--kills 3] [--in-flight 16,64] [--latency-ms 40]

For each in-flight figure, a `batchrunner run` child process works through a job against the
simulator (in this process, on 127.0.0.1, with a fixed latency) and is SIGKILLed `--kills`
times at seeded points. After each kill the answers the simulator gave that are not in the
store are counted: those are the ones the next run buys again (the requests in flight at the
kill are not answered, so they are not counted). Target (issue 10): re-bought per kill <=
requests in flight + 2. Bounded: every wait has a deadline and every child is killed.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from batchrunner.simulator import SimulatorConfig, serve_in_thread
from batchrunner.store import Store

from .proc import child_env

SPEC = """
[job]
name = "rebuy"
[input]
path = "rows.parquet"
id_column = "id"
[prompt]
template = "Row {{id}}: {{text}}"
[model]
name = "qwen-plus"
[parameters]
max_tokens = 16
seed = 1
[limits]
requests_per_minute = 1000000
concurrency = {concurrency}
[output]
path = "out/rebuy.csv"
"""
WAIT_S = 120.0
PROMPT = "Row r{i}: text {i}"  # the rendered prompt of row i


def measure(rows: int, kills: int, concurrency: int, latency_ms: float, seed: int) -> list[int]:
    """Answers bought again after each kill (answered by the service, not in the store)."""
    rng = random.Random(seed)
    rebought: list[int] = []
    with tempfile.TemporaryDirectory(prefix="batchrunner-rebuy-") as tmp:
        folder = Path(tmp)
        pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": [f"text {i}" for i in range(rows)]}).write_parquet(
            folder / "rows.parquet"
        )
        (folder / "job.toml").write_text(SPEC.format(concurrency=concurrency), encoding="utf-8")
        config = SimulatorConfig(latency_ms=latency_ms, rng_seed=seed)
        with serve_in_thread(config, "127.0.0.1", 0) as sim:
            env = child_env(sim.base_url)
            for _ in range(kills):
                before = sim.sim.stats()["answered"]
                target = before + rng.randint(rows // (4 * kills), rows // (2 * kills))
                proc = subprocess.Popen(
                    [sys.executable, "-m", "batchrunner", "run", str(folder / "job.toml"), "--quiet"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    if not sim.sim.wait_for_requests(target, timeout=WAIT_S):
                        raise SystemExit(f"the run did not reach {target} answers in {WAIT_S:.0f}s")
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=WAIT_S)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                answered = {r.prompt for r in sim.sim.log if r.status == 200}
                with Store(folder / "out" / "rebuy.sqlite", readonly=True) as store:
                    stored = {PROMPT.format(i=int(row_id[1:])) for row_id in store.ok_row_ids()}
                rebought.append(len(answered - stored))
    return rebought


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rebuy", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--in-flight", default="16,64")
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for concurrency in (int(c) for c in args.in_flight.split(",")):
        counts = measure(args.rows, args.kills, concurrency, args.latency_ms, args.seed)
        worst = max(counts)
        verdict = "PASS" if worst <= concurrency + 2 else "MISS"
        print(
            f"{concurrency} in flight: re-bought per kill {counts} (max {worst}; target <= {concurrency + 2}) {verdict}"
        )


if __name__ == "__main__":
    main()
