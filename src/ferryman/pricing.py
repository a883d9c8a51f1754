"""Cost of a call in USD, from the dated price table shipped in ``data/prices.json``.

Prices are USD per 1M tokens. A usage object may be in the Chat Completions shape
(``prompt_tokens``/``completion_tokens``) or the Responses shape (``input_tokens``/
``output_tokens``); cached input is a subset of input, reasoning a subset of output.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ferryman.catalogue import lookup

_MILLION = Decimal(1_000_000)
LONG_CONTEXT_THRESHOLD = 272_000


@dataclass(frozen=True)
class TokenCounts:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    @classmethod
    def from_usage(cls, usage: dict[str, Any] | None) -> TokenCounts:
        if not usage:
            return cls()
        if "input_tokens" in usage or "output_tokens" in usage:
            in_details = usage.get("input_tokens_details") or {}
            out_details = usage.get("output_tokens_details") or {}
            return cls(
                input=_int(usage.get("input_tokens")),
                cached_input=_int(in_details.get("cached_tokens")),
                cache_write=_int(in_details.get("cache_write_tokens")),
                output=_int(usage.get("output_tokens")),
                reasoning=_int(out_details.get("reasoning_tokens")),
            )
        in_details = usage.get("prompt_tokens_details") or {}
        out_details = usage.get("completion_tokens_details") or {}
        return cls(
            input=_int(usage.get("prompt_tokens")),
            cached_input=_int(in_details.get("cached_tokens")),
            cache_write=_int(in_details.get("cache_write_tokens")),
            output=_int(usage.get("completion_tokens")),
            reasoning=_int(out_details.get("reasoning_tokens")),
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _rate(prices: dict[str, float], key: str, tier: str, fallback: float | None = None) -> Decimal:
    for name in (f"{key}_{tier}" if tier else None, key):
        if name and name in prices:
            return Decimal(str(prices[name]))
    return Decimal(str(fallback)) if fallback is not None else Decimal(0)


def cost_usd(model: str, usage: dict[str, Any] | TokenCounts | None, *, tier: str = "") -> Decimal | None:
    """The cost of one call, or ``None`` when the model has no price.

    ``tier`` is ``""`` (standard), ``"batches"``, ``"flex"`` or ``"priority"``. Inputs above
    272k tokens use the long-context rates where the table has them.
    """
    info = lookup(model)
    if info is None or "input_usd_per_1m" not in info.prices:
        return None
    counts = usage if isinstance(usage, TokenCounts) else TokenCounts.from_usage(usage)
    prices = info.prices
    long = counts.input > LONG_CONTEXT_THRESHOLD and "input_usd_per_1m_above_272k_tokens" in prices
    in_key = "input_usd_per_1m_above_272k_tokens" if long else "input_usd_per_1m"
    out_key = "output_usd_per_1m_above_272k_tokens" if long else "output_usd_per_1m"
    input_rate = _rate(prices, in_key, "" if long else tier)
    output_rate = _rate(prices, out_key, "" if long else tier)
    cached_rate = _rate(prices, "cache_read_input_usd_per_1m", "", float(input_rate))
    write_rate = _rate(prices, "cache_creation_input_usd_per_1m", "", float(input_rate))
    if tier == "batches" and long:
        input_rate, output_rate = input_rate / 2, output_rate / 2
    if tier == "batches":
        cached_rate, write_rate = cached_rate / 2, write_rate / 2
    cached = min(counts.cached_input, counts.input)
    written = min(counts.cache_write, counts.input - cached)
    plain = counts.input - cached - written
    total = plain * input_rate + cached * cached_rate + written * write_rate + counts.output * output_rate
    return total / _MILLION
