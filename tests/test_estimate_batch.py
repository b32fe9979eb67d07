"""`estimate` side by side: the remaining work online and at the batch price, what batch saves,
which figure heads the estimate for each `[api] mode`, and models the batch APIs do not serve.

The figures are checked against the price table's own arithmetic over the estimate's token
counts: qwen-plus costs 0.4 in / 1.2 out per million online and half that in batch, with no
cache discount in batch. Nothing here sends a request.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke_cli, write_job

from batchrunner import load_spec
from batchrunner.estimate import Estimate, estimate, render
from batchrunner.pricing import PriceTable, pusd_to_usd
from batchrunner.runner import prices_for
from batchrunner.wire import Usage

ROWS = [{"id": f"r{i}", "text": f"record {i}: sales rose in the north region"} for i in range(30)]
SYSTEM = "You are a careful analyst. Read the record and summarise its main point in one sentence. " * 80
PRICES = PriceTable.load()


def estimate_of(folder: Path, overrides: dict[str, dict[str, Any] | None] | None = None) -> Estimate:
    spec = load_spec(write_job(folder, ROWS, overrides))
    return estimate(spec, prices_for(spec))


def uncached(model: str, e: Estimate, table: PriceTable) -> int:
    """What the estimate's tokens cost at `table` with no cache hit (one tier: all requests are small)."""
    cost = table.cost(model, Usage(e.input_tokens, e.output_tokens_expected))
    assert cost is not None
    return cost.total_pusd


def test_online_job_shows_the_batch_figure_at_half_price(tmp_path: Path) -> None:
    e = estimate_of(tmp_path)
    assert (e.mode, e.headline, e.batch_api, e.batch_supported, e.batch_note) == (
        "online",
        "online",
        "Batch API",
        True,
        "",
    )
    assert e.output_tokens_expected == 32 * 30 and e.cached_tokens_expected == 0
    online, batch = uncached("qwen-plus", e, PRICES), uncached("qwen-plus", e, PRICES.for_batch())
    assert online == e.input_tokens * 400_000 + e.output_tokens_expected * 1_200_000  # pico-USD per token
    assert batch == e.input_tokens * 200_000 + e.output_tokens_expected * 600_000
    assert 2 * batch == online
    assert e.online_cost_usd == e.cost_expected_usd == pusd_to_usd(online)
    assert e.batch_cost_usd == pusd_to_usd(batch)
    assert e.batch_savings_usd == pusd_to_usd(online - batch)
    assert e.batch_savings_pct == 50.0
    assert e.cost_worst_usd == e.online_cost_worst_usd
    # the batch worst case: the same input bound, output at the plain price (a batch line always
    # sets enable_thinking, false when the job leaves it out); online may think, at 4.0
    assert e.input_tokens_bound is not None
    assert e.batch_cost_worst_usd == pytest.approx((e.input_tokens_bound * 0.2 + 32 * 30 * 0.6) / 1e6)
    assert e.online_cost_worst_usd == pytest.approx((e.input_tokens_bound * 0.4 + 32 * 30 * 4.0) / 1e6)
    lines = render(e).splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost:"))
    assert f"expected {pusd_to_usd(online):.6f} USD" in lines[cost]
    assert lines[cost + 1].startswith(f"in batch:       expected {pusd_to_usd(batch):.6f} USD")
    assert f"saves {pusd_to_usd(online - batch):.6f} USD (50.0%) against online" in lines[cost + 1]
    assert "limited by requests_per_minute" in lines[cost + 2]


def test_the_batch_figure_takes_no_cache_discount(tmp_path: Path) -> None:
    # a marked shared prefix: online, the first request writes it and the rest hit it at 10%
    e = estimate_of(tmp_path, {"prompt": {"system": SYSTEM, "cache": "system"}, "parameters": {"max_tokens": 16}})
    assert e.cached_tokens_expected > 0.8 * e.input_tokens
    batch = uncached("qwen-plus", e, PRICES.for_batch())
    assert e.batch_cost_usd == pusd_to_usd(batch)
    assert 2 * batch == uncached("qwen-plus", e, PRICES)
    assert e.online_cost_usd is not None and e.online_cost_usd < e.batch_cost_usd  # the cache beats the discount
    assert e.batch_savings_usd == pusd_to_usd(round(e.online_cost_usd * 1e12) - batch) < 0
    assert e.batch_savings_pct is not None and e.batch_savings_pct < 0
    assert "USD more than online with its cache hits" in render(e)


