"""Put a report together from the database: the queries of :mod:`.query`, then the few figures
made from their grouped results (the month's projection, the spikes, the advice).

:func:`build` takes ``now`` so a test (or a rehearsal) fixes the moment the month-to-date, the
projection and the days left are counted from; the command passes the real time.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import Connection

from ferryman import lifecycle_store
from ferryman.pricing import PriceTable
from ferryman.report import advice, query
from ferryman.report.model import Group, Month, Report, Spike

SPIKE_MIN_DAYS = 7  # days with records before any day is called a spike
SPIKE_MADS = 3  # a spike is above median + 3 x MAD


def build(
    conn: Connection,
    filters: query.Filters,
    by: Sequence[str] = (),
    *,
    now: float,
    table: PriceTable | None = None,
) -> Report:
    """The report over ``filters`` (``by``: the ``--by`` groupings, checked by :func:`query.dimension`)."""
    dims = [query.dimension(name) for name in by]
    [(_, totals)] = query.grouped(conn, filters, [])
    by_model = [Group(values, stats) for values, stats in query.grouped(conn, filters, [query.dimension("model")])]
    by_model.sort(key=lambda group: (-group.stats.cost_usd, str(group.values["model"])))
    breakdown = [Group(values, stats) for values, stats in query.grouped(conn, filters, dims)] if dims else None
    report_days = (filters.end - filters.start) / 86_400
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    upstream = lifecycle_store.read(conn)
    items = advice.deprecated_models(
        query.model_tokens(conn, filters), table or PriceTable.default(), today, report_days, upstream
    )
    items.sort(key=lambda item: -(item.savings_usd or Decimal(0)))
    daily = query.daily_spend(conn, filters)
    return Report(
        start=filters.start,
        end=filters.end,
        totals=totals,
        by_model=by_model,
        by=tuple(by),
        breakdown=breakdown,
        month=month(conn, filters, now),
        spikes=spikes(daily),
        advice=items,
        filters={"model": filters.model, "key": filters.key, "tags": dict(filters.tags)},
        daily=daily,
    )


def month(conn: Connection, filters: query.Filters, now: float) -> Month:
    """Spend in the month of the period's end (or of ``now``, when the period ends later), from the
    month's first second to that moment, with the same filters; projected linearly to the month's end."""
    as_of = min(filters.end, now)
    moment = dt.datetime.fromtimestamp(as_of, dt.UTC)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days_in_month = calendar.monthrange(first.year, first.month)[1]
    to_date = query.spend(conn, dataclasses.replace(filters, end=as_of), start=first.timestamp())
    elapsed = Decimal(round(as_of - first.timestamp())) / 86_400  # whole seconds
    projected = to_date / elapsed * days_in_month if elapsed > 0 else None
    return Month(first.strftime("%Y-%m"), to_date, projected, float(elapsed), days_in_month)


def _median(values: Sequence[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spikes(daily: Sequence[tuple[dt.date, Decimal]]) -> list[Spike]:
    """Days above ``median + 3 x MAD`` of the daily spend (days with records only; at least 7 of them)."""
    if len(daily) < SPIKE_MIN_DAYS:
        return []
    amounts = [amount for _, amount in daily]
    median = _median(amounts)
    mad = _median([abs(amount - median) for amount in amounts])
    return [Spike(day, amount, median, mad) for day, amount in daily if amount > median + SPIKE_MADS * mad]
