"""The report's aggregation, done by the database (SQLAlchemy Core; SQLite ≥ 3.25 and PostgreSQL).

Nothing here loops over audit rows in Python: every figure is a ``GROUP BY`` in SQL, and Python
only turns the few grouped rows into :mod:`ferryman.report.model` objects. That keeps a report
over millions of records as cheap as the database makes it, and lets a test recompute every
figure independently from ``select(audit)``.

Rules the figures follow (the README's "Reports" section states them too):

- **Period**: records with ``from <= ts < to`` (unix seconds, UTC).
- **Cost** is summed as whole units of 10⁻¹⁰ USD (the column's scale), so SQLite, which keeps
  ``Numeric`` as a float, adds exactly as PostgreSQL does; the total is a ``Decimal``.
- **Errors** are records with ``status >= 400``; **rate limited** those with ``status == 429``;
  **cache hits** those whose ``cache`` is ``hit``.
- **Percentiles** are nearest-rank: the p-th percentile of n values is the value at rank
  ``ceil(p x n / 100)`` (1-based) in ascending order, computed with ``row_number()`` and
  ``count()`` window functions per group. Latency counts every record; TTFT only records that
  have one (streams).
- **Groups**: ``model``, ``endpoint``, ``key`` (the principal, with the name ``virtual_keys``
  knows for it), ``team`` (the key's team, else the call's ``team`` tag, as SDK calls carry it),
  ``tag:NAME`` (the call's tag), ``day`` and ``hour`` (UTC buckets of ``ts``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Connection, Float, and_, case, cast, func, literal, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from ferryman.report.model import Stats
from ferryman.store.tables import audit, virtual_keys

USD_UNITS = 10**10  # the cost column's scale, Numeric(20, 10)
LONG_CONTEXT = 272_000  # pricing.LONG_CONTEXT_THRESHOLD, kept apart so this module needs no price table
DIMENSIONS = ("model", "endpoint", "key", "team", "day", "hour")  # and tag:NAME
_SECONDS = {"day": 86_400, "hour": 3_600}


class _Bucket(FunctionElement[int]):
    """``floor(ts / width)`` as an integer: SQLite's CAST truncates (ts is positive), PostgreSQL's rounds."""

    type = BigInteger()
    inherit_cache = True


@compiles(_Bucket)
def _bucket_default(element: _Bucket, compiler: Any, **kw: Any) -> str:
    ts, width = list(element.clauses)
    return f"CAST(({compiler.process(ts, **kw)}) / {compiler.process(width, **kw)} AS BIGINT)"


@compiles(_Bucket, "postgresql")
def _bucket_postgresql(element: _Bucket, compiler: Any, **kw: Any) -> str:
    ts, width = list(element.clauses)
    return f"CAST(floor(({compiler.process(ts, **kw)}) / {compiler.process(width, **kw)}) AS BIGINT)"


def bucket(width_seconds: int) -> ColumnElement[int]:
    return _Bucket(audit.c.ts, literal(float(width_seconds), Float))


@dataclass(frozen=True)
class Filters:
    """Which records a report covers: ``start <= ts < end``, and optional model, key and tags."""

    start: float
    end: float
    model: str | None = None
    key: str | None = None  # a key's id (the principal) or its name
    tags: tuple[tuple[str, str], ...] = ()

    def clauses(self, start: float | None = None) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [
            audit.c.ts >= (self.start if start is None else start),
            audit.c.ts < self.end,
        ]
        if self.model is not None:
            where.append(audit.c.model == self.model)
        if self.key is not None:
            named = select(virtual_keys.c.id).where(virtual_keys.c.name == self.key)
            where.append(or_(audit.c.principal == self.key, audit.c.principal.in_(named.scalar_subquery())))
        for name, value in self.tags:
            where.append(audit.c.tags[name].as_string() == value)
        return where


@dataclass(frozen=True)
class Dimension:
    """One ``--by``: the SQL expressions grouped on and how a grouped row's values read."""

    name: str
    columns: tuple[ColumnElement[Any], ...]
    labels: tuple[str, ...] = field(default=())

    def values(self, raw: Sequence[Any]) -> dict[str, Any]:
        if self.name in _SECONDS:
            number = raw[0]
            moment = dt.datetime.fromtimestamp(int(number) * _SECONDS[self.name], dt.UTC)
            return {self.name: moment.strftime("%Y-%m-%d" if self.name == "day" else "%Y-%m-%dT%H:00Z")}
        if self.name == "key":
            return {"key": raw[0], "key_name": raw[1]}
        return {self.name: raw[0]}