@pytest.mark.parametrize("mode", ["batch", "auto"])
def test_batch_modes_head_with_the_batch_figure_and_the_completion_window(tmp_path: Path, mode: str) -> None:
    overrides: dict[str, dict[str, Any] | None] = {
        "api": {"mode": mode},
        "batch": {"completion_window": "48h"},
        "parameters": {"enable_thinking": False},
    }
    if mode == "auto":
        overrides["batch"] = {"completion_window": "48h", "deadline": "6h"}
    e = estimate_of(tmp_path, overrides)
    assert (e.mode, e.headline, e.completion_window) == (mode, "batch", "48h")
    assert e.cost_expected_usd == e.batch_cost_usd == pusd_to_usd(uncached("qwen-plus", e, PRICES.for_batch()))
    assert e.cost_worst_usd == e.batch_cost_worst_usd
    assert e.online_cost_usd == pusd_to_usd(uncached("qwen-plus", e, PRICES))
    assert (e.duration_s, e.limited_by) == (48 * 3600, "[batch] completion_window (48h)")
    lines = render(e).splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost (batch):"))
    assert "(Batch API prices 2026-11-27+batch, no cache discount); saves" in lines[cost]
    assert lines[cost + 1].startswith(f"online:         expected {e.online_cost_usd:.6f} USD")
    assert lines[cost + 1].endswith(", to compare")
    assert lines[cost + 2].startswith("duration:       results within 48h ([batch] completion_window")
    assert "limited by" not in render(e)
    assert ("6h after the first submission goes online" in lines[cost + 2]) == (mode == "auto")


def test_batch_chat_is_priced_for_the_batch_chat_api_and_paced_like_online(tmp_path: Path) -> None:
    # qwen3-max: served by the Batch Chat API, not by the Batch API
    e = estimate_of(tmp_path, {"api": {"mode": "batch-chat"}, "model": {"name": "qwen3-max"}})
    assert (e.mode, e.headline, e.batch_api, e.batch_supported) == ("batch-chat", "batch", "Batch Chat API", True)
    assert e.completion_window is None  # synchronous calls: no batch files, no window
    assert e.cost_expected_usd == e.batch_cost_usd == pusd_to_usd(uncached("qwen3-max", e, PRICES.for_batch()))
    assert e.limited_by == "requests_per_minute" and e.duration_s < 60
    assert "Batch Chat API prices" in render(e)
    online = estimate_of(tmp_path / "online", {"model": {"name": "qwen3-max"}})
    assert (online.batch_api, online.batch_supported, online.batch_cost_usd) == ("Batch API", False, None)


def test_a_model_the_batch_api_does_not_serve(tmp_path: Path) -> None:
    e = estimate_of(tmp_path, {"model": {"name": "qwen3-coder-plus"}})
    assert e.batch_supported is False
    assert (e.batch_cost_usd, e.batch_cost_worst_usd, e.batch_savings_usd, e.batch_savings_pct) == (None,) * 4
    assert e.cost_expected_usd == e.online_cost_usd == pusd_to_usd(uncached("qwen3-coder-plus", e, PRICES))
    assert (
        "in batch:       not served by the Batch API (no batch_api = true in the price table)" in render(e).splitlines()
    )
    # a batch job of it has no headline price: the note, and online to compare
    batch = estimate_of(tmp_path / "b", {"model": {"name": "qwen3-coder-plus"}, "api": {"mode": "batch"}})
    assert (batch.headline, batch.cost_expected_usd, batch.cost_worst_usd) == ("batch", None, None)
    assert batch.online_cost_usd == e.online_cost_usd
    lines = render(batch).splitlines()
    assert "cost (batch):   not served by the Batch API (no batch_api = true in the price table)" in lines
    assert any(line.startswith(f"online:         expected {e.online_cost_usd:.6f} USD") for line in lines)


def test_a_model_unknown_to_the_batch_list_keeps_its_figure_with_a_note(tmp_path: Path) -> None:
    spec = load_spec(write_job(tmp_path, ROWS))
    table = dataclasses.replace(prices_for(spec), _batch={})  # priced, with no batch flags at all
    e = estimate(spec, table)
    assert (e.batch_supported, e.batch_note) == (None, "(unknown to the price table's batch list)")
    assert e.batch_cost_usd == pusd_to_usd(uncached("qwen-plus", e, PRICES.for_batch()))
    assert "no cache discount) (unknown to the price table's batch list); saves" in render(e)
    unpriced = estimate_of(tmp_path / "u", {"model": {"name": "no-such-model"}})
    assert (unpriced.batch_supported, unpriced.online_cost_usd, unpriced.batch_cost_usd) == (None, None, None)
    assert "cost:           no price for this model" in render(unpriced)


def test_json_carries_both_figures(tmp_path: Path) -> None:
    spec_path = write_job(tmp_path, ROWS, {"api": {"mode": "batch"}})
    result = invoke_cli("estimate", str(spec_path), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    spec = load_spec(spec_path)
    e = estimate(spec, prices_for(spec))
    assert doc == json.loads(json.dumps(e.to_dict()))
    assert doc["batch_supported"] is True and doc["headline"] == "batch" and doc["batch_api"] == "Batch API"
    assert (
        doc["cost_expected_usd"] == doc["batch_cost_usd"] == pusd_to_usd(uncached("qwen-plus", e, PRICES.for_batch()))
    )
    assert doc["batch_savings_usd"] == pytest.approx(doc["online_cost_usd"] - doc["batch_cost_usd"])
    assert doc["batch_savings_pct"] == 50.0 and doc["completion_window"] == "24h"
    coder = write_job(tmp_path / "c", ROWS, {"model": {"name": "qwen3-coder-plus"}})
    doc = json.loads(invoke_cli("estimate", str(coder), "--format", "json").output)
    assert (doc["batch_supported"], doc["batch_cost_usd"], doc["batch_savings_usd"]) == (False, None, None)
    assert doc["batch_note"].startswith("not served by the Batch API")
