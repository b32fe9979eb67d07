"""The live page (`run --dashboard`, `watch`) in a real browser, against a job that is still running.

A slow simulator (every answer waits LATENCY_MS, two requests at a time) keeps the job going
while headless Chromium loads the page from 127.0.0.1 and dumps its DOM; the test counts the
store's settled rows just before and just after the dump, and the page's rows-done card must
lie between. Every process is started by the `launch` fixture, which ends it with its group.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import API_KEY, invoke_cli, write_job
from test_htmlreport import chromium, read_dom  # noqa: F401 - the fixture, shared

from batchrunner import htmlreport
from batchrunner.simulator import FaultRule
from batchrunner.store import Store
from benchmarks.browser import dump_dom, screenshot

LATENCY_MS = 150
ROWS = [{"id": f"r{i}", "text": ("bad " if i % 7 == 3 else "") + f"secret prompt {i}"} for i in range(400)]
pytestmark = pytest.mark.sim(latency_ms=LATENCY_MS, faults=(FaultRule("bad ", ("always:DataInspectionFailed",)),))


def settled(db: Path, job: str = "job") -> int:
    """Rows done as `status` counts them (ok or failed for good)."""
    with Store(db, readonly=True) as store:
        counts = store.counts(job)
        return counts.get("ok", 0) + counts.get("failed", 0) - store.queued_count(job)


def store_of(spec: Path) -> Path:
    from batchrunner.spec import load

    return load(spec).db_path


def url_from(stream: IO[str]) -> str:
    """The `dashboard: URL` line the command prints first (bounded: a few lines at most)."""
    seen = []
    for _ in range(50):
        line = stream.readline()
        if not line:
            break
        if line.startswith("dashboard: "):
            return line.split(" ", 1)[1].strip()
        seen.append(line)
    pytest.fail("no dashboard URL printed: " + "".join(seen))


def get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def closed(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return write_job(
        tmp_path / "job",
        ROWS,
        {
            "job": {"name": "job"},
            "parameters": {"enable_thinking": False},
            "limits": {"concurrency": 2, "max_retries": 0, "max_cost_usd": 5.0},
        },
    )


def check_live_page(url: str, db: Path, sim: Any, png: Path | None = None) -> None:
    """The page drew its charts and its rows-done card lies between the counts around the dump."""
    status, body = get(url, "/data.json")
    assert status == 200 and b'"specs"' in body
    before = settled(db)
    dom = read_dom(dump_dom(url, budget_ms=5_000))
    after = settled(db)
    assert dom.body.get("data-drawn-ms"), "the page's script did not finish drawing"
    for name in ("run_rate", "run_in_flight", "errors_by_code", "latency"):
        assert sum(dom.marks.get(name, {}).values()) > 0, f"chart {name} drew no marks"
    done = int(dom.cards["rows_done"]["exact"])
    assert before <= done <= after, (before, done, after)
    assert 0 < done < len(ROWS), "the job should still be running"
    assert dom.cards["run_state"]["exact"] == "running"
    assert dom.cards["money_so_far"]["shown"].endswith("USD")
    assert int(dom.cards["ok"]["exact"]) + int(dom.cards["failed"]["exact"]) >= before
    page = get(url, "/")[1] + get(url, "/data.json")[1]
    assert b"secret prompt" not in page and API_KEY.encode() not in page
    assert b"<a href" not in page.split(b"<script>", 1)[0]  # nothing to click through to
    if png is not None:
        screenshot(url, png, size="1280,1400", budget_ms=5_000)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_dashboard_shows_the_running_job_and_stops_with_it(
    chromium: str,  # noqa: F811
    spec: Path,
    sim: Any,
    launch: Any,
    tmp_path: Path,
) -> None:
    proc = launch("run", str(spec), "--dashboard", stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = url_from(proc.stderr)
    assert url.startswith("http://127.0.0.1:")
    assert sim.sim.wait_for_requests(20, timeout=60)
    db = store_of(spec)
    check_live_page(url, db, sim, tmp_path / "dashboard.png")

    assert get(url, "/", host="evil.example:80")[0] == 403  # a DNS-rebinding page is refused
    assert get(url, "/data.json", host=f"evil.example:{url.rsplit(':', 1)[1].strip('/')}")[0] == 403

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the run ends, and the server with it
    assert proc.wait(timeout=60) == 130  # interrupted, resumable
    assert closed(url)


def test_watch_serves_a_run_already_going(chromium: str, spec: Path, sim: Any, launch: Any) -> None:  # noqa: F811
    run = launch("run", str(spec), "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert sim.sim.wait_for_requests(10, timeout=60)
    db = store_of(spec)
    watch = launch("watch", str(spec), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = url_from(watch.stderr)
    check_live_page(url, db, sim)
    os.killpg(watch.pid, signal.SIGINT)
    assert watch.wait(timeout=30) == 0
    assert closed(url)
    assert run.poll() is None  # watching never touched the run

    until = launch("watch", str(spec), "--until-done", stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = url_from(until.stderr)
    os.killpg(run.pid, signal.SIGINT)  # the run ends: `--until-done` ends with it
    assert run.wait(timeout=60) == 130
    assert until.wait(timeout=30) == 0
    assert closed(url)


def test_dashboard_without_the_extra_names_it_and_sends_nothing(
    spec: Path, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(htmlreport, "_has", lambda module: module != "altair")
    done = invoke_cli("run", str(spec), "--dashboard", "0")
    assert done.exit_code == 2, done.output
    assert "--dashboard needs altair" in done.output and "pip install 'batchrunner[html]'" in done.output
    assert sim.sim.stats()["requests"] == 0
    assert not (spec.parent / "job.db").exists()


def test_watch_without_a_store_says_so(spec: Path) -> None:
    done = invoke_cli("watch", str(spec))
    assert done.exit_code == 2 and "no store" in done.output
