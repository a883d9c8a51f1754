"""Cost of a call in USD, from the dated price table shipped in ``data/prices.json``.

Prices are USD per 1M tokens (see the table's ``_source`` for where and when they were read).
A usage object may be in the Chat Completions shape (``prompt_tokens``/``completion_tokens``)
or the Responses shape (``input_tokens``/``output_tokens``). Cached input (``cached_tokens``)
and cache writes (``cache_write_tokens``) are parts of the input; reasoning tokens are part of
the output and priced as output.

How a rate is chosen, for a model's entry ``p`` (keys like ``input_usd_per_1m``):

- **tiers** (``batches``, ``flex``, ``priority``): the tier's own rate where the table has it
  (``input_usd_per_1m_flex``); without one, Batch is 50 % of standard and the other tiers cost
  the standard rate. Cached input and cache writes scale with the input's tier factor
  (``input_<tier> / input``), as on OpenAI's pricing page.
- **long context** (more than 272k input tokens, where the table has ``*_above_272k_tokens``):
  the long rates for input and output; cached input and writes scale with the input's factor.
  A tier on top multiplies by the tier's factor (``long * tier / standard``).
- **cache writes**: ``cache_creation_input_usd_per_1m`` (30-minute retention); writes the
  usage reports with 12-hour retention use ``cache_creation_input_usd_per_1m_12h`` where an
  entry has it. Models without a write price bill writes as plain input.

:class:`PriceTable` holds one table (the shipped one, optionally with a ``pricing_file`` of the
same JSON format whose entries replace or add whole models); :func:`cost_usd` prices with the
shipped table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from ferryman import catalogue

MILLION = Decimal(1_000_000)
LONG_CONTEXT_THRESHOLD = 272_000
TIERS = ("batches", "flex", "priority")
# The endpoints whose calls this table prices (by model and tokens): what budgets can hold.
BILLED_ENDPOINTS = ("/chat/completions", "/responses", "/completions", "/embeddings")

_IN, _OUT = "input_usd_per_1m", "output_usd_per_1m"
_LONG = "_above_272k_tokens"
_CACHED, _WRITE = "cache_read_input_usd_per_1m", "cache_creation_input_usd_per_1m"
_WRITE_12H = _WRITE + "_12h"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class TokenCounts:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    cache_write_12h: int = 0  # part of cache_write

    @classmethod
    def from_usage(cls, usage: dict[str, Any] | None) -> TokenCounts:
        if not usage:
            return cls()
        if "input_tokens" in usage or "output_tokens" in usage:
            in_details = usage.get("input_tokens_details") or {}
            out_details = usage.get("output_tokens_details") or {}
            total_in, total_out = usage.get("input_tokens"), usage.get("output_tokens")
        else:
            in_details = usage.get("prompt_tokens_details") or {}
            out_details = usage.get("completion_tokens_details") or {}
            total_in, total_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        write_details = in_details.get("cache_write_tokens_details") or {}
        return cls(
            input=_int(total_in),
            cached_input=_int(in_details.get("cached_tokens")),
            cache_write=_int(
                in_details.get("cache_write_tokens")
                or in_details.get("cache_creation_tokens")
                or usage.get("cache_creation_input_tokens")
            ),
            output=_int(total_out),
            reasoning=_int(out_details.get("reasoning_tokens")),
            cache_write_12h=_int(write_details.get("ttl_12h_tokens") if isinstance(write_details, dict) else 0),
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def normalise_tier(tier: str | None) -> str:
    """A request's or reply's ``service_tier`` (or ``"batches"``) → ``""``, ``batches``, ``flex``, ``priority``."""
    tier = (tier or "").strip().lower()
    if tier in ("batch", "batches"):
        return "batches"
    if tier == "fast":
        return "priority"
    return tier if tier in TIERS else ""


class PriceTable:
    """Prices by model (``Decimal`` USD per 1M tokens); built once and shared."""

    def __init__(self, models: dict[str, dict[str, Any]], source: dict[str, Any] | None = None) -> None:
        self.source = source or {}
        self._limits: dict[str, int | None] = {}
        self._models: dict[str, dict[str, Decimal]] = {}
        for model_id, entry in models.items():
            self._add(model_id, entry)

    def _add(self, model_id: str, entry: dict[str, Any]) -> None:
        prices = {
            k: Decimal(str(v))
            for k, v in entry.items()
            if "usd_per_1m" in k and isinstance(v, int | float | str) and not isinstance(v, bool)
        }
        self._models[model_id] = prices
        limit = entry.get("max_output_tokens")
        self._limits[model_id] = limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    @classmethod
    def default(cls) -> PriceTable:
        """The shipped table (with the catalogue's extra priced models), built once."""
        return _default()

    @classmethod
    def for_settings(cls, settings: Any) -> PriceTable:
        """The shipped table, with ``settings.pricing_file`` on top when set (loaded once per path)."""
        path = getattr(settings, "pricing_file", None)
        return _with_overrides(str(Path(path).resolve())) if path else cls.default()

    def with_overrides(self, path: str | Path) -> PriceTable:
        """A copy of this table with the models in ``path`` (same JSON format) replacing or added."""
        data = json.loads(Path(path).read_text())
        models = data.get("models", {}) if isinstance(data, dict) else {}
        if not isinstance(models, dict):
            raise ValueError(f"{path}: 'models' must be an object of model id → prices")
        table = PriceTable({}, {**self.source, "overrides": {"file": str(path), **(data.get("_source") or {})}})
        table._models, table._limits = dict(self._models), dict(self._limits)
        for model_id, entry in models.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: the entry for {model_id!r} must be an object")
            table._add(str(model_id), entry)
        return table

    def _key(self, model: str) -> str | None:
        if model in self._models:
            return model
        candidates = []
        if model.startswith("ft:"):
            base = catalogue.base_model(model)
            candidates += [f"ft:{base}", base]
        candidates += [_DATED.sub("", c) for c in [model, *candidates]]
        return next((c for c in candidates if c in self._models), None)

    def prices(self, model: str | None) -> dict[str, Decimal] | None:
        """The model's rates: exact id, else a fine-tuned model's base, else without a date suffix."""
        key = self._key(model) if model else None
        prices = self._models.get(key) if key else None
        return prices if prices and _IN in prices else None

    def max_output_tokens(self, model: str | None) -> int | None:
        key = self._key(model) if model else None
        return self._limits.get(key) if key else None

    def cost_usd(
        self, model: str | None, usage: dict[str, Any] | TokenCounts | None, *, tier: str = ""
    ) -> Decimal | None:
        """The cost of one call, or ``None`` when the model has no price."""
        p = self.prices(model)
        if p is None:
            return None
        counts = usage if isinstance(usage, TokenCounts) else TokenCounts.from_usage(usage)
        tier = normalise_tier(tier)
        long = counts.input > LONG_CONTEXT_THRESHOLD and _IN + _LONG in p
        in_rate = _rate(p, _IN, tier, long)
        out_rate = _rate(p, _OUT, tier, long)
        in_std = p[_IN]

        def like_input(base: Decimal) -> Decimal:  # cached input and writes follow the input's factors
            return base * in_rate / in_std if in_std else base

        cached_rate = like_input(p.get(_CACHED, in_std))
        write_rate = like_input(p.get(_WRITE, in_std))
        write_12h_rate = like_input(p.get(_WRITE_12H, p.get(_WRITE, in_std)))
        cached = min(counts.cached_input, counts.input)
        written = min(counts.cache_write, counts.input - cached)
        written_12h = min(counts.cache_write_12h, written)
        plain = counts.input - cached - written
        total = (
            plain * in_rate
            + cached * cached_rate
            + (written - written_12h) * write_rate
            + written_12h * write_12h_rate
            + counts.output * out_rate
        )
        return total / MILLION


def _rate(p: dict[str, Decimal], key: str, tier: str, long: bool) -> Decimal:
    std = p.get(key, Decimal(0))
    base = p.get(key + _LONG, std) if long else std
    if not tier:
        return base
    tiered = p.get(f"{key}_{tier}")
    if tiered is None:
        return base / 2 if tier == "batches" else base
    if not long:
        return tiered
    return base * tiered / std if std else tiered


@cache
def _default() -> PriceTable:
    entries = {m: {**i.prices, "max_output_tokens": i.max_output_tokens} for m, i in catalogue.models().items()}
    return PriceTable(entries, dict(catalogue.price_table().get("_source") or {}))


@cache
def _with_overrides(path: str) -> PriceTable:
    return PriceTable.default().with_overrides(path)


def cost_usd(model: str, usage: dict[str, Any] | TokenCounts | None, *, tier: str = "") -> Decimal | None:
    """The cost of one call with the shipped table, or ``None`` when the model has no price.

    ``tier`` is ``""`` (standard), ``"batches"``, ``"flex"`` or ``"priority"`` (a reply's
    ``service_tier`` is accepted as is: ``default``/``auto``/``scale`` are standard).
    """
    return PriceTable.default().cost_usd(model, usage, tier=tier)


__all__ = ["LONG_CONTEXT_THRESHOLD", "PriceTable", "TokenCounts", "cost_usd", "normalise_tier"]
