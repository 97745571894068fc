"""Model prices and the cost of a response's usage."""

from __future__ import annotations

import pytest

from app.core.errors import ConfigError
from app.core.pricing import Price, Pricer, cost_usd, parse_prices, price_for

MILLION = {"input_tokens": 1_000_000}


@pytest.mark.parametrize(
    ("model", "input_usd", "output_usd"),
    [
        ("claude-sonnet-4-5-20250929", 3, 15),
        ("claude-sonnet-4-6", 3, 15),
        ("claude-opus-4-1-20250805", 15, 75),
        ("claude-opus-4-5", 5, 25),
        ("claude-haiku-4-5-20251001", 1, 5),
        ("some-future-model", 3, 15),
    ],
)
def test_models_are_priced_by_family(model: str, input_usd: float, output_usd: float) -> None:
    assert cost_usd(model, MILLION) == pytest.approx(input_usd)
    assert cost_usd(model, {"output_tokens": 1_000_000}) == pytest.approx(output_usd)


def test_cache_writes_and_reads_cost_a_multiple_of_input() -> None:
    usage = {"cache_creation_input_tokens": 1_000_000, "cache_read_input_tokens": 2_000_000}
    assert cost_usd("claude-sonnet-4-6", usage) == pytest.approx(3 * 1.25 + 2 * 3 * 0.1)


def test_a_whole_response_adds_up() -> None:
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx((1200 * 1 + 300 * 5) / 1e6)


def test_prices_can_be_overridden() -> None:
    overrides = {"claude-sonnet-4-6": Price.of(6, 22.5), "my-proxy-model": Price(1, 1, 1, 1)}
    assert cost_usd("claude-sonnet-4-6", MILLION, overrides) == pytest.approx(6)
    assert cost_usd("claude-sonnet-4-5", MILLION, overrides) == pytest.approx(3)
    assert price_for("my-proxy-model-v2", overrides) == Price(1, 1, 1, 1)


def test_a_price_table_from_json_fills_in_cache_prices() -> None:
    raw = (
        '{"my-gateway": {"input": 2, "output": 8}, "claude-sonnet-4-6": {"input": 3, "output": 15, "cache_read": 0.5}}'
    )
    prices = parse_prices(raw)
    assert prices["my-gateway"] == Price(2, 8, 2.5, 0.2)
    assert prices["claude-sonnet-4-6"] == Price(3, 15, 3.75, 0.5)
    pricer = Pricer(prices)
    usage = {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 40}
    assert pricer("my-gateway-v2", usage) == pytest.approx((10 * 2 + 20 * 8 + 30 * 2.5 + 40 * 0.2) / 1e6)
    assert pricer("claude-haiku-4-5", usage) == cost_usd("claude-haiku-4-5", usage)
    assert parse_prices(None) == {} and parse_prices("  ") == {}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object of model prefix"),
        ('{"m": 3}', "must be an object with input and output"),
        ('{"m": {"input": 3}}', "needs both input and output"),
        ('{"m": {"input": 3, "output": -1}}', "output=-1 is not a price"),
        ('{"m": {"input": true, "output": 1}}', "input=True is not a price"),
        ('{"m": {"input": 3, "output": 1, "cached": 1}}', "unknown keys ['cached']"),
    ],
)
def test_a_bad_price_table_names_the_setting_and_the_fix(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match="ROUTINES_PRICES") as caught:
        parse_prices(raw)
    assert says in str(caught.value)
