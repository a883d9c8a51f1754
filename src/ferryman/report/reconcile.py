"""``report --reconcile``: what the upstream billed against what Ferryman recorded, per UTC day and model.

Why: the audit log is only worth trusting if it adds up to the invoice. This compares the
organisation Usage and Costs API (:mod:`.billed`) with the audit's own sums, and names what
went *around* Ferryman (traffic the upstream saw that no Ferryman record accounts for).

The rules (the README's "Reconciliation" part says the same):

- **Period**: whole UTC days, because the Usage API buckets by day: from the midnight at or
  before the report's start to the midnight at or after its end.
- **Ferryman's side**, summed in SQL (one ``GROUP BY`` on day, kind and model): the audit
  records of the upstream's deployments (``audit.upstream`` is one of the settings' deployments
  of kind ``openai`` with that base URL) on an inference endpoint (chat completions, responses,
  legacy completions → ``completions``; embeddings; moderations), answered (``status < 400``),
  not from Ferryman's response cache, and that spent tokens (a list or retrieve on the same
  path records none). A moderation with no model is ``omni-moderation-latest``, as OpenAI counts it.
- **Model names**: OpenAI groups usage by the model it served, which may be a dated snapshot
  (``gpt-4o-mini-2024-07-18``) of the alias the audit recorded. An upstream model is matched to
  the recorded name when equal; else a name ending ``-YYYY-MM-DD`` is folded into its alias
  when the audit recorded the alias in the period.
- **Dollars**: from the Costs API (``group_by=line_item``; the line item's model is the text
  before ``", "``), ``cost_source: "costs"``. Where the Costs API has nothing for a day and
  model that has usage, or refused, the usage tokens are priced with the same price table the
  pipeline uses (batch rows at the batch price, everything else at standard), ``"priced"``;
  ``"unpriced"`` when the model has no price (that row's dollars are not compared). Moderations
  are free: ``"free"``.
- **Matched**: equal requests and tokens (input, cached input, output), and dollars within
  :data:`CENT_TOLERANCE` (half a cent: the same to the cent). Moderation tokens are not compared,
  only their requests: Ferryman records none (the reply carries no usage), and they are free.
- **Difference** is billed - recorded, field by field; **unaccounted** its positive part (what
  the upstream saw beyond Ferryman's records). A row is ``matched``, ``unaccounted`` (the upstream
  saw more), ``over_recorded`` (Ferryman recorded more: another organisation's key, a price table
  that differs) or ``differs`` (both ways).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, or_, select

from ferryman.pricing import PriceTable, TokenCounts
from ferryman.report.billed import DAY, Billed
from ferryman.report.model import iso, usd_text
from ferryman.report.query import _cost_units, _usd, bucket
from ferryman.store.tables import audit

CENT_TOLERANCE = Decimal("0.005")
MODERATION_DEFAULT = "omni-moderation-latest"
KIND_OF_ENDPOINT = {
    "/chat/completions": "completions",
    "/responses": "completions",
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/moderations": "moderations",
}
_SNAPSHOT = re.compile(r"^(?P<alias>.+)-\d{4}-\d{2}-\d{2}$")


def whole_days(start: float, end: float) -> tuple[int, int]:
    """``[start, end)`` widened to UTC midnights (at least one day)."""
    first = int(start // DAY * DAY)
    last = int(-(-end // DAY) * DAY)
    return first, max(last, first + DAY)


@dataclass(frozen=True)
class Figures:
    """Requests, tokens and dollars of one side (``cost_usd`` None: not known, so not compared)."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)

    def plus(self, other: Figures) -> Figures:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return Figures(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            cost,
        )

    def minus(self, other: Figures, *, tokens: bool = True) -> Figures:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd - other.cost_usd
        if not tokens:
            return Figures(self.requests - other.requests, 0, 0, 0, cost)
        return Figures(
            self.requests - other.requests,
            self.input_tokens - other.input_tokens,
            self.cached_input_tokens - other.cached_input_tokens,
            self.output_tokens - other.output_tokens,
            cost,
        )

    def positive(self) -> Figures:
        return Figures(
            max(self.requests, 0),
            max(self.input_tokens, 0),
            max(self.cached_input_tokens, 0),
            max(self.output_tokens, 0),
            None if self.cost_usd is None else max(self.cost_usd, Decimal(0)),
        )

    def signs(self) -> set[int]:
        """The signs (-1, 1) of the fields that differ (dollars beyond the tolerance)."""
        found = {(n > 0) - (n < 0) for n in (self.requests, self.input_tokens, self.cached_input_tokens,
                                              self.output_tokens)}  # fmt: skip
        if self.cost_usd is not None and abs(self.cost_usd) >= CENT_TOLERANCE:
            found.add(1 if self.cost_usd > 0 else -1)
        return found - {0}

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd_text(self.cost_usd),
        }


