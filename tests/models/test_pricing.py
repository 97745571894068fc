"""Model prices and the cost of a response's usage."""

from __future__ import annotations

import pytest

from app.models.pricing import Price, cost_usd, price_for

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
