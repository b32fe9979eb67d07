"""The benchmark command runs end to end in quick mode and reports what it promises.

No timing target is asserted (the machine may be shared); only that the table and the JSON
come out with every scenario asked for, and figures that say the runs did their work.
The bench runs in its own process group, which the fixture kills on teardown whatever
happened, so no simulator or job child can outlive the test.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrunner import run_job
from batchrunner.simulator import ThreadHandle
from benchmarks import raybench
from benchmarks.bench import SCENARIOS, parse_only, run_bench
from benchmarks.data import prompt_table
from benchmarks.fabricate import fabricate
from benchmarks.sample import Sample, steady_window
from benchmarks.table import Line, render_table, s5_lines

ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT_S = 240

Spawn = Callable[[list[str], Path], subprocess.Popen[bytes]]


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL whatever is left of it."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the group is empty: the leader and all its children are gone
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start `python ARGS...` from the repo root in a new process group, output to files in
    `tmp_path`; on teardown the whole group is ended (test passed, failed or timed out)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        env.pop("DASHSCOPE_BASE_URL", None)
        with log.open("wb") as sink, log.with_suffix(".err").open("wb") as errors:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=errors,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _end_group(proc)


@pytest.mark.slow
def test_quick_bench_prints_table_and_writes_json(spawn: Spawn, tmp_path: Path) -> None:
    out, log = tmp_path / "bench.json", tmp_path / "bench.out"
    args = ["-m", "benchmarks.bench", "--quick", "--only", "S1,S2b,S4,startup", "--json", str(out)]
    proc = spawn([*args, "--workdir", str(tmp_path / "work")], log)
    code = proc.wait(timeout=BENCH_TIMEOUT_S)
    stderr = log.with_suffix(".err").read_text(encoding="utf-8", errors="replace")
    assert code == 0, stderr[-3000:]
    table = log.read_text(encoding="utf-8")
    labels = ("S1 overhead-bound", "S2b 1 s latency", "S2b steady CPU per request", "CLI start-up CPU")
    for label in (*labels, "S4 fabricate", "S4 resume start-up", "S4 `status`", "S4 `report`", "S4 `export`"):
        assert label in table

    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert report["meta"]["quick"] is True
    assert report["meta"]["scenarios"] == ["S1", "S2b", "S4", "startup"]
    assert report["table_text"] == table.rstrip("\n")

    s1 = report["scenarios"]["S1"]
    for side in ("batchrunner", "baseline"):
        figures = s1[side]
        assert figures["ok"] == s1["rows"] == 2_000
        assert figures["rows_per_s"] > 0
        assert figures["cpu_s_per_1k_rows"] > 0
        assert figures["peak_rss_mb"] > 0
    assert s1["batchrunner"]["exit_code"] == 0
    assert s1["batchrunner"]["throttled"] == 0
    assert s1["ratio_rows_per_s"] == pytest.approx(
        s1["batchrunner"]["rows_per_s"] / s1["baseline"]["rows_per_s"], rel=1e-9
    )

    s2b = report["scenarios"]["S2b"]
    assert [run["concurrency"] for run in s2b["runs"].values()] == [16, 64, 256]
    for run in s2b["runs"].values():
        figures = run["batchrunner"]
        assert figures["ok"] == run["rows"] == run["concurrency"] * 3
        assert figures["sim_throttled"] == 0
        assert figures["sim_answered"] == run["rows"]
        # 1 s calls cannot come back faster than the pool allows (with room for the sampling
        # blur on a busy machine)
        assert 0 < figures["rate_ratio"] <= 1.5
        assert figures["cpu_ms_per_request"] > 0

    s4 = report["scenarios"]["S4"]
    assert (s4["rows"], s4["done"]) == (20_000, 18_000)
    resumed = s4["resume"]
    assert resumed["startup_s"] is not None and resumed["already_done"] == 18_000  # the fabricated rows are done
    assert resumed["requests"] >= 1_000 and resumed["exit_code"] == 130  # stopped by SIGTERM after 1,000 requests
    for name in ("status", "report", "export"):
        assert s4[name]["exit_code"] == 0 and s4[name]["peak_rss_mb"] > 0
    assert s4["export"]["ok_rows"] >= 19_000  # and the 1,000 it answered are in the store

    start = report["scenarios"]["startup"]
    assert start["repeats"] == 3
    assert set(start["commands"]) == {"python -c pass", "--help", "status JOB", "runs JOB"}
    for label, figures in start["commands"].items():
        assert len(figures["cpu_s"]) == 3 and min(figures["cpu_s"]) > 0
        if label != "python -c pass":
            # importing the CLI costs more than a bare interpreter
            assert figures["excess_cpu_s"] > 0
    assert start["pass"] is (start["worst_excess_cpu_s"] <= start["target_excess_cpu_s"])
    startup_row = next(row for row in report["table"] if row["scenario"].startswith("CLI start-up"))
    assert f"+{start['commands']['status JOB']['excess_cpu_s']:.2f}" in startup_row["batchrunner"]


@pytest.mark.slow
def test_quick_bench_s5_ray_beside_processes_2(spawn: Spawn, tmp_path: Path) -> None:
    """S5 quick: the S1 job (2,000 rows) with `processes = 2`, then on a local Ray of 1 and of
    2 CPUs, each run's whole process tree measured, every row ok in each output table."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'batchrunner[ray]'): S5 cannot run")
    out, log = tmp_path / "bench.json", tmp_path / "bench.out"
    args = ["-m", "benchmarks.bench", "--quick", "--only", "S5", "--json", str(out)]
    proc = spawn([*args, "--workdir", str(tmp_path / "work")], log)
    code = proc.wait(timeout=BENCH_TIMEOUT_S)
    stderr = log.with_suffix(".err").read_text(encoding="utf-8", errors="replace")
    assert code == 0, stderr[-3000:]
    table = log.read_text(encoding="utf-8")
    for label in ("S5 [limits] processes = 2 (no Ray)", "S5 local Ray, 1 CPU", "S5 local Ray, 2 CPUs"):
        assert label in table

    s5 = json.loads(out.read_text(encoding="utf-8"))["scenarios"]["S5"]
    assert (s5["rows"], s5["rounds"], s5["pass"]) == (2_000, 1, True)
    variants = s5["variants"]
    assert list(variants) == ["processes_2", "ray_1cpu", "ray_2cpu"]
    assert [variants[k]["shards"] for k in variants] == [None, 4, 8]  # the default: 4 shards per CPU
    for key, f in variants.items():
        assert f["correct"] and f["ok"] == 2_000 and f["exit_code"] == 0
        assert f["rows_per_s"] > 0 and f["job_cpu_s"] > 0
        detail = s5["runs"][key][0]["detail"]
        assert detail["output_check"] == {"rows": 2_000, "ids": 2_000, "by_status": {"ok": 2_000}, "expected": 2_000}
        names = detail["points"]["end"]["by_name"]
        if key == "processes_2":
            assert f["ray_start_wall_s"] < 0.5 and detail["points"]["end"]["seen"] >= 2  # two workers seen
        else:
            # Ray was started apart from the job, and its daemons and workers were counted
            assert f["ray_start_wall_s"] > 0 and f["ray_start_cpu_s"] > 0
            assert {"raylet", "gcs_server"} <= set(names) and f["job_cpu_s"] > f["driver_job_cpu_s"]
            assert f["ratio_rows_per_s"] == pytest.approx(
                f["rows_per_s"] / variants["processes_2"]["rows_per_s"], rel=1e-9
            )


