"""The store's size per row: a real run of the benchmark job (the README's ordinary spec)
against the simulator, then what the store file holds per result beyond the answer text.

    python -m benchmarks.storesize --rows 100000 [--workdir DIR]

Prints one JSON object: rows, attempts, the file's bytes (after a WAL checkpoint, and after a
VACUUM of a copy), the answer text's bytes (content and reasoning_content, UTF-8), and
`bytes_per_row` = (vacuumed file - answer text) / results. `per_table` splits the file by
table and index (SQLite's dbstat), to show where the bytes go.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from .data import write_spec
from .harness import CONCURRENCY, HUGE_RPM
from .proc import SimulatorProcess, child_env, run_child


def measure(store: Path) -> dict[str, Any]:
    """What the store at `store` holds per result (it is copied and vacuumed, not changed)."""
    conn = sqlite3.connect(store)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
        attempts = int(conn.execute("SELECT count(*) FROM attempts").fetchone()[0])
        text = conn.execute(
            "SELECT coalesce(sum(length(CAST(content AS BLOB))), 0) + "
            "coalesce(sum(length(CAST(reasoning_content AS BLOB))), 0) FROM results"
        ).fetchone()[0]
    finally:
        conn.close()
    checkpointed = store.stat().st_size
    with tempfile.TemporaryDirectory(dir=store.parent) as folder:
        copy = Path(folder) / "copy.sqlite"
        shutil.copyfile(store, copy)
        conn = sqlite3.connect(copy)
        try:
            conn.execute("VACUUM")
            per_table: dict[str, int] = {}
            try:
                for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
                    per_table[str(name)] = int(size)
            except sqlite3.OperationalError:  # an SQLite built without dbstat
                pass
        finally:
            conn.close()
        vacuumed = copy.stat().st_size
    return {
        "rows": rows,
        "attempts": attempts,
        "file_bytes": checkpointed,
        "vacuumed_bytes": vacuumed,
        "answer_text_bytes": int(text),
        "bytes_per_row": round((vacuumed - int(text)) / rows, 1) if rows else None,
        "file_bytes_per_row": round((checkpointed - int(text)) / rows, 1) if rows else None,
        "per_table_bytes_per_row": {k: round(v / rows, 1) for k, v in per_table.items()} if rows else {},
    }


def run(rows: int, workdir: Path) -> Path:
    """Run the benchmark job over `rows` rows into a new store in `workdir`; the store's path."""
    from .data import prompt_table

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "input.parquet"
    prompt_table(rows).write_parquet(data)
    spec = write_spec(
        workdir, name="bench-store", input_path=data, requests_per_minute=HUGE_RPM, concurrency=CONCURRENCY
    )
    with SimulatorProcess(workdir / "simulator.log") as sim:
        done = run_child(
            ["-m", "batchrunner", "run", str(spec), "--quiet"],
            env=child_env(sim.base_url),
            cwd=workdir,
            log=workdir / "run.log",
            timeout_s=3600,
        )
    if done.returncode != 0:
        msg = f"the run exited {done.returncode} (see {workdir / 'run.log'})"
        raise SystemExit(msg)
    return workdir / "out" / "bench-store.sqlite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--store", type=Path, default=None, help="measure this store instead of running the job")
    args = parser.parse_args()
    if args.store is not None:
        store = args.store
    else:
        folder = args.workdir or Path(tempfile.mkdtemp(prefix="storesize-"))
        store = run(args.rows, folder)
    print(json.dumps(measure(store), indent=2))


if __name__ == "__main__":
    main()
