"""The price table and cost arithmetic, checked against figures worked out by hand.

Prices are USD per million tokens, so a price of p is p * 1e6 pico-USD per token:
qwen-plus input 0.4 -> 400_000, output 1.2 -> 1_200_000, thinking output 4.0 -> 4_000_000.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from batchrunner.errors import SpecError
from batchrunner.pricing import ROUNDING_SLACK, Cost, PriceTable, format_usd, usd
from batchrunner.wire import Usage


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


EPHEMERAL = {"prompt_tokens_details": {"cache_type": "ephemeral"}}  # the usage of an explicit-cache hit


def usage(input_tokens: int = 0, output_tokens: int = 0, **more: Any) -> Usage:
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, **more)


# --------------------------------------------------------------------------- the worked check


def test_worked_check_from_the_issue(table: PriceTable) -> None:
    # qwen-plus, 2,000 input tokens of which 1,024 cached (implicit), 100 output:
    # (976 * 0.4 + 1024 * 0.08 + 100 * 1.2) / 1e6 USD = 0.00059232 USD
    cost = table.cost("qwen-plus", usage(2000, 100, cached_tokens=1024), thinking=False)
    assert cost is not None
    assert cost.input_pusd == 976 * 400_000 == 390_400_000
    assert cost.cached_pusd == 1024 * 80_000 == 81_920_000
    assert cost.cache_creation_pusd == 0
    assert cost.output_pusd == 100 * 1_200_000 == 120_000_000
    assert cost.total_pusd == 592_320_000
    assert usd(cost.total_pusd) == Decimal("0.00059232")
    assert cost.saved_pusd == 1024 * (400_000 - 80_000) == 327_680_000
    assert (cost.model, cost.tier_up_to, cost.priced) == ("qwen-plus", 256_000, True)


# --------------------------------------------------------------------------- tiers


def test_input_exactly_at_the_tier_bound_uses_that_tier(table: PriceTable) -> None:
    cost = table.cost("qwen-plus", usage(256_000, 10), thinking=False)
    assert cost is not None
    assert cost.tier_up_to == 256_000
    assert cost.input_pusd == 256_000 * 400_000
    assert cost.output_pusd == 10 * 1_200_000


def test_one_token_above_the_bound_uses_the_next_tier(table: PriceTable) -> None:
    cost = table.cost("qwen-plus", usage(256_001, 10), thinking=False)
    assert cost is not None
    assert cost.tier_up_to == 1_000_000
    assert cost.input_pusd == 256_001 * 1_200_000 == 307_201_200_000
    assert cost.output_pusd == 10 * 3_600_000


def test_beyond_the_last_tier_uses_the_last_tier(table: PriceTable) -> None:
    # qwen3-max's last tier covers up to 252K at 3 / 15
    cost = table.cost("qwen3-max", usage(300_000, 1), thinking=False)
    assert cost is not None
    assert cost.tier_up_to == 252_000
    assert cost.input_pusd == 300_000 * 3_000_000
    assert cost.output_pusd == 15_000_000


def test_flat_model_has_one_unbounded_tier(table: PriceTable) -> None:
    cost = table.cost("qwen-max", usage(5_000_000, 1000), thinking=False)
    assert cost is not None
    assert cost.tier_up_to is None
    assert cost.total_pusd == 5_000_000 * 1_600_000 + 1000 * 6_400_000


def test_qwen3_max_middle_tier(table: PriceTable) -> None:
    cost = table.cost("qwen3-max", usage(32_001, 100), thinking=False)
    assert cost is not None
    assert (cost.tier_up_to, cost.input_pusd, cost.output_pusd) == (128_000, 32_001 * 2_400_000, 100 * 12_000_000)


# --------------------------------------------------------------------------- thinking


def test_thinking_output_price(table: PriceTable) -> None:
    cost = table.cost("qwen-plus", usage(1000, 100), thinking=True)
    assert cost is not None
    assert cost.output_pusd == 100 * 4_000_000 == 400_000_000
    assert cost.total_pusd == 1000 * 400_000 + 400_000_000


def test_reasoning_tokens_mean_thinking_even_if_not_told(table: PriceTable) -> None:
    cost = table.cost("qwen-plus", usage(1000, 100, reasoning_tokens=60), thinking=False)
    assert cost is not None
    assert cost.output_pusd == 100 * 4_000_000


def test_thinking_price_of_the_second_tier(table: PriceTable) -> None:
    cost = table.cost("qwen-plus", usage(300_000, 100), thinking=True)
    assert cost is not None
    assert cost.output_pusd == 100 * 12_000_000


def test_thinking_without_a_thinking_price_bills_the_output_price(table: PriceTable) -> None:
    cost = table.cost("qwen-flash", usage(1000, 100), thinking=True)
    assert cost is not None
    assert cost.output_pusd == 100 * 400_000


# --------------------------------------------------------------------------- caches


def test_explicit_cache_creation(table: PriceTable) -> None:
    # 5,000 input: 3,000 written to the cache (125% of 0.4 = 0.5), 2,000 uncached
    cost = table.cost("qwen-plus", usage(5000, 0, cache_creation_input_tokens=3000), thinking=False)
    assert cost is not None
    assert cost.input_pusd == 2000 * 400_000 == 800_000_000
    assert cost.cache_creation_pusd == 3000 * 500_000 == 1_500_000_000
    assert cost.total_pusd == 2_300_000_000
    assert cost.saved_pusd == -3000 * (500_000 - 400_000) == -300_000_000


def test_explicit_cache_hit(table: PriceTable) -> None:
    # 3,010 input: 3,000 hit the explicit cache (10% of 0.4 = 0.04), 10 internal tokens uncached
    cost = table.cost("qwen-plus", usage(3010, 10, cached_tokens=3000, raw=EPHEMERAL), thinking=False)
    assert cost is not None
    assert cost.input_pusd == 10 * 400_000
    assert cost.cached_pusd == 3000 * 40_000 == 120_000_000
    assert cost.output_pusd == 10 * 1_200_000
    assert cost.total_pusd == 4_000_000 + 120_000_000 + 12_000_000
    assert cost.saved_pusd == 3000 * 360_000


def test_creation_and_hit_in_one_request(table: PriceTable) -> None:
    u = usage(4008, 0, cached_tokens=3000, cache_creation_input_tokens=1000)
    cost = table.cost("qwen-plus", u, thinking=False)
    assert cost is not None
    assert (cost.input_pusd, cost.cached_pusd, cost.cache_creation_pusd) == (8 * 400_000, 3000 * 40_000, 1000 * 500_000)
    assert cost.saved_pusd == 3000 * 360_000 - 1000 * 100_000


def test_usage_showing_the_explicit_cache_bills_explicit_prices(table: PriceTable) -> None:
    raw = {"prompt_tokens_details": {"cached_tokens": 3000, "cache_type": "ephemeral"}}
    u = Usage(input_tokens=3000, cached_tokens=3000, raw=raw)
    cost = table.cost("qwen-plus", u, thinking=False)
    assert cost is not None
    assert cost.cached_pusd == 3000 * 40_000
    created = table.cost("qwen-plus", usage(1000, 0, cache_creation_input_tokens=1000), thinking=False)
    assert created is not None
    assert created.cache_creation_pusd == 1000 * 500_000


def test_model_cache_prices_win_over_the_ratios(table: PriceTable) -> None:
    # qwen3.8-flash: creation 0.2, cache read 0.016 for either cache (not 125% / 10% / 20% of 0.15)
    implicit = table.cost("qwen3.8-flash", usage(2000, 0, cached_tokens=1000), thinking=False)
    explicit = table.cost(
        "qwen3.8-flash",
        usage(2000, 0, cached_tokens=1000, cache_creation_input_tokens=1000),
        thinking=False,
    )
    assert implicit is not None and explicit is not None
    assert implicit.cached_pusd == explicit.cached_pusd == 1000 * 16_000
    assert implicit.input_pusd == 1000 * 150_000
    assert explicit.cache_creation_pusd == 1000 * 200_000
    # qwen3.7-max: implicit hit 0.5, explicit hit 0.25
    hit = usage(1000, 0, cached_tokens=1000)
    max_i = table.cost("qwen3.7-max", hit, thinking=False)
    max_e = table.cost("qwen3.7-max", usage(1000, 0, cached_tokens=1000, raw=EPHEMERAL), thinking=False)
    assert max_i is not None and max_e is not None
    assert (max_i.cached_pusd, max_e.cached_pusd) == (1000 * 500_000, 1000 * 250_000)
    # qwen3-coder-plus second tier: explicit hit 0.18 from the table, implicit hit 20% of 1.8
    big = usage(40_000, 0, cached_tokens=10_000)
    coder_e = table.cost("qwen3-coder-plus", usage(40_000, 0, cached_tokens=10_000, raw=EPHEMERAL), thinking=False)
    coder_i = table.cost("qwen3-coder-plus", big, thinking=False)
    assert coder_e is not None and coder_i is not None
    assert (coder_e.cached_pusd, coder_i.cached_pusd) == (10_000 * 180_000, 10_000 * 360_000)


def test_model_ratio_override() -> None:
    table = PriceTable.load(
        [{"models": {"m": {"tiers": [{"input": 1.0, "output": 2.0}], "implicit_cache_hit_ratio": 0.5}}}]
    )
    cost = table.cost("m", usage(100, 0, cached_tokens=100), thinking=False)
    assert cost is not None
    assert cost.cached_pusd == 100 * 500_000


# --------------------------------------------------------------------------- unpriced models


@pytest.mark.parametrize("model", ["qwen3.6-plus", "qwen3-vl-flash", "qwen3-32b", "no-such-model"])
def test_a_model_without_a_price_has_no_cost(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None
    assert table.cost(model, usage(100, 100), thinking=False) is None
    assert table.worst_case(model, 100, 100, thinking=False, cache_writes=False) is None


def test_unpriced_placeholder() -> None:
    cost = Cost.unpriced("qwen3.6-plus")
    assert not cost.priced and cost.total_pusd == 0 and cost.model == "qwen3.6-plus"


# --------------------------------------------------------------------------- lookup and worst case


def test_lookup_by_alias_ignores_case(table: PriceTable) -> None:
    for name in ("qwen-plus", "QWEN-PLUS-LATEST", "qwen-plus-2025-07-28", " Qwen-Plus "):
        found = table.lookup(name)
        assert found is not None and found.name == "qwen-plus"
    older = table.lookup("qwen-plus-2025-04-28")
    assert older is not None and older.name == "qwen-plus-2025-07-14"
    cost = table.cost("qwen-plus-latest", usage(1000, 0), thinking=False)
    assert cost is not None and cost.model == "qwen-plus"


def test_worst_case(table: PriceTable) -> None:
    def worst(*args: int, thinking: bool | None) -> int | None:
        return table.worst_case("qwen-plus", *args, thinking=thinking, cache_writes=False)

    slack = ROUNDING_SLACK
    assert worst(1000, 500, thinking=False) == 1000 * 400_000 + 500 * 1_200_000 + slack
    assert worst(1000, 500, thinking=True) == 1000 * 400_000 + 500 * 4_000_000 + slack
    assert worst(300_000, 10, thinking=True) == 300_000 * 1_200_000 + 10 * 12_000_000 + slack


def test_money_helpers() -> None:
    assert usd(592_320_000) == Decimal("0.00059232")
    assert format_usd(592_320_000) == "0.000592"
    assert format_usd(592_320_000, 12) == "0.000592320000"
    assert format_usd(0) == "0.000000"
    assert format_usd(-300_000_000) == "-0.000300"
    assert format_usd(2_500_000, 6) == "0.000002"  # ties to even
    assert format_usd(3_500_000, 6) == "0.000004"


def test_float_prices_from_a_dict_are_exact() -> None:
    table = PriceTable.load([{"models": {"m": {"tiers": [{"input": 0.1, "output": 0.3}]}}}])
    cost = table.cost("m", usage(3, 3), thinking=False)
    assert cost is not None
    assert (cost.input_pusd, cost.output_pusd) == (300_000, 900_000)


# --------------------------------------------------------------------------- the shipped file


def test_shipped_table_meta(table: PriceTable) -> None:
    assert table.version == "2026-11-27"
    meta = table.meta
    assert (meta.currency, meta.unit) == ("USD", "per 1M tokens")
    assert meta.implicit_cache_hit_ratio == Decimal("0.2")
    assert meta.explicit_cache_creation_ratio == Decimal("1.25")
    assert meta.explicit_cache_hit_ratio == Decimal("0.1")
    assert meta.batch_discount == Decimal("0.5")


def test_every_shipped_model_names_its_source_and_date(table: PriceTable) -> None:
    raw = tomllib.loads(resources.files("batchrunner").joinpath("prices.toml").read_text(encoding="utf-8"))
    assert set(raw["models"]) == set(table.models)
    for name, price in table.models.items():
        assert price.source and price.as_of, name
        free = name == "batch-test-model"  # the Batch API's free end-to-end check
        assert all(t.input > 0 and t.output > 0 for t in price.tiers) != free, name


def test_secondary_and_not_found_figures_carry_notes(table: PriceTable) -> None:
    for name in ("qwen-turbo", "qwen3-vl-plus", "qwen3.5-plus", "qwen3.5-flash", "qwen3.8-flash"):
        notes = table.models[name].notes or ""
        assert "Secondary" in notes or "NOT FOUND" in notes or "Low confidence" in notes, name


# --------------------------------------------------------------------------- overrides


def test_dict_override_adds_a_model_and_marks_the_version() -> None:
    table = PriceTable.load([{"models": {"my-model": {"tiers": [{"input": 1, "output": 2}]}}}])
    assert table.version == "2026-11-27+overrides"
    cost = table.cost("my-model", usage(10, 10), thinking=False)
    assert cost is not None and cost.total_pusd == 10 * 1_000_000 + 10 * 2_000_000
    assert table.lookup("qwen-plus") is not None  # the shipped models stay


def test_an_override_replaces_a_shipped_model_whole() -> None:
    table = PriceTable.load([{"models": {"Qwen-Plus": {"tiers": [{"input": 1.0, "output": 1.0}]}}}])
    cost = table.cost("qwen-plus", usage(300_000, 0), thinking=True)
    assert cost is not None
    assert cost.tier_up_to is None and cost.input_pusd == 300_000 * 1_000_000
    assert table.lookup("qwen-plus-latest") is None  # the shipped aliases went with the entry
    assert "qwen-plus" not in table.models


def test_empty_override_keeps_the_version() -> None:
    assert PriceTable.load([{"models": {}}]).version == "2026-11-27"


def test_file_override_then_dict_override(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models."qwen3.6-plus"]\n'
        'aliases = ["qwen3.6-plus-latest"]\n'
        "tiers = [{ up_to = 256000, input = 0.3, output = 1.8 }, { input = 0.9, output = 5.4 }]\n"
        'source = "my contract"\n',
        encoding="utf-8",
    )
    table = PriceTable.load([prices, {"models": {"qwen-flash": {"tiers": [{"input": 0.01, "output": 0.02}]}}}])
    cost = table.cost("QWEN3.6-PLUS-LATEST", usage(256_001, 100), thinking=False)
    assert cost is not None
    assert cost.input_pusd == 256_001 * 900_000 and cost.output_pusd == 100 * 5_400_000
    flash = table.cost("qwen-flash", usage(100, 100), thinking=False)
    assert flash is not None and flash.total_pusd == 100 * 10_000 + 100 * 20_000
    later = PriceTable.load([{"models": {"x": {"tiers": [{"input": 1, "output": 1}]}}}, prices])
    assert later.lookup("x") is not None and later.lookup("qwen3.6-plus") is not None


def test_bad_dict_override_names_the_key() -> None:
    bad = {"models": {"qwen-plus": {"tiers": [{"input": 0.4, "outptu": 1.2}]}}}
    with pytest.raises(SpecError) as err:
        PriceTable.load([bad])
    text = str(err.value)
    assert "[pricing]" in text
    assert 'models."qwen-plus".tiers[0].outptu: unknown key' in text
    assert 'models."qwen-plus".tiers[0].output: required key is missing' in text


def test_bad_file_override_names_the_file_and_key(tmp_path: Path) -> None:
    prices = tmp_path / "mine.toml"
    prices.write_text('[models."m"]\ntiers = [{ input = -1, output = 1 }]\ncolour = "blue"\n', encoding="utf-8")
    with pytest.raises(SpecError) as err:
        PriceTable.load([prices])
    text = str(err.value)
    assert str(prices) in text
    assert 'models."m".tiers[0].input' in text and "greater than or equal to 0" in text
    assert 'models."m".colour: unknown key' in text


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model": {}}, "model: unknown key"),
        ({"models": {"m": {"tiers": []}}}, 'models."m".tiers'),
        (
            {
                "models": {
                    "m": {"tiers": [{"up_to": 10, "input": 1, "output": 1}, {"up_to": 5, "input": 1, "output": 1}]}
                }
            },
            "tiers must go up",
        ),
        (
            {"models": {"m": {"tiers": [{"input": 1, "output": 1}, {"up_to": 5, "input": 1, "output": 1}]}}},
            "only the last",
        ),
        ({"models": {"m": {"tiers": [{"input": "cheap", "output": 1}]}}}, 'models."m".tiers[0].input'),
    ],
)
def test_invalid_overrides(override: dict, expected: str) -> None:
    with pytest.raises(SpecError, match="problem") as err:
        PriceTable.load([override])
    assert expected in str(err.value)


def test_unreadable_override_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="price file not found"):
        PriceTable.load([tmp_path / "missing.toml"])
    broken = tmp_path / "broken.toml"
    broken.write_text("[models\n", encoding="utf-8")
    with pytest.raises(SpecError, match="broken.toml: cannot read the price file"):
        PriceTable.load([broken])


def test_batch_prices_halve_input_and_output_and_drop_the_cache_discount(table: PriceTable) -> None:
    usage = Usage.from_wire(
        {"input_tokens": 1000, "output_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}}
    )
    online, batch = table.cost("qwen-plus", usage), table.for_batch().cost("qwen-plus", usage)
    assert online is not None and batch is not None
    tier = table.lookup("qwen-plus").tiers[0]  # type: ignore[union-attr]
    assert batch.total_pusd == round(1000 * tier.input * 10**6 / 2) + round(500 * tier.output * 10**6 / 2)
    assert batch.saved_pusd == 0 and online.saved_pusd > 0
    assert table.for_batch().version == table.version + "+batch"


def test_price_flags_say_which_batch_apis_serve_a_model(table: PriceTable) -> None:
    assert table.batch_support("qwen-plus") == (True, True)
    assert table.batch_support("QWEN3-MAX") == (False, True)
    assert table.batch_support("qwen3-coder-plus") == (False, False)
    assert table.batch_support("batch-test-model") == (True, False)
    assert table.batch_support("no-such-model") is None