def test_s5_says_it_is_skipped_without_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(raybench, "ray_installed", lambda: False)
    said: list[str] = []
    report = run_bench(["S5"], quick=True, rows_s3=None, workdir=tmp_path, say=said.append)
    assert report["scenarios"]["S5"]["skipped"] == raybench.NO_RAY
    assert said == [raybench.NO_RAY]
    assert "Ray is not installed" in report["table_text"] and "SKIP" in report["table_text"]
    assert s5_lines(report["scenarios"]["S5"])[0].verdict == "SKIP"


def test_prompt_table_is_deterministic_and_unique() -> None:
    small, large = prompt_table(300), prompt_table(1000)
    assert small.equals(large.head(300))
    lengths = large["text"].str.len_chars().to_list()
    assert min(lengths) >= 300 and max(lengths) <= 600
    assert large["text"].n_unique() == 1000 and large["id"].n_unique() == 1000


def test_steady_window_continuous_and_waves() -> None:
    # 100 answers per second, arriving continuously, sampled every 50 ms.
    steady = [Sample(t / 20, 0, max(0, min(1000, int((t / 20 - 1.0) * 100))), 0) for t in range(260)]
    rate = steady_window(steady, 0.2)
    assert rate.arrival_rate_per_s == pytest.approx(100, rel=0.02)
    # Waves: 100 calls of 1 s each in flight, three waves.
    waves = [Sample(t / 20, 0, 100 * min(3, int(t / 20)), 0) for t in range(80)]
    assert steady_window(waves, 1.0).throughput_per_s == pytest.approx(100, rel=0.03)
    assert steady_window([], 1.0).arrival_rate_per_s is None


