"""The models Ferryman knows: ids, kinds, context sizes, and their lifecycle.

Built from the dated price table in ``data/prices.json`` (see its ``_source``), plus the
models OpenAI serves that carry no per-token price there (moderation and legacy completion
models), and ``data/lifecycle.json``: which model families reason and which parameters they
reject, the shutdown dates of OpenAI's deprecations page where they differ from the price
table's, and the retiring APIs. One table, so the pipeline (headers, ``on_retired``), ``ferryman
lint``, ``ferryman doctor``, ``ferryman models`` and the dashboard never disagree.

A shutdown date comes from, in order of trust: the upstream's own ``GET /v1/models``
``shutdown_date`` (cached in the store, see ``ferryman.lifecycle_store``), OpenAI's deprecations
page (``lifecycle.json`` ``shutdowns``), the price table. :func:`lifecycle` takes the upstream's
overrides as an argument so this module stays free of the store.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import Mapping
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
    override = lifecycle_table()["shutdowns"].get(model_id, {})
    return ModelInfo(
        id=model_id,
        mode=str(entry.get("mode", "chat")),
        max_input_tokens=entry.get("max_input_tokens"),
        max_output_tokens=entry.get("max_output_tokens"),
        shutdown_date=override.get("date", entry.get("deprecation_date")),
        successor=override.get("successor", entry.get("successor_model")),
        prices={k: float(v) for k, v in entry.items() if "usd_per_1m" in k and v is not None},
    )


@cache
def lifecycle_table() -> dict[str, Any]:
    raw = resources.files("ferryman.data").joinpath("lifecycle.json").read_text()
    data: dict[str, Any] = json.loads(raw)
    return data


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


# --- lifecycle: shutdown dates and successors -----------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """When a model stops being served, what replaces it, and where that date came from."""

    model: str
    shutdown_date: dt.date | None
    successor: str | None
    source: str  # "upstream <fetched date>" | "shipped <as_of>"

    def retired(self, today: dt.date) -> bool:
        return self.shutdown_date is not None and today >= self.shutdown_date

    def days_left(self, today: dt.date) -> int | None:
        return None if self.shutdown_date is None else (self.shutdown_date - today).days

    def as_json(self, today: dt.date) -> dict[str, Any]:
        return {
            "model": self.model,
            "shutdown_date": self.shutdown_date.isoformat() if self.shutdown_date else None,
            "successor": self.successor,
            "days_left": self.days_left(today),
            "retired": self.retired(today),
            "source": self.source,
        }


@dataclass(frozen=True)
class UpstreamDate:
    """A ``shutdown_date`` the upstream itself reported, with the day it was fetched."""

    shutdown_date: dt.date | None
    fetched: dt.date


def shipped_as_of() -> str:
    return str(lifecycle_table()["_source"]["as_of"])


def parse_date(value: Any) -> dt.date | None:
    """``YYYY-MM-DD`` (the form ``GET /v1/models`` uses) or None; anything else is None."""
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def lifecycle(model: str, upstream: Mapping[str, UpstreamDate] | None = None) -> Lifecycle | None:
    """The lifecycle of ``model`` (a snapshot, an alias or an ``ft:`` model, which retires with its
    base), or None for a model Ferryman knows nothing about."""
    known = upstream.get(model) if upstream else None
    info = lookup(model)
    successor = info.successor if info else None
    if known is not None:
        return Lifecycle(model, known.shutdown_date, successor, f"upstream {known.fetched.isoformat()}")
    if info is None:
        # Retiring models outside the price table (speech, transcription): the deprecations page's.
        page = lifecycle_table()["shutdowns"].get(model)
        if page is None:
            return None
        return Lifecycle(model, parse_date(page["date"]), page.get("successor"), f"shipped {shipped_as_of()}")
    return Lifecycle(model, parse_date(info.shutdown_date), successor, f"shipped {shipped_as_of()}")


def retiring(
    today: dt.date, within_days: int | None = None, upstream: Mapping[str, UpstreamDate] | None = None
) -> list[Lifecycle]:
    """Every known model with a shutdown date (those within ``within_days`` of ``today``, or already
    past it, when given), soonest first."""
    names = set(models()) | set(lifecycle_table()["shutdowns"]) | set(upstream or {})
    found = [life for name in names if (life := lifecycle(name, upstream)) and life.shutdown_date]
    if within_days is not None:
        found = [life for life in found if (life.days_left(today) or 0) <= within_days]
    return sorted(found, key=lambda life: (life.shutdown_date or dt.date.max, life.model))


# --- families: which models reason, which parameters they reject ----------------------------


@dataclass(frozen=True)
class Family:
    name: str
    reasoning: bool | None  # None: not known
    sampling_with_effort_none: bool  # accepts temperature/top_p when reasoning effort is "none"


@dataclass(frozen=True)
class Rejection:
    """A request parameter the model answers with a 400, in OpenAI's words."""

    param: str
    code: str
    message: str
    replacement: str | None  # the parameter to use instead, when there is one


