"""Reading audit records back as stored, value by value, for ``audit verify``.

A record whose stored values are malformed (a NULL where a value is required, text where a
number belongs, a hash that is not hex) must be named by its sequence number, never crash the
check: rows are read as the driver hands them over, each column's own processing is applied
here, and each value is checked against its column's kind before it is hashed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select, type_coerce
from sqlalchemy.types import NullType

from ferryman.store.tables import audit

# What verify checks each stored value against before hashing it (a malformed record is named,
# never a crash): the columns that must hold a value, and each column's kind.
_REQUIRED = frozenset(c.name for c in audit.columns if not c.nullable)
_WHOLE = frozenset(
    {
        "seq",
        "status",
        "attempts",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
        "output_cap",
        "prefix_tokens",
    }
)
_FLAGS = frozenset({"via_batch", "deterministic"})
_NUMBER = frozenset({"ts", "latency_ms", "ttft_ms"})
HEX = re.compile(r"[0-9a-f]{64}")
HASHES = ("prev_hash", "hash")
COLUMNS = tuple(c.name for c in audit.columns)
# The type a column's value has when all is well, where one type test is all it takes.
_PLAIN: dict[str, type] = {
    **{name: str for name in COLUMNS},
    **{name: int for name in _WHOLE},
    **{name: bool for name in _FLAGS},
    "cost_usd": Decimal,
    "tags": dict,
    "ratelimit": dict,
}
_CLOSELY = frozenset({*_NUMBER, *HASHES, "cost_usd", "ratelimit"})  # finite numbers, hex of the right length
# Every column as the driver hands it over (no SQLAlchemy processing, which raises on a bad value):
# verify applies each column's own processing itself, value by value.
RAW_RECORDS = select(*(type_coerce(c, NullType()).label(c.name) for c in audit.columns)).order_by(audit.c.seq)


def brief(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 24 else shown[:23] + "…"


def column_processors(conn: Connection, description: Any) -> list[Callable[[Any], Any] | None]:
    """Each column's result processing (in :data:`COLUMNS` order) as SQLAlchemy would do it on
    this dialect and driver."""
    types = {str(d[0]): d[1] for d in description or ()}
    dialect = conn.dialect
    out: list[Callable[[Any], Any] | None] = []
    for column in audit.columns:
        try:
            out.append(column.type.dialect_impl(dialect).result_processor(dialect, types.get(column.name)))
        except Exception:  # a type code the dialect does not know: the driver's value as it is
            out.append(None)
    return out


def parse_record(
    raw: Sequence[Any], processors: Sequence[Callable[[Any], Any] | None]
) -> tuple[dict[str, Any], list[str]]:
    """A stored row (its values in :data:`COLUMNS` order), each value processed and checked:
    (the values by name, what is wrong with them). A value that is wrong is given as None."""
    values: dict[str, Any] = {}
    wrong: list[str] = []
    for name, value, process in zip(COLUMNS, raw, processors, strict=True):
        if value is None:
            if name in _REQUIRED:
                wrong.append(f"{name} is NULL where a value is required")
        else:
            if process is not None:
                try:
                    value = process(value)
                except Exception:
                    wrong.append(_unreadable(name, value))
                    value = None
            # the common case at the cost of one type test; anything else is looked at closely
            if value is not None and (type(value) is not _PLAIN.get(name) or name in _CLOSELY):
                problem = _value_problem(name, value)
                if problem is not None:
                    wrong.append(problem)
                    value = None
        values[name] = value
    return values, wrong


def _unreadable(name: str, value: Any) -> str:
    if name in ("tags", "ratelimit"):
        return f"{name} is not valid JSON"
    if name == "cost_usd":
        return f"cost_usd is not a number ({brief(value)})"
    return f"{name} cannot be read ({brief(value)})"


def _value_problem(name: str, value: Any) -> str | None:
    if name in _WHOLE:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is not a whole number ({brief(value)})"
    elif name in _NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{name} is not a number ({brief(value)})"
    elif name == "cost_usd":
        if (
            isinstance(value, bool)
            or not isinstance(value, Decimal | int | float)
            or not Decimal(str(value)).is_finite()
        ):
            return f"cost_usd is not a number ({brief(value)})"
    elif name == "tags":
        if not isinstance(value, dict):
            return f"tags is not a JSON object ({type(value).__name__})"
    elif name in _FLAGS:
        if not isinstance(value, bool):
            return f"{name} is not true or false ({brief(value)})"
    elif name == "ratelimit":
        if not isinstance(value, dict) or not all(type(v) is int for v in value.values()):
            return f"ratelimit is not a JSON object of whole numbers ({brief(value)})"
    elif name in HASHES:
        if not isinstance(value, str) or not HEX.fullmatch(value):
            return f"{name} is not 64 lowercase hex digits ({brief(value)})"
    elif not isinstance(value, str):
        return f"{name} is not text ({type(value).__name__})"
    return None
