"""A job sharded over Ray, seen as one with a per-shard breakdown in `status`, `report` (table and
json) and the HTML report; a job never sharded shows no shard section anywhere.

Each store is a real simulated job's store; its manifest is then written through the Store API
(save_shard_plan, update_shard), as the Ray driver writes it: no Ray is started here (the Ray
end-to-end tests cover the driver).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke_cli, write_job
from test_htmlreport import read_dom

from batchrunner import htmlreport, run_job, shardviews
from batchrunner.charts import CHARTS, SHARDS
from batchrunner.store import Store
from benchmarks.browser import dump_dom, find_chromium

NODE = "3f2a9c1e" + "0123456789abcdef" * 3  # a Ray node id: 56 hex digits
SETUP = "ShardSetupError: cannot write the shared location /mnt/shared/t on node 3f2a9c1e (read-only file system)"
ROWS = 20


@pytest.fixture
def spec(tmp_path: Path, sim: Any) -> Path:
    """A finished simulated job of 20 rows (job `t`), not sharded."""
    path = write_job(tmp_path / "job", [{"id": f"r{i}", "text": f"n{i}"} for i in range(ROWS)])
    summary = run_job(path, handle_signals=False)
    assert summary.counts.ok == ROWS
    STORES[path] = summary.db_path
    return path


STORES: dict[Path, Path] = {}  # spec -> its store


def db_of(spec: Path) -> Path:
    return STORES[spec]


def shard_it(db: Path, ranges: list[tuple[int, int]], **per_shard: dict[str, Any]) -> None:
    """A manifest for job `t` over `ranges`; every shard merged with exit 0 (its rows done and
    ok, 1,000,000 pico-USD a row) unless `per_shard["<n>"]` says otherwise."""
    with Store(db) as store:
        store.save_shard_plan("t", rows=ranges[-1][1], input_signature="sig", shared_dir="/mnt/shared", ranges=ranges)
        for n, (first, end) in enumerate(ranges):
            rows = end - first
            fields: dict[str, Any] = {"state": "merged", "exit_code": 0, "node": NODE, "tries": 1}
            fields.update(rows_done=rows, sent=rows, ok=rows, input_tokens=10 * rows, output_tokens=3 * rows)
            fields.update(cost_pusd=1_000_000 * rows, merged_at="2026-12-02T10:00:00+00:00")
            fields.update(per_shard.get(str(n), {}))
            store.update_shard("t", n, **fields)


def four_shards(db: Path) -> None:
    shard_it(
        db,
        [(0, 5), (5, 10), (10, 15), (15, 20)],
        **{
            "1": {"state": "running", "exit_code": None, "rows_done": 0, "ok": 0, "cost_pusd": 0, "tries": 2},
            "2": {"state": "failed", "exit_code": None, "node": None, "rows_done": 0, "ok": 0, "message": SETUP},
            "3": {"state": "merged", "exit_code": 1, "ok": 3, "failed": 2},
        },
    )


def status(spec: Path) -> str:
    done = invoke_cli("status", str(spec))
    assert done.exit_code == 0, done.output
    return str(done.output)


def report(spec: Path, *args: str) -> str:
    done = invoke_cli("report", str(spec), *args)
    assert done.exit_code == 0, done.output
    return str(done.output)


def html_page(spec: Path, out: Path) -> str:
    done = invoke_cli("report", str(spec), "--format", "html", "--output", str(out))
    assert done.exit_code == 0, done.output
    return out.read_text(encoding="utf-8")


def test_a_job_never_sharded_has_no_shard_section_anywhere(spec: Path, tmp_path: Path) -> None:
    db = db_of(spec)
    with Store(db, readonly=True) as store:
        assert store.has_shards() and store.shards("t") == [] and store.sharded_jobs() == []
    assert "\nshards: " not in status(spec)  # (the tmp path holds "sharded")
    assert "Shards of job" not in report(spec)
    assert "shards" not in json.loads(report(spec, "--format", "json"))
    data = htmlreport.gather([spec])
    assert data["shards"] == []
    page = html_page(spec, tmp_path / "r.html")
    assert "<h2>Shards</h2>" not in page and f'data-chart="{SHARDS}"' not in page


def test_status_shows_the_job_as_one_and_the_shards_that_need_a_look(spec: Path) -> None:
    before = status(spec)
    four_shards(db_of(spec))
    text = status(spec)
    assert text.startswith(before)  # what status said stays, the shards come after it
    lines = text[len(before) :].splitlines()
    assert lines[0] == "shards: 4 over rows 0-19: 2 merged (1 exited non-zero), 1 running, 1 failed"
    assert lines[1] == "  as the shards last reported: done 10 of 20 rows, ok 8, failed 2, cost 0.000015 USD"
    header, *shown = lines[2:]
    assert header.split() == ["shard", "rows", "state", "node", "done/rows", "ok", "failed", "cost_usd", "tries",
                              "message"]  # fmt: skip
    # the worst first: the failed shard, then the one merged with exit 1, then the running one; not shard 0
    assert [line.split()[0] for line in shown] == ["2", "3", "1"]
    failed = shown[0]
    assert "10-14" in failed and "failed" in failed and SETUP in failed and "0/5" in failed
    assert "merged, exit 1" in shown[1] and "3f2a9c1e" in shown[1] and NODE not in shown[1]
    assert "running" in shown[2] and shown[2].split()[-1] == "2"  # its tries; no message
    assert all(len(line) < 240 for line in lines)


def test_status_lists_twenty_shards_and_says_how_many_more(spec: Path) -> None:
    ranges = [(n * 10, n * 10 + 10) for n in range(30)]
    interrupted = {str(n): {"state": "interrupted", "exit_code": 130} for n in range(5, 30)}  # 25 need a look
    shard_it(db_of(spec), ranges, **interrupted)
    lines = status(spec).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("shards: "))
    assert lines[at] == "shards: 30 over rows 0-299: 5 merged, 25 interrupted"
    listed = lines[at + 3 : at + 3 + 20]
    assert [line.split()[0] for line in listed] == [str(n) for n in range(5, 25)]
    assert lines[at + 23] == (
        "  ... and 5 more (5 interrupted); `batchrunner report JOB --format json` lists every shard"
    )
    assert len(lines) == at + 24


def test_report_adds_a_table_per_sharded_job_and_json_lists_every_shard(spec: Path) -> None:
    before = report(spec)
    four_shards(db_of(spec))
    text = report(spec)
    assert text.startswith(before)  # the usage table is unchanged; the shard table follows
    extra = text[len(before) :].splitlines()
    assert extra[0] == ""
    assert extra[1].startswith("Shards of job t (") and extra[1].endswith(
        "): 4 over rows 0-19: 2 merged (1 exited non-zero), 1 running, 1 failed"
    )
    header = extra[2].split()
    assert header == ["shard", "rows", "state", "node", "done", "ok", "failed", "input_tokens", "output_tokens",
                      "cost_usd"]  # fmt: skip
    rows = {line.split()[0]: line for line in extra[4:8]}
    assert set(rows) == {"0", "1", "2", "3"}
    assert rows["0"].split() == ["0", "0-4", "merged", "3f2a9c1e", "5", "5", "0", "50", "15", "0.000005"]
    assert rows["2"].split()[2:4] == ["failed", "-"]
    assert extra[9].split() == ["TOTAL", "10", "8", "2", "200", "60", "0.000015"]
    assert len(extra) == 10  # no truncation note for 4 shards

    doc = json.loads(report(spec, "--format", "json"))
    shards = doc["shards"]
    assert [s["shard"] for s in shards] == [0, 1, 2, 3] and {s["job"] for s in shards} == {"t"}
    assert shards[2]["state"] == "failed" and shards[2]["message"] == SETUP and shards[2]["node"] is None
    assert shards[0]["node"] == NODE and shards[0]["rows"] == 5 and shards[0]["cost_usd"] == "0.000005000000"
    assert shards[3]["exit_code"] == 1 and shards[1]["tries"] == 2
    assert "cost_pusd" not in shards[0]
    csv_text = report(spec, "--format", "csv")
    assert "shard" not in csv_text  # one line per group, as before


def test_a_report_of_many_shards_shows_fifty_and_sums_the_rest(spec: Path) -> None:
    ranges = [(n * 10, n * 10 + 10) for n in range(60)]
    special = {"7": {"state": "failed", "exit_code": None, "message": "boom"}}
    special |= {str(n): {"cost_pusd": 99_000_000} for n in (58, 59)}  # the costliest two
    special |= {str(n): {"cost_pusd": 1_000} for n in range(40, 58)}  # the cheapest
    shard_it(db_of(spec), ranges, **special)
    extra = report(spec).split("Shards of job t", 1)[1].splitlines()
    body = extra[3:-3]
    assert len(body) == 51  # 50 shards and the line summing the other 10
    shown = [line.split()[0] for line in body[:-1]]
    assert "7" in shown and "58" in shown and "59" in shown  # the failed one, the costliest
    assert body[-1].split()[:3] == ["+10", "10", "merged"]
    assert extra[-2].split()[:2] == ["TOTAL", "600"]
    assert extra[-1].startswith("50 of 60 shards shown")
    assert len(json.loads(report(spec, "--format", "json"))["shards"]) == 60


def test_pick_keeps_shards_that_need_a_look_first() -> None:
    shards = [{"shard": n, "state": "merged", "exit_code": 0, "cost_pusd": n} for n in range(10)]
    shards[0] = {**shards[0], "state": "failed", "exit_code": None}
    shown, rest = shardviews.pick(shards, 3)
    assert [s["shard"] for s in shown] == [0, 8, 9] and len(rest) == 7
    assert shardviews.pick(shards[:3], 3) == (shards[:3], [])


def test_html_report_has_a_shards_section_with_a_chart_and_a_table(spec: Path, tmp_path: Path) -> None:
    four_shards(db_of(spec))
    page = html_page(spec, tmp_path / "r.html")
    assert "<h2>Shards</h2>" in page and f'data-chart="{SHARDS}"' in page
    section = page.split("<h2>Shards</h2>", 1)[1].split("<footer>", 1)[0]
    assert "4 over rows 0-19: 2 merged (1 exited non-zero), 1 running, 1 failed" in section
    assert section.count("<tr data-shard=") == 4 and "data-state='failed'" in section
    assert SETUP in section and "3f2a9c1e" in section and NODE not in section
    assert "http://" not in section and "https://" not in section  # nothing to fetch


def test_html_table_of_many_shards_is_cut_at_fifty() -> None:
    found = [
        shardviews.JobShards(
            Path("s.sqlite"),
            "t",
            tuple(
                {
                    "shard": n,
                    "first_row": n,
                    "end_row": n + 1,
                    "state": "merged",
                    "exit_code": 0,
                    "node": None,
                    "tries": 1,
                    "rows_done": 1,
                    "sent": 1,
                    "ok": 1,
                    "failed": 0,
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "cost_pusd": n,
                    "message": None,
                }  # fmt: skip
                for n in range(70)
            ),
        )
    ]
    table = shardviews.html_table(shardviews.html_rows(found, many_stores=False))
    assert table.count("<tr data-shard=") == 50
    assert "20 more shard(s) not listed (20 merged)" in table


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("BATCHRUNNER_REQUIRE_BROWSER") == "1":
            pytest.fail("BATCHRUNNER_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed here (apt-get install -y chromium); CI installs it")
    return found


def test_the_shards_chart_draws_in_a_browser(chromium: str, spec: Path, tmp_path: Path) -> None:
    four_shards(db_of(spec))
    page = tmp_path / "r.html"
    html_page(spec, page)
    dom = read_dom(dump_dom(page))
    assert dom.body.get("data-drawn-ms"), "the page's script did not finish drawing"
    assert set(dom.svgs) >= {*CHARTS, SHARDS} - set(dom.empty)
    drawn = dom.marks.get(SHARDS, {})
    assert drawn.get("mark-rect", 0) >= 4, drawn  # the grey bars of the shards' rows, at least
