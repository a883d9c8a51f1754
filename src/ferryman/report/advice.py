"""The report's advice: what to change, each with its dollar effect, evidence and action.

Implemented so far: ``deprecated_model``. For every model in the period with a shutdown date (the
lifecycle catalogue, with the dates the upstreams reported on top: :func:`ferryman.catalogue.lifecycle`),
the period's tokens are priced on the model and on its successor with the same price table and
the same function the pipeline prices calls with (:meth:`ferryman.pricing.PriceTable.cost_usd`),
at the standard tier (the audit log does not yet record the tier a call ran at). ``savings_usd`` is
the difference, and is negative when the successor costs more for the same tokens: the title and
action say so rather than hide it. A migration off a retiring model is not optional, so the
advice stands either way; the dollars say what it does to the bill.

Prices are linear in each kind of token within one rate (standard or long context), so a model's
calls are priced from per-group sums: calls above the long-context threshold are summed and priced
apart from the others (``query.model_tokens``), and the others at per-token rates read from the
same function (the cost of one token of each kind), so a sum above the threshold never switches
short calls to long rates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

from ferryman import catalogue
from ferryman.pricing import PriceTable, TokenCounts
from ferryman.report.model import Advice, usd_text
from ferryman.report.query import ModelTokens

MONTH_DAYS = 30  # savings_usd_per_month = savings_usd x 30 / the period's days


def priced(table: PriceTable, model: str, groups: Sequence[ModelTokens]) -> Decimal | None:
    """The tokens of ``groups`` priced on ``model`` at the standard tier, or None without a price."""
    total = Decimal(0)
    for group in groups:
        if group.long:
            counts = TokenCounts(
                input=group.input_tokens, cached_input=group.cached_input_tokens, output=group.output_tokens
            )
            cost = table.cost_usd(model, counts)
        else:
            per_input = table.cost_usd(model, TokenCounts(input=1))
            per_cached = table.cost_usd(model, TokenCounts(input=1, cached_input=1))
            per_output = table.cost_usd(model, TokenCounts(output=1))
            if per_input is None or per_cached is None or per_output is None:
                return None
            cached = min(group.cached_input_tokens, group.input_tokens)
            cost = (group.input_tokens - cached) * per_input + cached * per_cached + group.output_tokens * per_output
        if cost is None:
            return None
        total += cost
    return total


def per_month(amount: Decimal | None, period_days: float) -> Decimal | None:
    if amount is None or period_days <= 0:
        return None
    return amount * MONTH_DAYS / Decimal(str(period_days))


def deprecated_models(
    tokens: Sequence[ModelTokens],
    table: PriceTable,
    today: dt.date,
    period_days: float,
    upstream: Mapping[str, catalogue.UpstreamDate] | None = None,
) -> list[Advice]:
    """One ``deprecated_model`` advice per model of ``tokens`` that has a shutdown date, soonest first."""
    by_model: dict[str, list[ModelTokens]] = {}
    for group in tokens:
        by_model.setdefault(group.model, []).append(group)
    found: list[tuple[dt.date, Advice]] = []
    for model, groups in by_model.items():
        life = catalogue.lifecycle(model, upstream)
        if life is None or life.shutdown_date is None:
            continue
        found.append((life.shutdown_date, _advice(model, groups, life, table, today, period_days)))
    return [advice for _, advice in sorted(found, key=lambda pair: (pair[0], pair[1].evidence["model"]))]


def _advice(
    model: str,
    groups: Sequence[ModelTokens],
    life: catalogue.Lifecycle,
    table: PriceTable,
    today: dt.date,
    period_days: float,
) -> Advice:
    from ferryman.report.render import money  # the one money format of the report

    days_left = life.days_left(today) or 0
    date = life.shutdown_date.isoformat() if life.shutdown_date else "?"
    current = priced(table, model, groups)
    successor = life.successor
    next_cost = priced(table, successor, groups) if successor else None
    savings = current - next_cost if current is not None and next_cost is not None else None
    calls = sum(group.calls for group in groups)
    evidence = {
        "model": model,
        "calls": calls,
        "spend_usd": usd_text(sum((g.cost_usd for g in groups), Decimal(0))),
        "priced_usd": usd_text(current),
        "successor": successor,
        "successor_usd": usd_text(next_cost),
        "shutdown_date": date,
        "days_left": days_left,
        "lifecycle_source": life.source,
        "input_tokens": sum(g.input_tokens for g in groups),
        "cached_input_tokens": sum(g.cached_input_tokens for g in groups),
        "output_tokens": sum(g.output_tokens for g in groups),
        "example_request_id": max((g.example_request_id for g in groups if g.example_request_id), default=None),
    }
    when = f"was shut down on {date}" if days_left <= 0 else f"shuts down on {date} ({days_left} days left)"
    if successor is None:
        title = f"{model} {when}; no successor is named"
        action = f"Move the {calls} calls on {model} to a current model before {date}."
    elif savings is None:
        title = f"{model} {when}: move to {successor} (no price known to compare)"
        action = f"Move the {calls} calls on {model} to {successor} before {date}; check its price."
    elif savings >= 0:
        title = f"{model} {when}: {successor} would have cost {money(savings)} less for the same tokens"
        action = f"Move the {calls} calls on {model} to {successor} before {date}, and test the quality first."
    else:
        title = f"{model} {when}: {successor} costs {money(-savings)} more for the same tokens"
        action = (
            f"Move the {calls} calls on {model} to {successor} before {date} and budget for the higher price "
            "(or pick a cheaper current model), and test the quality first."
        )
    return Advice("deprecated_model", title, savings, per_month(savings, period_days), evidence, action)
