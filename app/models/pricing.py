"""What model usage costs: a per-model price table (USD per million tokens) and `cost_usd`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FALLBACK_PREFIX = "claude-sonnet-4"


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cache writes are 5-minute writes."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    @classmethod
    def of(cls, input: float, output: float) -> Price:
        """A price with Anthropic's usual cache multipliers: writes 1.25×, reads 0.1× of input."""
        return cls(input, output, input * 1.25, input * 0.1)


def default_prices() -> dict[str, Price]:
    """Prices by model-name prefix; the longest matching prefix wins (dated ids match their family)."""
    opus_new, opus_old = Price.of(5, 25), Price.of(15, 75)
    sonnet, haiku = Price.of(3, 15), Price.of(1, 5)
    return {
        "claude-opus": opus_new,
        "claude-opus-4": opus_old,
        "claude-opus-4-0": opus_old,
        "claude-opus-4-1": opus_old,
        "claude-opus-4-5": opus_new,
        "claude-opus-4-6": opus_new,
        "claude-opus-4-7": opus_new,
        "claude-opus-4-8": opus_new,
        "claude-sonnet": sonnet,
        "claude-sonnet-4": sonnet,
        "claude-haiku": haiku,
        "claude-haiku-4-5": haiku,
        "claude-3-7-sonnet": sonnet,
        "claude-3-5-sonnet": sonnet,
        "claude-3-5-haiku": Price.of(0.8, 4),
        "claude-3-haiku": Price.of(0.25, 1.25),
        "claude-3-opus": opus_old,
    }


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price:
    """The price of `model` by longest prefix match; `overrides` entries win over the defaults.

    An unknown model is priced as Claude Sonnet 4, so costs are never silently zero.
    """
    table = {**default_prices(), **(overrides or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    if not matches:
        return table.get(FALLBACK_PREFIX, default_prices()[FALLBACK_PREFIX])
    return table[max(matches, key=len)]


def cost_usd(model: str, usage: Mapping[str, int], overrides: Mapping[str, Price] | None = None) -> float:
    """USD cost of one response's `usage` (input, output, cache write and cache read tokens; missing = 0)."""
    price = price_for(model, overrides)
    total = (
        (usage.get("input_tokens") or 0) * price.input
        + (usage.get("output_tokens") or 0) * price.output
        + (usage.get("cache_creation_input_tokens") or 0) * price.cache_write
        + (usage.get("cache_read_input_tokens") or 0) * price.cache_read
    )
    return total / 1_000_000
