"""Fixtures and independent arithmetic for the report's tests.

Every expected figure here is computed in plain Python from ``select(audit)`` (or from the rows a
test wrote), never with the report's own code, so a test pins the SQL against a second method.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, select

from ferryman.store.tables import audit, virtual_keys
from tests.pipeline.conftest import (  # noqa: F401  (fixtures)
    audit_db,
    ferryman_client,
    ferryman_settings,
    upstream_key,
)

_SEQ = itertools.count(1)


def records(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def nearest_rank(values: Iterable[float | None], percent: int) -> float | None:
    """The value at rank ceil(percent x n / 100) of the sorted values (None values left out)."""
    ordered = sorted(v for v in values if v is not None)
    return ordered[math.ceil(percent * len(ordered) / 100) - 1] if ordered else None


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's stats, the long way round."""
    return {
        "requests": len(rows),
        "cost_usd": sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "cached_input_tokens": sum(r["cached_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "reasoning_tokens": sum(r["reasoning_tokens"] for r in rows),
        "errors": sum(1 for r in rows if r["status"] >= 400),
        "rate_limited": sum(1 for r in rows if r["status"] == 429),
        "cache_hits": sum(1 for r in rows if r["cache"] == "hit"),
        "latency_p50_ms": nearest_rank((r["latency_ms"] for r in rows), 50),
        "latency_p95_ms": nearest_rank((r["latency_ms"] for r in rows), 95),
        "ttft_p50_ms": nearest_rank((r["ttft_ms"] for r in rows), 50),
        "ttft_p95_ms": nearest_rank((r["ttft_ms"] for r in rows), 95),
    }


def grouped(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return {k: totals(v) for k, v in groups.items()}


def stats_dict(stats: Any) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in totals([])}


def synthetic(**fields: Any) -> dict[str, Any]:
    """An audit row written directly (outside the hash chain: the report does not verify it)."""
    row: dict[str, Any] = {
        "ts": 1_764_547_200.0,  # 2025-12-01T00:00:00Z
        "request_id": f"req_{next(_SEQ):06d}",
        "principal": "anonymous",
        "model": "gpt-4o-mini",
        "endpoint": "/chat/completions",
        "status": 200,
        "attempts": 1,
        "latency_ms": 100.0,
        "ttft_ms": None,
        "input_tokens": 0,
        "cached_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal(0),
        "cache": "miss",
        "tags": {},
        "prev_hash": "0" * 64,
        "hash": "0" * 64,
    }
    row.update(fields)
    return row


def write(engine: Engine, rows: list[dict[str, Any]], keys: Iterable[dict[str, Any]] = ()) -> None:
    with engine.begin() as conn:
        for number, key in enumerate(keys):
            conn.execute(
                insert(virtual_keys).values(
                    hash=f"{number:064x}", hint=f"x{number:04d}", created=0.0, metadata={}, **key
                )
            )
        if rows:
            conn.execute(insert(audit), rows)
