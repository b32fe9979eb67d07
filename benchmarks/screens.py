"""Regenerate docs/report.png and docs/dashboard.png, the README's pictures of
`batchrunner report --format html` and of the live page (`run --dashboard`, `watch`).

    python -m benchmarks.screens [--out docs/report.png] [--live docs/dashboard.png]

The report: a small simulated job run in-process (the htmlsize benchmark's 500-row job:
failures, 429s, retries, cache hits), its HTML report screenshot by headless Chromium
(1280 px wide, network off). The live page: a slow simulated job run by `batchrunner run` in a
child process, the dashboard served in-process while it runs, screenshot from 127.0.0.1, then
the run interrupted (Ctrl-C). Needs chromium and the html extra.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .browser import screenshot
from .htmlsize import seed_store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--size", default="1280,2900", help="window width,height in CSS pixels")
    parser.add_argument("--live", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--live-size", default="1280,1500", help="the live page's window width,height")
    args = parser.parse_args()
    from batchrunner.htmlreport import write_html

    with tempfile.TemporaryDirectory(prefix="screens-") as folder:
        store = seed_store(Path(folder))
        page, _ = write_html([store], Path(folder) / "report.html")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.out, size=args.size)
    print(f"{args.out} ({args.out.stat().st_size:,} bytes)")
    with tempfile.TemporaryDirectory(prefix="screens-") as folder:
        live_screenshot(Path(folder), args.live, args.live_size)
    print(f"{args.live} ({args.live.stat().st_size:,} bytes)")


LIVE_ROWS = 3000


def live_screenshot(folder: Path, png: Path, size: str) -> None:
    """The dashboard of a slow simulated job, mid-run."""
    import polars as pl

    from batchrunner.dashboard import Dashboard
    from batchrunner.simulator import FaultRule, SimulatorConfig, serve_in_thread
    from batchrunner.spec import load

    rows = [{"id": f"r{i}", "text": ("bad " if i % 41 == 0 else "") + f"item {i}"} for i in range(LIVE_ROWS)]
    pl.DataFrame(rows).write_csv(folder / "data.csv")
    (folder / "job.toml").write_text(
        '[job]\nname = "reviews"\n[input]\npath = "data.csv"\nid_column = "id"\n'
        '[prompt]\ntemplate = "Say something about {text}"\n[model]\nname = "qwen-plus"\n'
        "[parameters]\nmax_tokens = 64\nenable_thinking = false\n"
        "[limits]\nconcurrency = 6\nmax_retries = 3\nbackoff_initial_s = 0.01\nbackoff_max_s = 0.05\n"
        'max_cost_usd = 0.5\n[output]\npath = "out/result.csv"\n',
        encoding="utf-8",
    )
    config = SimulatorConfig(
        keep_log=False,
        latency_ms=40,
        fault_mix={"500": 0.03},
        faults=(FaultRule("bad ", ("always:DataInspectionFailed",)), FaultRule("item 17", (429,))),
    )
    with serve_in_thread(config) as sim:
        env = dict(os.environ, DASHSCOPE_BASE_URL=sim.base_url, DASHSCOPE_API_KEY="sk-bench-0000000000000000")
        run = subprocess.Popen(
            [sys.executable, "-m", "batchrunner", "run", str(folder / "job.toml"), "-q"],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        server = Dashboard(load(folder / "job.toml"))
        try:
            if not sim.sim.wait_for_requests(LIVE_ROWS // 4, timeout=120):
                raise SystemExit("the simulated job did not get going")
            url = server.start()
            png.parent.mkdir(parents=True, exist_ok=True)
            screenshot(url, png, size=size, budget_ms=5_000)
        finally:
            server.stop()
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGINT)
                try:
                    run.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait()


if __name__ == "__main__":
    main()
