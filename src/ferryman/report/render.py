"""The report for people (a rich table, Markdown) and for programs (JSON, :mod:`.model`'s contract).

Money reads as people write it: ``$1,234.50`` from a dollar up, four significant digits below
(``$0.0123``), as ``ferryman keys`` shows it (the same rule as ``gateway.key_format.money``, kept
here so the report does not import the gateway). JSON keeps exact decimal strings instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ferryman.cli_tables import print_table
from ferryman.report.model import Group, Report, Stats, iso

if TYPE_CHECKING:
    from ferryman.report.reconcile import Reconciliation

CENT = Decimal("0.01")
SIGNIFICANT = 4
STAT_HEADERS = ("requests", "cost", "input", "cached", "output", "reasoning", "errors", "429s", "hits",
                "p50 ms", "p95 ms", "ttft p50", "ttft p95")  # fmt: skip


def money(value: Decimal | None) -> str:
    """``$1,234.50`` from a dollar up, four significant digits below (``$0.0123``, ``$0.50``)."""
    if value is None:
        return "-"
    sign, amount = ("-" if value < 0 else ""), abs(value)
    if amount == 0:
        return "$0.00"
    if amount >= 1:
        return f"{sign}${amount.quantize(CENT, ROUND_HALF_UP):,.2f}"
    places = max(2, SIGNIFICANT - 1 - amount.adjusted())
    whole, _, cents = format(amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP), "f").partition(".")
    return f"{sign}${whole}.{cents.rstrip('0').ljust(2, '0')}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def stat_cells(stats: Stats) -> list[str]:
    return [
        f"{stats.requests:,}",
        money(stats.cost_usd),
        f"{stats.input_tokens:,}",
        f"{stats.cached_input_tokens:,}",
        f"{stats.output_tokens:,}",
        f"{stats.reasoning_tokens:,}",
        f"{stats.errors:,}",
        f"{stats.rate_limited:,}",
        f"{stats.cache_hits:,}",
        _ms(stats.latency_p50_ms),
        _ms(stats.latency_p95_ms),
        _ms(stats.ttft_p50_ms),
        _ms(stats.ttft_p95_ms),
    ]


def _label(value: Any) -> str:
    return "-" if value is None else str(value)


def _group_labels(group: Group) -> list[str]:
    values = dict(group.values)
    if "key" in values:  # the key's name where the store knows it, its id otherwise
        name = values.pop("key_name")
        values["key"] = f"{name} ({values['key']})" if name else values["key"]
    return [_label(v) for v in values.values()]


def _group_headers(by: Iterable[str]) -> list[str]:
    return list(by)


def sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as titled tables of text: what both the rich and the Markdown forms print."""
    out: list[tuple[str, list[str], list[list[str]]]] = [
        ("Totals", list(STAT_HEADERS), [stat_cells(report.totals)]),
        (
            "By model",
            ["model", *STAT_HEADERS],
            [[_label(g.values["model"]), *stat_cells(g.stats)] for g in report.by_model],
        ),
    ]
    if report.breakdown is not None:
        headers = _group_headers(report.by)
        rows = [[*_group_labels(g), *stat_cells(g.stats)] for g in report.breakdown]
        out.append((f"By {', '.join(report.by)}", [*headers, *STAT_HEADERS], rows))
    if report.month is not None:
        m = report.month
        out.append(("Month", ["month", "to date", "projected", "rule"],
                    [[m.month, money(m.to_date_usd), money(m.projected_usd), m.RULE]]))  # fmt: skip
    if report.spikes:
        out.append(("Spikes (above median + 3 x MAD of daily spend)", ["day", "spend", "median", "threshold"],
                    [[s.day.isoformat(), money(s.cost_usd), money(s.median_usd), money(s.threshold_usd)]
                     for s in report.spikes]))  # fmt: skip
    if report.advice:
        out.append(("Advice", ["kind", "saves", "per month", "what", "do"],
                    [[a.kind, money(a.savings_usd), money(a.savings_usd_per_month), a.title, a.action]
                     for a in report.advice]))  # fmt: skip
    if report.reconciliation is not None:
        out += reconciliation_sections(report.reconciliation)
    return out


def _pair(billed: int, recorded: int, compared: bool = True) -> str:
    return f"{billed:,} / {recorded:,}" if compared else f"{billed:,} / -"


def reconciliation_sections(rec: Reconciliation) -> list[tuple[str, list[str], list[list[str]]]]:
    """The upstream's bill against the audit (``--reconcile``): a summary, then one row per day and model."""
    where = f"{', '.join(rec.deployments)} at {rec.base_url}, UTC days {iso(rec.start)} to {iso(rec.end)}"
    verdict = "matched" if rec.matched else "differences found"
    figures = ("requests", "input", "cached", "output", "cost")
    summary = [
        [name, f"{f.requests:,}", f"{f.input_tokens:,}", f"{f.cached_input_tokens:,}", f"{f.output_tokens:,}",
         money(f.cost_usd)]
        for name, f in rec.totals().items()
    ]  # fmt: skip
    rows = [
        [r.day.isoformat(), r.model, r.kind, _pair(r.billed.requests, r.recorded.requests),
         _pair(r.billed.input_tokens, r.recorded.input_tokens, r.tokens_compared),
         _pair(r.billed.cached_input_tokens, r.recorded.cached_input_tokens, r.tokens_compared),
         _pair(r.billed.output_tokens, r.recorded.output_tokens, r.tokens_compared),
         f"{money(r.billed.cost_usd)} / {money(r.recorded.cost_usd)}", money(r.difference.cost_usd),
         r.cost_source, r.status]
        for r in rec.rows
    ]  # fmt: skip
    out = [
        (f"Reconciliation with {where}: {verdict}", ["", *figures], summary),
        ("Billed / recorded, per UTC day and model",
         ["day", "model", "kind", *figures[:4], "cost", "cost diff", "dollars from", "status"], rows),
    ]  # fmt: skip
    if rec.costs_error:
        out.append(("Costs API", ["note"], [[f"dollars priced from tokens: {rec.costs_error}"]]))
    return out


def heading(report: Report) -> str:
    return f"Ferryman report {iso(report.start)} to {iso(report.end)}"


def to_console(report: Report, console: Console) -> None:
    console.print(escape(heading(report)), style="bold", highlight=False)
    for title, headers, rows in sections(report):
        table = Table(*headers, title=title, title_justify="left")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))  # a tag value is text, never markup
        print_table(console, table)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    lines = [f"# {heading(report)}", ""]
    for title, headers, rows in sections(report):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n"
