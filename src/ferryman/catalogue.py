"""The models Ferryman knows: ids, kinds, context sizes and shutdown dates.

Built from the dated price table in ``data/prices.json`` (see its ``_source``), plus the
models OpenAI serves that carry no per-token price there (moderation and legacy completion
models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# Served by OpenAI but absent from the per-token price table.
_EXTRA: dict[str, dict[str, Any]] = {
    "omni-moderation-latest": {"mode": "moderation"},
    "omni-moderation-2024-09-26": {"mode": "moderation"},
    "text-moderation-latest": {"mode": "moderation"},
    "text-moderation-stable": {"mode": "moderation"},
    "gpt-3.5-turbo-instruct": {
        "mode": "completion",
        "max_input_tokens": 4096,
        "max_output_tokens": 4096,
        "input_usd_per_1m": 1.5,
        "output_usd_per_1m": 2.0,
    },
    "davinci-002": {
        "mode": "completion",
        "max_input_tokens": 16384,
        "max_output_tokens": 4096,
        "input_usd_per_1m": 2.0,
        "output_usd_per_1m": 2.0,
    },
    "babbage-002": {
        "mode": "completion",
        "max_input_tokens": 16384,
        "max_output_tokens": 4096,
        "input_usd_per_1m": 0.4,
        "output_usd_per_1m": 0.4,
    },
}

# A fixed creation time per model keeps `GET /v1/models` stable between runs.
_CREATED = 1_700_000_000


@dataclass(frozen=True)
class ModelInfo:
    id: str
    mode: str  # chat | responses | embedding | moderation | completion
    max_input_tokens: int | None
    max_output_tokens: int | None
    shutdown_date: str | None
    successor: str | None
    prices: dict[str, float]

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": _CREATED,
            "owned_by": "system" if not self.id.startswith("ft:") else "user",
            "shutdown_date": self.shutdown_date,
        }


@cache
def price_table() -> dict[str, Any]:
    raw = resources.files("ferryman.data").joinpath("prices.json").read_text()
    data: dict[str, Any] = json.loads(raw)
    return data


def _info(model_id: str, entry: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        id=model_id,
        mode=str(entry.get("mode", "chat")),
        max_input_tokens=entry.get("max_input_tokens"),
        max_output_tokens=entry.get("max_output_tokens"),
        shutdown_date=entry.get("deprecation_date"),
        successor=entry.get("successor_model"),
        prices={k: float(v) for k, v in entry.items() if "usd_per_1m" in k and v is not None},
    )


@cache
def models() -> dict[str, ModelInfo]:
    table = {**price_table()["models"], **_EXTRA}
    return {mid: _info(mid, entry) for mid, entry in sorted(table.items())}


def base_model(model: str) -> str:
    """``ft:gpt-4o-mini-2024-07-18:org:suffix:id`` → ``gpt-4o-mini-2024-07-18``."""
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def lookup(model: str) -> ModelInfo | None:
    table = models()
    if model in table:
        return table[model]
    if model.startswith("ft:"):
        return table.get(f"ft:{base_model(model)}") or table.get(base_model(model))
    return None
