"""`estimate` projects cache hits: from the shared prefix marked for the explicit cache before a
run, from the store's history after one, and says what it assumed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_job

from batchrunner import load_spec, run_job
from batchrunner.cli import cli
from batchrunner.estimate import estimate
from batchrunner.runner import prices_for
from batchrunner.simulator import SimulatorConfig, ThreadHandle, serve_in_thread

SYSTEM = "You are a careful analyst. Read the record and summarise its main point in one sentence. " * 80
ROWS = [{"id": f"r{i}", "text": f"record {i}: sales rose in the north region"} for i in range(40)]
CACHED = {"prompt": {"system": SYSTEM, "cache": "system"}, "parameters": {"max_tokens": 16}}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    with serve_in_thread(SimulatorConfig(), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-estimate")
        yield handle


def test_a_marked_shared_prefix_is_projected_as_cache_hits(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS, CACHED)
    spec = load_spec(spec_path)
    before = estimate(spec, prices_for(spec))
    assert "prefix marked for the explicit cache is written by the first request" in before.cache_basis
    assert before.cached_tokens_expected > 0.8 * before.input_tokens
    plain = load_spec(write_job(tmp_path / "plain", ROWS, {**CACHED, "prompt": {"system": SYSTEM}}))
    uncached = estimate(plain, prices_for(plain))
    assert "no cache hits assumed" in uncached.cache_basis
    assert before.cost_expected_usd is not None and uncached.cost_expected_usd is not None
    assert before.cost_expected_usd < 0.3 * uncached.cost_expected_usd
    summary = run_job(spec_path, handle_signals=False)
    actual = summary.counts.cost_usd
    assert before.cost_expected_usd == pytest.approx(actual, rel=0.15)  # not 3x as much
    text = CliRunner().invoke(cli, ["estimate", str(spec_path)]).output
    assert "cache:" in text


def test_the_hit_rate_of_finished_rows_is_projected(tmp_path: Path, sim: ThreadHandle) -> None:
    spec_path = write_job(tmp_path, ROWS, CACHED)
    spec = load_spec(spec_path)
    first = run_job(spec_path, handle_signals=False, limit=10)
    after = estimate(spec, prices_for(spec))
    assert after.requests_remaining == 30
    assert "hit the cache (explicit) in the answers on record" in after.cache_basis
    rest = run_job(spec_path, handle_signals=False)
    assert first.counts.cost_pusd > 0
    # within a third (it assumes the first request writes the cache again; here it was still warm),
    # where assuming no hits would be 7 times too high
    assert after.cost_expected_usd == pytest.approx(rest.counts.cost_usd, rel=0.35)