def dimension(name: str) -> Dimension:
    """The ``--by`` called ``name``; ``ValueError`` for an unknown one."""
    if name in ("model", "endpoint"):
        return Dimension(name, (audit.c[name],))
    if name == "key":
        return Dimension(name, (audit.c.principal, virtual_keys.c.name))
    if name == "team":
        return Dimension(name, (func.coalesce(virtual_keys.c.team, audit.c.tags["team"].as_string()),))
    if name in _SECONDS:
        return Dimension(name, (bucket(_SECONDS[name]),))
    if name.startswith("tag:") and len(name) > 4:
        return Dimension(name, (audit.c.tags[name[4:]].as_string(),))
    raise ValueError(f"unknown grouping {name!r}: use one of {', '.join(DIMENSIONS)} or tag:NAME")


def _source() -> Any:
    return audit.outerjoin(virtual_keys, audit.c.principal == virtual_keys.c.id)


def _cost_units() -> ColumnElement[Any]:
    return cast(func.round(audit.c.cost_usd * USD_UNITS), BigInteger)


def _usd(units: Any) -> Decimal:
    return Decimal(int(units or 0)) / USD_UNITS


def _rank(count: ColumnElement[Any], percent: int) -> ColumnElement[Any]:
    """``ceil(percent x count / 100)`` in integer arithmetic (no ``ceil`` in SQLite's core)."""
    return (count * percent + 99) // 100


def grouped(conn: Connection, filters: Filters, dims: Sequence[Dimension]) -> list[tuple[dict[str, Any], Stats]]:
    """One :class:`Stats` per group of ``dims`` (no dims: one row, the totals), ordered by the groups."""
    keys = [column for dim in dims for column in dim.columns]
    labelled = [column.label(f"g{i}") for i, column in enumerate(keys)]
    partition = keys or None
    inner = (
        select(
            *labelled,
            audit.c.status,
            audit.c.cache,
            audit.c.latency_ms,
            audit.c.ttft_ms,
            audit.c.input_tokens,
            audit.c.cached_tokens,
            audit.c.output_tokens,
            audit.c.reasoning_tokens,
            _cost_units().label("cost_units"),
            func.row_number().over(partition_by=partition, order_by=(audit.c.latency_ms, audit.c.seq)).label("lat_rn"),
            func.count().over(partition_by=partition).label("lat_n"),
            func.row_number()
            .over(partition_by=[*keys, audit.c.ttft_ms.is_(None)], order_by=(audit.c.ttft_ms, audit.c.seq))
            .label("ttft_rn"),
            func.count(audit.c.ttft_ms).over(partition_by=partition).label("ttft_n"),
        )
        .select_from(_source())
        .where(and_(*filters.clauses()))
        .subquery()
    )
    g = [inner.c[f"g{i}"] for i in range(len(keys))]
    c = inner.c

    def at_rank(value: Any, rn: Any, n: Any, percent: int, present: Any = None) -> ColumnElement[Any]:
        hit = rn == _rank(n, percent)
        return func.max(case((and_(hit, present) if present is not None else hit, value)))

    query = (
        select(
            *g,
            func.count(),
            func.sum(c.input_tokens),
            func.sum(c.cached_tokens),
            func.sum(c.output_tokens),
            func.sum(c.reasoning_tokens),
            func.sum(c.cost_units),
            func.sum(case((c.status >= 400, 1), else_=0)),
            func.sum(case((c.status == 429, 1), else_=0)),
            func.sum(case((c.cache == "hit", 1), else_=0)),
            at_rank(c.latency_ms, c.lat_rn, c.lat_n, 50),
            at_rank(c.latency_ms, c.lat_rn, c.lat_n, 95),
            at_rank(c.ttft_ms, c.ttft_rn, c.ttft_n, 50, c.ttft_ms.is_not(None)),
            at_rank(c.ttft_ms, c.ttft_rn, c.ttft_n, 95, c.ttft_ms.is_not(None)),
        )
        .group_by(*g)
        .order_by(*g)
    )
    out: list[tuple[dict[str, Any], Stats]] = []
    for row in conn.execute(query):
        raw, figures = row[: len(keys)], row[len(keys) :]
        values: dict[str, Any] = {}
        offset = 0
        for dim in dims:
            values.update(dim.values(raw[offset : offset + len(dim.columns)]))
            offset += len(dim.columns)
        out.append((values, _stats(figures)))
    return out  # without keys, always one row: SQL's aggregate of no rows


