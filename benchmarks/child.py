"""The benchmark's child processes: one batchrunner job, or the dashscope SDK baseline.

    python -m benchmarks.child job SPEC RESULT_JSON [--limit N]
    python -m benchmarks.child sdk INPUT RESULT_JSON --threads N

Each runs in a fresh interpreter started by the benchmark, with DASHSCOPE_BASE_URL pointing at
a simulator in another process. Each measures its own work with `resource.getrusage(
RUSAGE_SELF)` deltas (every thread of this process, nothing of the simulator) and wall time,
from just before the work to just after it (imports and reading prompts excluded), and
writes them as JSON to RESULT_JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .proc import cpu_wait_s


def _usage() -> tuple[float, float, float, float | None]:
    """(monotonic time, user CPU s, system CPU s, seconds the main thread waited for a CPU) now."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.monotonic(), r.ru_utime, r.ru_stime, cpu_wait_s()


def _peak_rss_mb() -> float | None:
    """This process's own peak RSS (VmHWM), which, unlike ru_maxrss, never includes the
    parent's RSS at the moment this process was started; None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _measured(before: tuple[float, float, float, float | None]) -> dict[str, float | None]:
    after = _usage()
    user, system = after[1] - before[1], after[2] - before[2]
    waited = after[3] - before[3] if after[3] is not None and before[3] is not None else None
    return {
        "wall_s": after[0] - before[0],
        "user_s": user,
        "sys_s": system,
        "cpu_s": user + system,
        "cpu_wait_s": waited,
        "vmhwm_mb": _peak_rss_mb(),
    }


def run_job_child(spec: Path, limit: int | None) -> dict[str, Any]:
    """Run one job through `batchrunner.run_job` (source, pool, store, output table)."""
    from batchrunner import run_job

    before = _usage()
    summary = run_job(spec, limit=limit, handle_signals=True)
    figures = _measured(before)
    c = summary.counts
    return {
        **figures,
        "elapsed_s": summary.elapsed_s,
        "exit_code": summary.exit_code,
        "status": summary.status,
        "rows_total": summary.rows_total,
        "already_done": summary.already_done,
        "sent": c.sent,
        "ok": c.ok,
        "failed": c.failed,
        "attempts": c.attempts,
        "retries": c.retries,
        "throttled": c.throttled,
        "table": summary.table,
    }


def run_sdk_child(input_path: Path, threads: int) -> dict[str, Any]:
    """Send every row of the table with `dashscope.Generation.call` from a thread pool.

    The SDK does not pace and does not retry a 429: each throttled call is counted and
    dropped. Nothing is written anywhere.
    """
    import dashscope
    import polars as pl

    from .data import MODEL, PARAMETERS, render_messages

    frame = pl.read_parquet(input_path) if input_path.suffix == ".parquet" else pl.read_csv(input_path)
    conversations = [render_messages(cat, text) for cat, text in zip(frame["category"], frame["text"], strict=True)]
    dashscope.base_http_api_url = os.environ["DASHSCOPE_BASE_URL"]
    api_key = os.environ["DASHSCOPE_API_KEY"]

    def call(messages: list[dict[str, str]]) -> str:
        try:
            response = dashscope.Generation.call(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]  # plain dicts, as the SDK's docs show
                api_key=api_key,
                result_format="message",
                **PARAMETERS,
            )
        except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome here
            return f"exception:{type(exc).__name__}"
        return str(getattr(response, "status_code", "no-status"))

    before = _usage()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = Counter(pool.map(call, conversations))
    figures = _measured(before)
    return {
        **figures,
        "sent": len(conversations),
        "ok": outcomes.get("200", 0),
        "throttled": outcomes.get("429", 0),
        "outcomes": dict(outcomes),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, do the work, write the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="run one batchrunner job")
    job.add_argument("spec", type=Path)
    job.add_argument("result", type=Path)
    job.add_argument("--limit", type=int)
    sdk = sub.add_parser("sdk", help="the dashscope SDK baseline")
    sdk.add_argument("input", type=Path)
    sdk.add_argument("result", type=Path)
    sdk.add_argument("--threads", type=int, default=64)
    args = parser.parse_args(argv)
    job_run = args.command == "job"
    result = run_job_child(args.spec, args.limit) if job_run else run_sdk_child(args.input, args.threads)
    args.result.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
