"""`report --format html` in a real browser: a simulated job's store, the page written from it,
Debian's headless Chromium loading it from disk with the network off, and the rendered DOM read back.

The job has rows the simulator refuses (DataInspectionFailed), rows answered 429 and 500 before
an answer (retries), and a long system prompt (implicit cache hits after the first row), so
every chart has data. One row id holds `</script>` to prove the page escapes what it embeds.

The browser is found by `chromium` (benchmarks/browser.py). Without it the browser tests skip,
except where BATCHRUNNER_REQUIRE_BROWSER=1 (set by .ci/run): there they fail.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke_cli, write_job

from batchrunner import htmlreport, run_job
from batchrunner.charts import CHARTS
from batchrunner.htmlpage import _script_json
from batchrunner.simulator import FaultRule
from benchmarks.browser import dump_dom, find_chromium, screenshot

ODD_ID = "x</script><b>9"


def _text(i: int) -> str:
    return ("bad " if i % 9 == 0 else "limited " if i == 7 else "flaky " if i % 5 == 0 else "") + f"n{i}"


ROWS = [{"id": ODD_ID if i == 9 else f"r{i}", "text": _text(i)} for i in range(30)]
# One 429 only: the pacer slows the run after each (pacing.py), and a test should stay quick.
FAULTS = (
    FaultRule("bad ", ("always:DataInspectionFailed",)),
    FaultRule("limited ", (429,)),
    FaultRule("flaky ", (500, 503)),
)
SYSTEM = "You answer briefly and carefully. " * 60  # >= 256 tokens: implicit cache hits
pytestmark = pytest.mark.sim(faults=FAULTS)


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("BATCHRUNNER_REQUIRE_BROWSER") == "1":
            pytest.fail("BATCHRUNNER_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed here (apt-get install -y chromium); CI installs it")
    return found


@pytest.fixture
def store(tmp_path: Path, sim: Any) -> Path:
    """The store of a finished simulated job with failures, retries, 429s and cache hits."""
    spec = write_job(tmp_path / "job", ROWS, {"prompt": {"system": SYSTEM}, "limits": {"max_retries": 3}})
    summary = run_job(spec, handle_signals=False)
    assert summary.counts.failed == 4 and summary.counts.ok == 26
    return summary.db_path


class Dom(HTMLParser):
    """What the test reads from the dumped DOM: per chart div the marks drawn (a `path` with a
    non-empty `d` inside a `g.mark-*`), the cards, the empty-chart notes and the failed table's ids."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.marks: dict[str, dict[str, int]] = {}
        self.svgs: dict[str, int] = {}
        self.cards: dict[str, dict[str, str]] = {}
        self.empty: list[str] = []
        self.text_of: list[str] | None = None
        self.codes: list[str] = []
        self.body: dict[str, str] = {}

    def _chart(self) -> str | None:
        for _, attrs in self.stack:
            if "data-chart" in attrs:
                return attrs["data-chart"]
        return None

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        if tag == "body":
            self.body = attrs
        chart = self._chart()
        if chart is not None and tag == "svg":
            self.svgs[chart] = self.svgs.get(chart, 0) + 1
        if chart is not None and tag == "path" and attrs.get("d", "").strip():
            kinds = [c for _, a in self.stack for c in a.get("class", "").split() if c.startswith("mark-")]
            if kinds:
                drawn = self.marks.setdefault(chart, {})
                drawn[kinds[-1]] = drawn.get(kinds[-1], 0) + 1
        if "data-empty" in attrs:
            self.empty.append(attrs["data-empty"])
        if tag == "div" and "card" in attrs.get("class", "").split():
            self.cards[attrs["data-key"]] = {"exact": attrs["data-value"]}
        if tag == "div" and attrs.get("class") == "value":
            self.text_of = []
        if tag == "code":
            self.text_of = []
        if tag not in ("path", "br", "meta", "rect", "line", "circle", "img", "input"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if self.text_of is not None and tag in ("div", "code"):
            text = "".join(self.text_of)
            if tag == "div":
                last = list(self.cards)[-1]
                self.cards[last]["shown"] = text
            else:
                self.codes.append(text)
            self.text_of = None
        if any(t == tag for t, _ in self.stack):
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self.text_of is not None:
            self.text_of.append(data)


def read_dom(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


def test_every_chart_draws_its_marks_and_the_cards_equal_the_text_report(
    chromium: str, store: Path, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    done = invoke_cli("report", str(store), "--format", "html", "--output", str(page))
    assert done.exit_code == 0, done.output
    totals = json.loads(invoke_cli("report", str(store), "--format", "json").output)["totals"]

    dom = read_dom(dump_dom(page))
    assert dom.body.get("data-drawn-ms"), "the page's script did not finish drawing"
    assert dom.empty == []  # this job has data for every chart
    assert set(dom.svgs) == set(CHARTS)
    for name in CHARTS:
        drawn = dom.marks.get(name, {})
        assert sum(drawn.values()) > 0, f"chart {name} drew no marks: {drawn}"
    assert dom.marks["cost_by_day"].get("mark-rect", 0) >= 1
    assert dom.marks["run_rate"].get("mark-line", 0) >= 1
    assert dom.marks["errors_by_code"].get("mark-rect", 0) >= 2  # DataInspectionFailed, 429, 500

    for key in ("ok", "failed", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"):
        assert int(dom.cards[key]["exact"]) == totals[key], key
        assert dom.cards[key]["shown"] == f"{totals[key]:,}", key
    for key in ("cost_usd", "cache_saved_usd"):
        assert dom.cards[key]["exact"] == totals[key], key
        assert dom.cards[key]["shown"] == f"{float(totals[key]):.6f} USD", key
    assert totals["cached_tokens"] > 0 and totals["failed"] == 4
    assert dom.cards["pending"]["exact"] == "0" and dom.cards["skipped"]["exact"] == "0"
    assert dom.cards["batch_saved_usd"]["exact"] == "0.000000000000"  # an online job
    assert ODD_ID in dom.codes  # shown as text in the failed rows' table, not parsed as markup

    png = screenshot(page, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_store_without_failures_says_so_where_their_charts_would_be(chromium: str, tmp_path: Path, sim: Any) -> None:
    spec = write_job(tmp_path / "job", [{"id": f"r{i}", "text": f"n{i}"} for i in range(5)])
    summary = run_job(spec, handle_signals=False)
    page = tmp_path / "report.html"
    assert invoke_cli("report", str(spec), "--format", "html", "--output", str(page)).exit_code == 0
    dom = read_dom(dump_dom(page))
    assert dom.body.get("data-drawn-ms")
    assert set(dom.empty) == {"errors_by_code", "failed_rows"}
    assert all(sum(dom.marks.get(name, {}).values()) > 0 for name in set(CHARTS) - set(dom.empty))
    assert int(dom.cards["ok"]["exact"]) == summary.counts.ok == 5


@pytest.fixture
def small_store(tmp_path: Path, sim: Any) -> Path:
    spec = write_job(tmp_path / "small", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}])
    return run_job(spec, handle_signals=False).db_path


def test_html_needs_an_output_file(small_store: Path) -> None:
    done = invoke_cli("report", str(small_store), "--format", "html")
    assert done.exit_code == 2 and "--output" in done.output


def test_without_the_extra_it_names_it_and_writes_nothing(
    tmp_path: Path, small_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(htmlreport, "_has", lambda module: module != "vl_convert")
    page = tmp_path / "report.html"
    done = invoke_cli("report", str(small_store), "--format", "html", "--output", str(page))
    assert done.exit_code == 2
    assert "vl-convert-python" in done.output and "pip install 'batchrunner[html]'" in done.output
    assert not page.exists()


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = _script_json({"message": "</script><script>alert(1)</script><!--"})
    assert "<" not in text
    assert json.loads(text) == {"message": "</script><script>alert(1)</script><!--"}
