"""The benchmark command runs end to end in quick mode and reports what it promises.

No timing target is asserted (the machine may be shared); only that the table and the JSON
come out with the expected keys and sane values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchrunner.bench import Line, parse_only, render_table
from batchrunner.bench_data import prompt_table
from batchrunner.bench_sample import Sample, steady_window

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DASHSCOPE_BASE_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchrunner.bench",
            "--quick",
            "--only",
            "S1,S2b",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for label in ("scenario", "S1 overhead-bound", "S2b 1 s latency", "S2b steady CPU per request"):
        assert label in table
    assert "PASS" in table or "MISS" in table

    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert set(report) >= {"meta", "scenarios", "table", "table_text"}
    assert report["meta"]["quick"] is True
    assert set(report["scenarios"]) == {"S1", "S2b"}
    assert report["table_text"] == table.rstrip("\n")

    s1 = report["scenarios"]["S1"]
    for side in ("batchrunner", "baseline"):
        figures = s1[side]
        assert figures["rows_per_s"] > 0
        assert figures["cpu_s_per_1k_rows"] > 0
        assert figures["ok"] == s1["rows"]
        assert isinstance(figures["throttled"], int)
        assert figures["peak_rss_mb"] > 0
    assert s1["batchrunner"]["exit_code"] == 0
    assert s1["ratio_rows_per_s"] > 0
    assert isinstance(s1["pass"], bool)

    s2b = report["scenarios"]["S2b"]
    assert len(s2b["runs"]) == 3
    for run in s2b["runs"].values():
        figures = run["batchrunner"]
        assert figures["ok"] == run["rows"]
        assert figures["rate_ratio"] is not None and figures["rate_ratio"] > 0
        assert isinstance(figures["sim_throttled"], int) and figures["sim_throttled"] == 0
        assert figures["cpu_ms_per_request"] > 0
    assert isinstance(s2b["pass"], bool)
    assert {row["scenario"].split()[0] for row in report["table"]} == {"S1", "S2b"}


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
    assert parse_only(None) == ["S1", "S2", "S2b", "S3"]
    with pytest.raises(Exception, match="unknown"):
        parse_only("S9")
    text = render_table([Line("S1 x", "1 rows/s", verdict="PASS")])
    assert text.splitlines()[0].startswith("scenario") and "PASS" in text
