"""What model usage costs: a per-model price table (USD per million tokens) and `cost_usd`.

The table is configurable: `parse_prices` reads overrides such as the `ROUTINES_PRICES` setting,
`{"claude-sonnet-4-6": {"input": 3, "output": 15}, "my-gateway-model": {"input": 1, "output": 2,
"cache_write": 1.5, "cache_read": 0.1}}`, and `Pricer` prices a response's usage with them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.errors import ConfigError

FALLBACK_PREFIX = "claude-sonnet-4"
WEB_SEARCH_USD = 10 / 1000  # Anthropic bills the web search tool per search, on top of its tokens
PRICE_FIELDS = ("input", "output", "cache_write", "cache_read")


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
    """USD cost of one response's `usage` (input, output, cache write and cache read tokens, and web searches;
    missing = 0)."""
    price = price_for(model, overrides)
    total = (
        (usage.get("input_tokens") or 0) * price.input
        + (usage.get("output_tokens") or 0) * price.output
        + (usage.get("cache_creation_input_tokens") or 0) * price.cache_write
        + (usage.get("cache_read_input_tokens") or 0) * price.cache_read
    )
    return total / 1_000_000 + (usage.get("web_search_requests") or 0) * WEB_SEARCH_USD


class Pricer:
    """`pricer(model, usage)` is the USD cost of one response's usage under the default table plus `overrides`."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def __call__(self, model: str, usage: Mapping[str, int]) -> float:
        return cost_usd(model, usage, self.overrides)


def parse_prices(raw: str | None, source: str = "ROUTINES_PRICES") -> dict[str, Price]:
    """Price overrides from JSON: model-name prefix → {input, output[, cache_write, cache_read]} in USD per MTok.

    Missing cache prices follow Anthropic's multipliers (writes 1.25×, reads 0.1× of input). Raises
    ConfigError naming `source` and the fix when the text is not such a mapping.
    """
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc}); {_EXAMPLE}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a JSON object of model prefix → prices; {_EXAMPLE}")
    return {str(prefix): _price(entry, f"{source}[{prefix!r}]") for prefix, entry in data.items()}


_EXAMPLE = 'e.g. {"claude-sonnet-4-6": {"input": 3, "output": 15}}'


def _price(entry: Any, where: str) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object with input and output USD per million tokens; {_EXAMPLE}")
    unknown = sorted(set(entry) - set(PRICE_FIELDS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; use {', '.join(PRICE_FIELDS)}")
    values: dict[str, float] = {}
    for name in PRICE_FIELDS:
        value = entry.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            raise ConfigError(f"{where}.{name}={value!r} is not a price; give USD per million tokens, ≥ 0")
        values[name] = float(value)
    if "input" not in values or "output" not in values:
        raise ConfigError(f"{where} needs both input and output prices; {_EXAMPLE}")
    base = Price.of(values["input"], values["output"])
    return Price(
        values["input"],
        values["output"],
        values.get("cache_write", base.cache_write),
        values.get("cache_read", base.cache_read),
    )