def _stats(f: Sequence[Any]) -> Stats:
    def ms(value: Any) -> float | None:
        return None if value is None else float(value)

    return Stats(
        requests=int(f[0]),
        input_tokens=int(f[1] or 0),
        cached_input_tokens=int(f[2] or 0),
        output_tokens=int(f[3] or 0),
        reasoning_tokens=int(f[4] or 0),
        cost_usd=_usd(f[5]),
        errors=int(f[6] or 0),
        rate_limited=int(f[7] or 0),
        cache_hits=int(f[8] or 0),
        latency_p50_ms=ms(f[9]),
        latency_p95_ms=ms(f[10]),
        ttft_p50_ms=ms(f[11]),
        ttft_p95_ms=ms(f[12]),
    )


def spend(conn: Connection, filters: Filters, start: float | None = None) -> Decimal:
    """The cost of the filtered records from ``start`` (default: the filters' own) to their end."""
    query = select(func.sum(_cost_units())).where(and_(*filters.clauses(start)))
    return _usd(conn.execute(query).scalar())


def daily_spend(conn: Connection, filters: Filters) -> list[tuple[dt.date, Decimal]]:
    """The cost of each UTC day that has records, in order."""
    day = bucket(_SECONDS["day"]).label("day")
    query = select(day, func.sum(_cost_units())).where(and_(*filters.clauses())).group_by(day).order_by(day)
    return [
        (dt.date(1970, 1, 1) + dt.timedelta(days=int(number)), _usd(units)) for number, units in conn.execute(query)
    ]


@dataclass(frozen=True)
class ModelTokens:
    """The tokens of one model's calls, split at the long-context threshold (calls above it are
    priced at the long rates one by one, so they are summed apart)."""

    model: str
    long: bool
    calls: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    example_request_id: str | None


def model_tokens(conn: Connection, filters: Filters) -> list[ModelTokens]:
    long = case((audit.c.input_tokens > LONG_CONTEXT, 1), else_=0).label("long")
    query = (
        select(
            audit.c.model,
            long,
            func.count(),
            func.sum(audit.c.input_tokens),
            func.sum(audit.c.cached_tokens),
            func.sum(audit.c.output_tokens),
            func.sum(_cost_units()),
            func.max(audit.c.request_id),
        )
        .where(and_(*filters.clauses(), audit.c.model.is_not(None)))
        .group_by(audit.c.model, long)
        .order_by(audit.c.model, long)
    )
    return [
        ModelTokens(model, bool(is_long), int(n), int(i or 0), int(ci or 0), int(o or 0), _usd(units), example)
        for model, is_long, n, i, ci, o, units, example in conn.execute(query)
    ]
