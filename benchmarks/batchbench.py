"""Batch mode at scale, and a crash matrix with real SIGKILLs.

    python -m benchmarks.batchbench [--rows 100000] [--batch-seconds 20] [--matrix-rows 3000] [--kills 2]

1. A `--rows` job in mode batch (50,000 lines a file) runs as a child process against the
   simulator (served from this process on 127.0.0.1; every batch takes `--batch-seconds`).
   Reported: files and batches made, the wall time of planning, upload + create, and ingest
   (from the store's timestamps), the child's peak RSS, and the cost: online (the same usage
   at the real-time price, from the store) against batch (`report --by mode`).
2. The crash matrix: for each committed step of the state machine, a child runs a
   `--matrix-rows` job (three files) and is SIGKILLed as soon as the store shows a file in that
   state, `--kills` times, each time resumed; then a last run finishes it. Counted: batches the
   simulator created beyond the files planned, and lines it billed beyond the rows (both must
   be 0), and whether the output table is whole.

Bounded: every wait has a deadline, and every child is killed on the way out.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from batchrunner.pricing import PriceTable
from batchrunner.simulator import SimulatorConfig, serve_in_thread
from batchrunner.wire import Usage

from .proc import child_env, launch

SPEC = """
[job]
name = "bb"
[input]
path = "rows.parquet"
id_column = "id"
[prompt]
system = "Answer in one short sentence."
template = "Tell me one fact about item {{id}}: {{text}}"
[model]
name = "qwen-plus"
[parameters]
max_tokens = 24
seed = 1
enable_thinking = false
[api]
mode = "batch"
[batch]
max_lines_per_file = {per_file}
poll_interval_s = {poll}
poll_max_s = {poll}
[output]
path = "out/bb.parquet"
"""
RUN_TIMEOUT_S = 1800.0
KILL_WAIT_S = 120.0
STEPS = ("uploading", "uploaded", "creating", "submitted", "terminal", "ingested", "cleaned")


def _job(folder: Path, rows: int, per_file: int, poll: float) -> Path:
    ids = [f"r{i}" for i in range(rows)]
    pl.DataFrame({"id": ids, "text": [f"text of row {i}" for i in range(rows)]}).write_parquet(folder / "rows.parquet")
    spec = folder / "job.toml"
    spec.write_text(SPEC.format(per_file=per_file, poll=poll), encoding="utf-8")
    return spec


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def scale(rows: int, batch_seconds: float) -> dict[str, Any]:
    """Part 1: one job of `rows` rows to its end."""
    with tempfile.TemporaryDirectory(prefix="batchrunner-bb-") as tmp:
        folder = Path(tmp)
        spec = _job(folder, rows, 50_000, 2.0)
        config = SimulatorConfig(batch_seconds=batch_seconds, keep_log=False)
        with serve_in_thread(config, "127.0.0.1", 0) as sim:
            env = child_env(sim.base_url)
            started = time.time()
            with launch(
                ["-m", "batchrunner", "run", str(spec), "-q"], env=env, cwd=folder, log=folder / "run.log"
            ) as child:
                exited = child.wait(RUN_TIMEOUT_S)
            stats = sim.sim.stats()
        db = folder / "out" / "bb.sqlite"
        files = _query(db, "SELECT planned_at, submitted_at, terminal_at, ingested_at, lines FROM batch_files")
        planned = max(_stamp(f[0]) for f in files)
        report = subprocess.run(
            [sys.executable, "-m", "batchrunner", "report", str(db), "--by", "mode", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        table = PriceTable.load()
        online = batch = 0
        for inp, out, cost in _query(db, "SELECT input_tokens, output_tokens, cost_pusd FROM results_view"):
            price = table.cost("qwen-plus", Usage.from_wire({"input_tokens": inp, "output_tokens": out}))
            online += price.total_pusd if price else 0
            batch += cost or 0
        return {
            "rows": rows,
            "exit_code": exited.returncode,
            "files": len(files),
            "batches_created": stats["batches_created"],
            "lines_billed": stats["lines_billed"],
            "plan_s": round(planned - started, 2),
            "upload_and_create_s": round(sum(_stamp(f[1]) - _stamp(f[0]) for f in files), 2),
            "ingest_s": round(sum(_stamp(f[3]) - _stamp(f[2]) for f in files), 2),
            "wall_s": round(exited.wall_s, 1),
            "peak_rss_mb": round(exited.maxrss_mb, 1),
            "cost_online_usd": online / 1e12,
            "cost_batch_usd": batch / 1e12,
            "report": json.loads(report.stdout),
        }


def _kill_at(child_args: list[str], env: dict[str, str], folder: Path, db: Path, step: str) -> str:
    """Run a child and SIGKILL it when a file reaches `step`; the step the store shows then."""
    with launch(child_args, env=env, cwd=folder, log=folder / "matrix.log") as child:
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and child.proc.poll() is None:
            if db.is_file():
                try:
                    states = {s for (s,) in _query(db, "SELECT state FROM batch_files")}
                except sqlite3.Error:
                    states = set()
                if step in states:
                    child.proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.002)
        child.wait(KILL_WAIT_S)
    return ",".join(sorted({s for (s,) in _query(db, "SELECT state FROM batch_files")})) if db.is_file() else "-"


def matrix(rows: int, kills: int, batch_seconds: float) -> list[dict[str, Any]]:
    """Part 2: kills at each step, then a finishing run; extra batches and bills must be 0."""
    results = []
    for step in STEPS:
        with tempfile.TemporaryDirectory(prefix="batchrunner-bbm-") as tmp:
            folder = Path(tmp)
            spec = _job(folder, rows, rows // 3 + 1, 0.5)
            db = folder / "out" / "bb.sqlite"
            config = SimulatorConfig(batch_seconds=batch_seconds, keep_log=False)
            with serve_in_thread(config, "127.0.0.1", 0) as sim:
                env = child_env(sim.base_url)
                args = ["-m", "batchrunner", "run", str(spec), "-q"]
                seen = [_kill_at(args, env, folder, db, step) for _ in range(kills)]
                with launch(args, env=env, cwd=folder, log=folder / "matrix.log") as child:
                    code = child.wait(RUN_TIMEOUT_S).returncode
                stats = sim.sim.stats()
            planned = _query(db, "SELECT count(*) FROM batch_files WHERE state != 'abandoned'")[0][0]
            ok = pl.read_parquet(folder / "out" / "bb.parquet").filter(pl.col("status") == "ok").height
            results.append(
                {
                    "step": step,
                    "states_at_kills": seen,
                    "exit_code": code,
                    "extra_batches": stats["batches_created"] - planned,
                    "rows_billed_twice": stats["lines_billed"] - rows,
                    "rows_ok": ok,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batchbench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--matrix-rows", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    if not args.skip_scale:
        figures["scale"] = scale(args.rows, args.batch_seconds)
        print(json.dumps({k: v for k, v in figures["scale"].items() if k != "report"}, indent=2))
    if args.kills == 0:
        return
    figures["matrix"] = matrix(args.matrix_rows, args.kills, 3.0)
    for row in figures["matrix"]:
        print(row)
    bad = sum(r["extra_batches"] + r["rows_billed_twice"] for r in figures["matrix"])
    print(f"crash matrix: {len(STEPS)} steps x {args.kills} kills; extra batches + rows billed twice = {bad}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
