"""Size and load time of the HTML report of a large job (issue 13: <= 5 MB, opens in < 2 s).

    python -m benchmarks.htmlsize --rows 1000000 [--workdir DIR]

A real simulated job of 500 rows (failures, 429s and 500s, cache hits) is run in-process, then
its store is doubled in SQL until it holds `--rows` results: each copy gets new keys, row ids and
attempt ids and is shifted in time after the last, so the run spans hours, as a long job would.
Then `report --format html` is timed (gather + specs + page), and headless Chromium loads the page
from disk: `drawn_ms` is what the page itself measured (performance.now() when every chart is
drawn), `load_s` the wall clock of Chromium dumping the DOM, beside `blank_s` for an empty page.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from batchrunner.store import slim

from .browser import dump_dom

SEED_ROWS = 500


def seed_store(folder: Path) -> Path:
    """A real store: 500 rows through the simulator, with failures, retries and cache hits."""
    import polars as pl

    from batchrunner import run_job
    from batchrunner.simulator import FaultRule, SimulatorConfig, serve_in_thread

    rows = [{"id": f"r{i}", "text": ("bad " if i % 37 == 0 else "") + f"item {i}"} for i in range(SEED_ROWS)]
    pl.DataFrame(rows).write_csv(folder / "data.csv")
    system = "You answer briefly and carefully. " * 60
    (folder / "job.toml").write_text(
        f'[job]\nname = "big"\n[input]\npath = "data.csv"\nid_column = "id"\n'
        f'[prompt]\nsystem = "{system}"\ntemplate = "Say something about {{text}}"\n'
        '[model]\nname = "qwen-plus"\n[parameters]\nmax_tokens = 64\n'
        "[limits]\nrequests_per_minute = 60000\nconcurrency = 32\nmax_retries = 3\n"
        'backoff_initial_s = 0.01\nbackoff_max_s = 0.05\n[output]\npath = "out/result.csv"\n',
        encoding="utf-8",
    )
    config = SimulatorConfig(
        keep_log=False,
        latency_ms=20,
        fault_mix={"500": 0.03},
        faults=(FaultRule("bad ", ("always:DataInspectionFailed",)), FaultRule("item 17", (429,))),
    )
    with serve_in_thread(config) as sim:
        os.environ["DASHSCOPE_BASE_URL"] = sim.base_url
        os.environ.setdefault("DASHSCOPE_API_KEY", "sk-bench-0000000000000000")
        return run_job(folder / "job.toml", handle_signals=False).db_path


def double(store: Path, target: int) -> int:
    """Copy every result and attempt of `store` after itself (new keys, ids, later times) until
    it holds at least `target` results; returns how many it holds."""
    conn = sqlite3.connect(store, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        n = int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
        step = 0
        while n < target:
            first, last = conn.execute("SELECT min(started_at), max(finished_at) FROM results").fetchone()
            shift = int(last) - int(first) + 1000
            top = int(conn.execute("SELECT max(id) FROM attempts").fetchone()[0])
            tag = f"~{step}"
            attempt = {c: f"[{c}]" for c in slim.ATTEMPT_COLUMNS}
            attempt.update(id=f"id + {top}", key=f"key || '{tag}'", started_at=f"started_at + {shift}")
            result = {c: f"[{c}]" for c in slim.RESULT_COLUMNS}
            result.update(key=f"key || '{tag}'", row_id=f"row_id || '{tag}'", row_index=f"row_index + {n}")
            result.update(started_at=f"started_at + {shift}", finished_at=f"finished_at + {shift}")
            result["answer"] = f"answer + {top}"
            conn.execute("BEGIN")
            for table, picked, columns in (
                ("attempts", attempt, slim.ATTEMPT_COLUMNS),
                ("results", result, slim.RESULT_COLUMNS),
            ):
                names = ", ".join(columns)
                values = ", ".join(picked[c] for c in columns)
                conn.execute(f"INSERT INTO {table} ({names}) SELECT {values} FROM {table}")
            conn.execute("COMMIT")
            n *= 2
            step += 1
        conn.execute(
            "UPDATE runs SET ended_at = strftime('%Y-%m-%dT%H:%M:%S', (SELECT max(finished_at) FROM results) / 1000, "
            "'unixepoch') || '.000+00:00', rows_total = ?, ok = (SELECT count(*) FROM results WHERE status = 'ok')",
            [n],
        )
        return n
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        folder = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="htmlsize-")))
        folder.mkdir(parents=True, exist_ok=True)
        store = seed_store(folder)
        started = time.perf_counter()
        rows = double(store, args.rows)
        grown_s = time.perf_counter() - started
        from batchrunner.htmlreport import write_html

        started = time.perf_counter()
        page, size = write_html([store], folder / "report.html")
        write_s = time.perf_counter() - started
        blank = folder / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body>blank</body></html>", encoding="utf-8")
        started = time.perf_counter()
        dump_dom(blank)
        blank_s = time.perf_counter() - started
        started = time.perf_counter()
        dom = dump_dom(page)
        load_s = time.perf_counter() - started
        drawn = re.search(r'data-drawn-ms="(\d+)"', dom)
        figures: dict[str, Any] = {
            "rows": rows,
            "store_bytes": store.stat().st_size,
            "grow_s": round(grown_s, 1),
            "write_html_s": round(write_s, 2),
            "html_bytes": size,
            "drawn_ms": int(drawn.group(1)) if drawn else None,
            "load_s": round(load_s, 2),
            "blank_s": round(blank_s, 2),
            "load_avg": os.getloadavg(),
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