@dataclass(frozen=True)
class Row:
    """One UTC day and model: billed, recorded, and what follows from them."""

    day: dt.date
    model: str
    kind: str  # completions, embeddings, moderations, or other (a cost line with no usage)
    billed: Figures
    recorded: Figures
    cost_source: str  # costs, priced, unpriced, free

    @property
    def tokens_compared(self) -> bool:
        return self.kind != "moderations"

    @property
    def difference(self) -> Figures:
        return self.billed.minus(self.recorded, tokens=self.tokens_compared)

    @property
    def unaccounted(self) -> Figures:
        return self.difference.positive()

    @property
    def status(self) -> str:
        signs = self.difference.signs()
        if not signs:
            return "matched"
        if signs == {1}:
            return "unaccounted"
        return "over_recorded" if signs == {-1} else "differs"

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "model": self.model,
            "kind": self.kind,
            "status": self.status,
            "cost_source": self.cost_source,
            "tokens_compared": self.tokens_compared,
            "billed": self.billed.as_json(),
            "recorded": self.recorded.as_json(),
            "difference": self.difference.as_json(),
            "unaccounted": self.unaccounted.as_json(),
        }


def _sum(figures: Iterable[Figures]) -> Figures:
    total = Figures()
    for one in figures:  # unknown dollars (None) are left out of a total, not made unknown
        total = total.plus(one if one.cost_usd is not None else Figures(*_counts(one), cost_usd=Decimal(0)))
    return total


def _requests_only(f: Figures) -> Figures:
    return Figures(f.requests, cost_usd=f.cost_usd)


def _counts(f: Figures) -> tuple[int, int, int, int]:
    return f.requests, f.input_tokens, f.cached_input_tokens, f.output_tokens


@dataclass(frozen=True)
class Reconciliation:
    deployments: tuple[str, ...]
    base_url: str
    start: int  # a UTC midnight
    end: int
    rows: list[Row] = field(default_factory=list)
    costs_error: str | None = None  # why dollars were priced from tokens, when the Costs API refused

    @property
    def matched(self) -> bool:
        return all(row.status == "matched" for row in self.rows)

    def totals(self) -> dict[str, Figures]:
        """Sums over the rows; tokens only of rows that compare them (not moderations), so that
        ``billed - recorded`` is the ``difference``."""
        return {
            "billed": _sum(r.billed if r.tokens_compared else _requests_only(r.billed) for r in self.rows),
            "recorded": _sum(r.recorded if r.tokens_compared else _requests_only(r.recorded) for r in self.rows),
            "difference": _sum(r.difference for r in self.rows),
            "unaccounted": _sum(r.unaccounted for r in self.rows),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "upstream": {"deployments": list(self.deployments), "base_url": self.base_url},
            "period": {"from": iso(self.start), "to": iso(self.end)},
            "matched": self.matched,
            "cost_tolerance_usd": usd_text(CENT_TOLERANCE),
            "costs_error": self.costs_error,
            "totals": {name: figures.as_json() for name, figures in self.totals().items()},
            "rows": [row.as_json() for row in self.rows],
        }


def recorded(
    conn: Connection, deployments: Sequence[str], start: int, end: int, model: str | None = None
) -> dict[tuple[int, str, str], Figures]:
    """Ferryman's side: per (UTC day start, kind, model), summed by the database."""
    kind = case(*((audit.c.endpoint == path, literal(name)) for path, name in KIND_OF_ENDPOINT.items()))
    named = func.coalesce(audit.c.model, case((kind == "moderations", literal(MODERATION_DEFAULT))))
    day, kind_l, model_l = bucket(DAY).label("day"), kind.label("kind"), named.label("model")
    where = [
        audit.c.ts >= start,
        audit.c.ts < end,
        audit.c.upstream.in_(list(deployments)),
        audit.c.endpoint.in_(list(KIND_OF_ENDPOINT)),
        audit.c.status < 400,
        audit.c.cache != "hit",
        or_(audit.c.input_tokens + audit.c.output_tokens > 0, audit.c.endpoint == "/moderations"),
    ]
    if model is not None:
        where.append(audit.c.model == model)
    query = (
        select(
            day,
            kind_l,
            model_l,
            func.count(),
            func.sum(audit.c.input_tokens),
            func.sum(audit.c.cached_tokens),
            func.sum(audit.c.output_tokens),
            func.sum(_cost_units()),
        )
        .where(and_(*where))
        .group_by(day, kind_l, model_l)
    )
    return {
        (int(d) * DAY, str(k), str(m or "")): Figures(int(n), int(i or 0), int(c or 0), int(o or 0), _usd(units))
        for d, k, m, n, i, c, o, units in conn.execute(query)
    }