def test_only_and_table() -> None:
    assert parse_only("s2b,S1") == ["S1", "S2b"]
    assert parse_only("STARTUP") == ["startup"]
    assert parse_only(None) == list(SCENARIOS) == ["S1", "S2", "S2b", "S3", "S4", "S5", "startup"]
    with pytest.raises(Exception, match="unknown"):
        parse_only("S9")
    text = render_table([Line("S1 x", "1 rows/s", verdict="PASS"), Line("S2 longer name", "7 rows/s")])
    header, rule, first, second = text.splitlines()
    assert header.startswith("scenario") and set(rule) == {"-", " "}
    assert first.index("1 rows/s") == second.index("7 rows/s") == header.index("batchrunner")
    assert first.endswith("PASS")


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_fabricated_job_is_what_a_run_leaves(tmp_path: Path, sim: ThreadHandle) -> None:
    """S4's store, made without HTTP, equals the store of a real run of its spec with `--limit`
    against the simulator (but for times, latencies, request ids and the run's own host); and
    a run of the spec then finds those rows done and sends only the rest."""
    figures = fabricate(tmp_path / "made", rows=300, done=270, workers=0)
    spec, made = Path(figures["spec"]), Path(figures["store"])
    real = tmp_path / "real.sqlite"
    first = run_job(spec, db=real, output=tmp_path / "real.parquet", limit=270)
    assert (first.exit_code, first.counts.ok) == (0, 270)

    volatile = {"results_view": {"latency_ms", "started_at", "finished_at", "request_id"}}
    volatile["attempts_view"] = {"id", "started_at", "latency_ms", "request_id"}
    volatile["runs"] = {"id", "base_url", "pid", "host", "started_at", "ended_at"}
    for table, skip in volatile.items():
        columns = [str(row[1]) for row in _rows(made, f"PRAGMA table_info({table})") if row[1] not in skip]
        assert columns == [str(row[1]) for row in _rows(real, f"PRAGMA table_info({table})") if row[1] not in skip]
        sql = f"SELECT {', '.join(f'[{c}]' for c in columns)} FROM {table} ORDER BY 1, 2"
        ours, theirs = _rows(made, sql), _rows(real, sql)
        assert len(ours) == len(theirs) == (1 if table == "runs" else 270)
        assert ours == theirs, table
    for sql in ("SELECT * FROM shapes", "SELECT * FROM usage_templates", "SELECT name FROM _batchrunner_migrations"):
        assert _rows(made, sql + " ORDER BY 1") == _rows(real, sql + " ORDER BY 1")
    assert _rows(made, "PRAGMA journal_mode") == [("wal",)]

    resumed = run_job(spec)
    assert resumed.exit_code == 0
    assert (resumed.already_done, resumed.counts.sent) == (270, 30)