@cache
def _families() -> tuple[tuple[tuple[str, ...], Family], ...]:
    return tuple(
        (
            tuple(entry["match"]),
            Family(entry["name"], entry["reasoning"], bool(entry.get("sampling_with_effort_none", False))),
        )
        for entry in lifecycle_table()["families"]
    )


def family(model: str) -> Family | None:
    """The family of a model id (``ft:`` models belong to their base's), or None if unknown."""
    name = base_model(model)
    for patterns, found in _families():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return found
    return None


def is_reasoning(model: str) -> bool | None:
    found = family(model)
    return found.reasoning if found else None


def _effort(body: Mapping[str, Any]) -> Any:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        return reasoning.get("effort")
    return body.get("reasoning_effort")


def rejected_params(model: str, endpoint: str, body: Mapping[str, Any]) -> list[Rejection]:
    """The parameters of ``body`` (sent to ``endpoint``, e.g. ``/v1/chat/completions``) that
    ``model`` rejects. Empty for models not known to reason: a ``max_tokens`` on ``gpt-4o`` is fine."""
    found = family(model)
    if found is None or not found.reasoning:
        return []
    out: list[Rejection] = []
    for param, rule in lifecycle_table()["reasoning_rejects"].items():
        if param not in body or body[param] is None or endpoint not in rule["endpoints"]:
            continue
        value = body[param]
        allowed = found.sampling_with_effort_none and _effort(body) == "none"
        if "default" in rule and (value == rule["default"] or allowed):
            continue
        out.append(Rejection(param, rule["code"], rule["message"].format(value=value), rule.get("replacement")))
    return out


# --- APIs that retire -------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRetirement:
    name: str
    paths: tuple[str, ...]  # "/v1/assistants" (every method) or "POST /v1/fine_tuning/jobs"
    shutdown_date: dt.date
    successor: str | None

    def covers(self, method: str, path: str) -> bool:
        """``/v1/assistants`` covers every method on it and below it; ``POST /v1/fine_tuning/jobs``
        only that call (creating a job), not the job's own paths (cancel, events, checkpoints)."""
        for entry in self.paths:
            want_method, _, prefix = entry.rpartition(" ")
            if want_method:
                if want_method == method.upper() and path == prefix:
                    return True
            elif path == prefix or path.startswith(prefix + "/"):
                return True
        return False


@cache
def api_retirements() -> tuple[ApiRetirement, ...]:
    return tuple(
        ApiRetirement(entry["name"], tuple(entry["paths"]), dt.date.fromisoformat(entry["date"]), entry["successor"])
        for entry in lifecycle_table()["apis"]
    )


def api_retirement(method: str, path: str) -> ApiRetirement | None:
    return next((api for api in api_retirements() if api.covers(method, path)), None)