def served_as(model: str, known: set[str]) -> str:
    """The recorded name an upstream model counts under (a dated snapshot folds into its alias)."""
    if model in known:
        return model
    match = _SNAPSHOT.match(model)
    return match.group("alias") if match and match.group("alias") in known else model


def compare(
    billed: Billed,
    mine: dict[tuple[int, str, str], Figures],
    table: PriceTable,
    model: str | None = None,
) -> list[Row]:
    """The rows, per day and model, of billed against recorded (ordered by day, kind, model)."""
    known = {m for _, _, m in mine}
    usage: dict[tuple[int, str, str], Figures] = {}
    priced: dict[tuple[int, str, str], Decimal | None] = {}
    for u in billed.usage:
        key = (u.day, u.kind, served_as(u.model, known))
        tokens = Figures(u.requests, u.input_tokens, u.cached_input_tokens, u.output_tokens, Decimal(0))
        usage[key] = usage.get(key, Figures()).plus(tokens)
        counts = TokenCounts(input=u.input_tokens, cached_input=u.cached_input_tokens, output=u.output_tokens)
        tier = "batches" if u.batch else ""
        cost = Decimal(0) if u.kind == "moderations" else table.cost_usd(u.model, counts, tier=tier)
        before = priced.get(key, Decimal(0))
        priced[key] = None if before is None or cost is None else before + cost
    costs: dict[tuple[int, str], Decimal] = {}
    for c in billed.costs or []:
        day_model = (c.day, served_as(c.model, known))
        costs[day_model] = costs.get(day_model, Decimal(0)) + c.amount_usd
    kind_of = {(d, m): k for d, k, m in [*usage, *mine]}
    for d, m in costs:  # dollars for a day and model with no usage on either side: another kind
        kind_of.setdefault((d, m), "other")
    keys = set(usage) | set(mine) | {(d, kind_of[(d, m)], m) for d, m in costs}
    rows: list[Row] = []
    for key in sorted(keys):
        d, k, m = key
        if model is not None and m != model:
            continue
        dollars: Decimal | None
        if k == "moderations":
            dollars, source = Decimal(0), "free"
        elif (d, m) in costs:
            dollars, source = costs.pop((d, m)), "costs"
        elif key in priced:
            dollars = priced[key]
            source = "priced" if dollars is not None else "unpriced"
        else:
            dollars, source = Decimal(0), "costs" if billed.costs is not None else "priced"
        bill = usage.get(key, Figures())
        bill = Figures(*_counts(bill), cost_usd=dollars)
        day = dt.date(1970, 1, 1) + dt.timedelta(days=d // DAY)
        rows.append(Row(day, m, k, bill, mine.get(key, Figures()), source))
    return rows


def choose_upstream(settings: Any, name: str | None) -> tuple[tuple[str, ...], str]:
    """The deployments (their names) and the base URL to reconcile: ``name``'s, else the one base URL
    the settings' ``openai`` deployments share. ``ValueError`` (naming ``--upstream``) otherwise."""
    openai_kind = [d for d in settings.deployments if d.kind == "openai"]
    if name is not None:
        chosen = [d for d in openai_kind if d.name == name]
        if not chosen:
            names = ", ".join(d.name for d in openai_kind) or "none"
            raise ValueError(f"--upstream: no deployment of kind openai is named {name!r} (there are: {names})")
        base_url = chosen[0].base_url
    else:
        urls = sorted({d.base_url for d in openai_kind})
        if not urls:
            raise ValueError("--reconcile: the settings have no deployment of kind openai to reconcile with")
        if len(urls) > 1:
            names = ", ".join(d.name for d in openai_kind)
            raise ValueError(f"--upstream: the openai deployments ({names}) have several base URLs: name one")
        base_url = urls[0]
    return tuple(d.name for d in openai_kind if d.base_url == base_url), base_url


def reconcile(
    conn: Connection,
    settings: Any,
    billed: Billed,
    deployments: Sequence[str],
    base_url: str,
    span: tuple[int, int],
    model: str | None = None,
) -> Reconciliation:
    """The reconciliation of ``billed`` (fetched for ``span``, whole UTC days) with the audit."""
    mine = recorded(conn, deployments, span[0], span[1], model)
    rows = compare(billed, mine, PriceTable.for_settings(settings), model)
    return Reconciliation(tuple(deployments), base_url, span[0], span[1], rows, billed.costs_error)
