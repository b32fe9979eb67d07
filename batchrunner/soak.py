"""A soak run: a large job through a fault mix, SIGKILLed again and again, then checked.

    python -m batchrunner.soak [--rows 20000] [--kills 10] [--seed 1]

The simulator (in this process, on 127.0.0.1) answers with 10% 5xx, 3% dropped connections,
1% malformed bodies and 1% answers slower than the job's timeout. A `batchrunner run` child
process is SIGKILLed at random points `--kills` times, then run to the end. The soak checks
that the output table is complete, that every row has exactly one stored success, and that
the requests answered more than once stay within what was in flight (or answered in the
last moments) at each kill; then prints its figures. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

from .simulator import SimulatorConfig, serve_in_thread

FAULTS = {"500": 0.07, "503": 0.03, "drop": 0.03, "malformed": 0.01, "slow": 0.01}
CONCURRENCY = 64
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


def _run(spec: Path, base_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DASHSCOPE_BASE_URL=base_url, DASHSCOPE_API_KEY="sk-soak")
    cmd = [sys.executable, "-m", "batchrunner", "run", str(spec), "-q"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def soak(rows: int, kills: int, seed: int, folder: Path) -> dict[str, object]:
    rng = random.Random(seed)
    pl.DataFrame(
        {"id": [f"s{i:06d}" for i in range(rows)], "text": [f"payload {i * 7919 % 10007}" for i in range(rows)]}
    ).write_parquet(folder / "rows.parquet")
    spec = folder / "soak.toml"
    spec.write_text(SPEC.format(concurrency=CONCURRENCY), encoding="utf-8")
    config = SimulatorConfig(latency_ms=20, fault_mix=FAULTS, slow_s=2.0, rng_seed=seed)
    t0 = time.monotonic()
    kill_times: list[float] = []
    with serve_in_thread(config, "127.0.0.1", 0) as handle:
        for _ in range(kills):
            target = handle.sim.stats()["answered"] + rng.randint(rows // (kills * 4), rows // (kills + 1))
            proc = _run(spec, handle.base_url)
            try:
                handle.sim.wait_for_requests(min(target, rows), timeout=600)
            finally:
                proc.send_signal(signal.SIGKILL)
                kill_times.append(time.time())
                proc.communicate(timeout=60)  # waits, and closes the stderr pipe
        final = _run(spec, handle.base_url)
        _, err = final.communicate(timeout=3600)
        stats = handle.sim.stats()
        answered = [r for r in handle.sim.log if r.status == 200 and not r.fault]
    wall = time.monotonic() - t0
    if final.returncode != 0:
        raise SystemExit(f"the final run failed ({final.returncode}): {err.decode()[-2000:]}")
    table = pl.read_parquet(folder / "out" / "soak.parquet")
    with sqlite3.connect(folder / "out" / "soak.sqlite") as conn:
        stored, distinct = conn.execute("SELECT count(*), count(DISTINCT row_id) FROM results").fetchone()
        ok_attempts = Counter(k for (k,) in conn.execute("SELECT key FROM attempts WHERE outcome = 'ok'"))
        (attempts,) = conn.execute("SELECT count(*) FROM attempts").fetchone()
    answers = Counter(r.prompt for r in answered)
    paid_twice = sum(n - 1 for n in answers.values())
    recent = sum(1 for t in kill_times for r in answered if t - 0.15 <= r.time <= t)
    bound = kills * CONCURRENCY + recent
    checks = {
        "table complete, all ok": table.height == rows and set(table["status"].to_list()) == {"ok"},
        "one result per row": stored == distinct == rows,
        "one stored success per row": len(ok_attempts) == rows and set(ok_attempts.values()) == {1},
        "re-bought only in flight / last moments": paid_twice <= bound,
    }
    return {
        "rows": rows,
        "kills": kills,
        "requests seen by the service": stats["requests"],
        "attempts stored": attempts,
        "faults injected": dict(stats["faults_injected"]),
        "answered twice (paid twice)": paid_twice,
        "bound (in flight + last 150 ms, summed over kills)": bound,
        "wall time (s)": round(wall, 1),
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batchrunner.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchrunner-soak-") as tmp:
        figures = soak(args.rows, args.kills, args.seed, Path(tmp))
    for key, value in figures.items():
        print(f"{key:52} {value}")
    checks = figures["checks"]
    if not (isinstance(checks, dict) and all(checks.values())):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
