"""The report as data, and its JSON contract (version 1).

``ferryman report --format json`` prints :meth:`Report.as_json`; the gateway and scripts read the
same object, so its shape only grows (new keys) within a version, and a change of meaning bumps
``version``. Money is a decimal string of USD (``"0.0123450000"``), never a float, so a script
adds figures exactly as the audit log holds them; times are ISO 8601 UTC; latencies are
milliseconds (``null`` where no record had one).

    {
      "version": 1,
      "period": {"from": "2026-11-04T00:00:00Z", "to": "2026-12-04T00:00:00Z"},
      "filters": {"model": null, "key": null, "tags": {}},
      "totals": {STATS},
      "by_model": [{"model": "gpt-4o-mini", STATS...}, ...],          # costliest first
      "breakdown": {"by": ["day"], "groups": [{"day": "2026-12-01", STATS...}, ...]},
      "month": {"month": "2026-12", "to_date_usd": "…", "projected_usd": "…", "elapsed_days": 3.5,
                "days_in_month": 31, "rule": "…"},
      "spikes": [{"day": "…", "cost_usd": "…", "median_usd": "…", "mad_usd": "…", "threshold_usd": "…"}],
      "advice": [{"kind": "deprecated_model", "title": "…", "savings_usd": "…" | null,
                  "savings_usd_per_month": "…" | null, "evidence": {...}, "action": "…"}]
    }

With ``--reconcile`` the object has one more member, ``reconciliation`` (absent otherwise; see
:mod:`ferryman.report.reconcile` for the rules), the upstream's bill against the audit per UTC day
and model, where ``FIG`` is ``{"requests", "input_tokens", "cached_input_tokens", "output_tokens",
"cost_usd"}`` (``cost_usd`` ``null`` where a side's dollars are not known)::

      "reconciliation": {
        "upstream": {"deployments": ["openai"], "base_url": "https://api.openai.com/v1"},
        "period": {"from": "2026-11-04T00:00:00Z", "to": "2026-12-05T00:00:00Z"},   # whole UTC days
        "matched": false, "cost_tolerance_usd": "0.0050000000", "costs_error": null,
        "totals": {"billed": FIG, "recorded": FIG, "difference": FIG, "unaccounted": FIG},
        "rows": [{"day": "2026-12-04", "model": "gpt-4o-mini", "kind": "completions",
                  "status": "matched" | "unaccounted" | "over_recorded" | "differs",
                  "cost_source": "costs" | "priced" | "unpriced" | "free", "tokens_compared": true,
                  "billed": FIG, "recorded": FIG, "difference": FIG, "unaccounted": FIG}]
      }

``STATS`` is ``requests``, ``cost_usd``, ``input_tokens``, ``cached_input_tokens`` (part of the
input), ``output_tokens``, ``reasoning_tokens`` (part of the output), ``errors`` (status ≥ 400),
``rate_limited`` (429), ``cache_hits``, ``latency_ms`` ``{p50, p95}`` and ``ttft_ms`` ``{p50, p95}``
(nearest-rank, see :mod:`ferryman.report.query`). ``breakdown`` is ``null`` without ``--by``; a
group's ``key`` comes with ``key_name`` (the virtual key's name, ``null`` for SDK principals).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferryman.report.reconcile import Reconciliation

VERSION = 1
USD_STEP = Decimal("1E-10")


def usd_text(value: Decimal | None) -> str | None:
    """A USD amount as the JSON contract writes it: a decimal string at the audit's 10 places."""
    return None if value is None else format(value.quantize(USD_STEP), "f")


def iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Stats:
    """What a set of audit records adds up to."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    errors: int = 0
    rate_limited: int = 0
    cache_hits: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cost_usd": usd_text(self.cost_usd),
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "errors": self.errors,
            "rate_limited": self.rate_limited,
            "cache_hits": self.cache_hits,
            "latency_ms": {"p50": self.latency_p50_ms, "p95": self.latency_p95_ms},
            "ttft_ms": {"p50": self.ttft_p50_ms, "p95": self.ttft_p95_ms},
        }


@dataclass(frozen=True)
class Group:
    """One row of a breakdown: the grouped values (``{"model": "gpt-4o"}``) and their stats."""

    values: dict[str, Any]
    stats: Stats

    def as_json(self) -> dict[str, Any]:
        return {**self.values, **self.stats.as_json()}


@dataclass(frozen=True)
class Month:
    """Month-to-date spend and its straight-line projection to the month's end:
    ``projected = to_date / elapsed_days x days_in_month`` (elapsed days counted to the second)."""

    month: str  # 2026-12
    to_date_usd: Decimal
    projected_usd: Decimal | None  # None at the month's very first instant
    elapsed_days: float
    days_in_month: int

    RULE = "month-to-date spend / elapsed days (to the second) x days in the month"

    def as_json(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "to_date_usd": usd_text(self.to_date_usd),
            "projected_usd": usd_text(self.projected_usd),
            "elapsed_days": self.elapsed_days,
            "days_in_month": self.days_in_month,
            "rule": self.RULE,
        }


@dataclass(frozen=True)
class Spike:
    """A day whose spend is far above the rest: above ``median + 3 x MAD`` of the daily spend
    (MAD: the median of the absolute deviations from the median), looked for only with at least
    7 days of records."""

    day: dt.date
    cost_usd: Decimal
    median_usd: Decimal
    mad_usd: Decimal

    @property
    def threshold_usd(self) -> Decimal:
        return self.median_usd + 3 * self.mad_usd

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "cost_usd": usd_text(self.cost_usd),
            "median_usd": usd_text(self.median_usd),
            "mad_usd": usd_text(self.mad_usd),
            "threshold_usd": usd_text(self.threshold_usd),
        }


@dataclass(frozen=True)
class Advice:
    """One thing to change, with its dollar effect over the period and per 30-day month
    (``savings_usd x 30 / period days``); negative when the change costs more."""

    kind: str
    title: str
    savings_usd: Decimal | None
    savings_usd_per_month: Decimal | None
    evidence: dict[str, Any]
    action: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "savings_usd": usd_text(self.savings_usd),
            "savings_usd_per_month": usd_text(self.savings_usd_per_month),
            "evidence": self.evidence,
            "action": self.action,
        }


@dataclass(frozen=True)
class Report:
    start: float
    end: float
    totals: Stats
    by_model: list[Group]
    by: tuple[str, ...] = ()
    breakdown: list[Group] | None = None
    month: Month | None = None
    spikes: list[Spike] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)
    # spend per UTC day with records, in order: what the spikes are found in and the HTML charts;
    # not part of the JSON (``--by day`` gives it there, with every figure per day)
    daily: list[tuple[dt.date, Decimal]] = field(default_factory=list)
    reconciliation: Reconciliation | None = None  # with --reconcile only: the upstream's bill against the audit

    @property
    def days(self) -> float:
        return (self.end - self.start) / 86_400

    def as_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "period": {"from": iso(self.start), "to": iso(self.end)},
            "filters": self.filters,
            "totals": self.totals.as_json(),
            "by_model": [group.as_json() for group in self.by_model],
            "breakdown": None
            if self.breakdown is None
            else {"by": list(self.by), "groups": [group.as_json() for group in self.breakdown]},
            "month": self.month.as_json() if self.month else None,
            "spikes": [spike.as_json() for spike in self.spikes],
            "advice": [item.as_json() for item in self.advice],
            **({"reconciliation": self.reconciliation.as_json()} if self.reconciliation is not None else {}),
        }
