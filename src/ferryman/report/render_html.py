"""``ferryman report --format html``: the report as one self-contained page, readable at a glance.

Why it looks the way it does:

- **One file, no network.** The page is mailed, attached to tickets and opened from disk, often
  offline; it must not phone home or break without a CDN. So the CSS is inline, there are no
  fonts, images or scripts at all, and a Content-Security-Policy meta forbids every fetch
  (``default-src 'none'``) and allows only the one inline stylesheet, by its hash.
- **Charts are SVG written here**, in Python, so they need no JavaScript and print as they show.
  Bars are whole pixels (``crispEdges``) in one colour, so a test can count them in a screenshot.
  A day or a row with any spend gets a bar at least one pixel long: a tiny figure stays visible.
- **Every chart has its numbers as text**: an ``aria-label`` on the SVG, a ``<title>`` per bar
  and a table beside it, so a screen reader (or a copy-paste) gets the figures, not a picture.
- **Every value from a caller is escaped** (model names, key names, tag values, advice text):
  they are data, never markup.
- Money reads as in the other formats (:func:`ferryman.report.render.money`); each tile also
  carries the exact JSON value in ``data-value``, so a script (or a test) reads the same figure
  as ``--format json`` prints.

The daily series comes from :attr:`Report.daily` (spend per UTC day that has records, the one
:func:`ferryman.report.build.build` finds the spikes in); breakdown charts are drawn for every
``--by`` dimension but ``day`` and ``hour`` (the daily chart covers those) and ``model`` (always
drawn), with each value's spend summed over the breakdown's groups.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from html import escape
from typing import Any

from ferryman.report.model import Group, Report, Stats, iso, usd_text
from ferryman.report.render import STAT_HEADERS, heading, money, sections

BAR = "#2563eb"  # the dashboard's --bar
SPIKE = "#dc2626"
WIDTH = 880  # every chart's width in CSS pixels (it scales down on narrow windows)
LABEL_CHARS = 34  # longer names are cut in the chart (the table and the bar's title hold them whole)

STYLE = """
:root { --ink: #1d2330; --muted: #5c6578; --line: #e1e4ea; --card: #fff; --bg: #f5f6f8;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
* { box-sizing: border-box; }
body { margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 0 0 6px; }
.muted { color: var(--muted); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
  margin: 14px 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.tile .label { display: block; color: var(--muted); font-size: 12px; }
.tile .value { display: block; font-size: 18px; font-weight: 600; overflow-wrap: anywhere; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: var(--ink); }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid var(--line); vertical-align: top;
  overflow-wrap: anywhere; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; overflow-wrap: normal; }
.scroll { overflow-x: auto; }
details summary { cursor: pointer; color: var(--muted); margin-top: 6px; }
ol.advice { padding-left: 20px; margin: 0; }
li.advice-item { margin-bottom: 12px; }
dl.evidence { display: flex; flex-wrap: wrap; gap: 2px 16px; margin: 6px 0 0; font-size: 12px; }
dl.evidence div { display: flex; gap: 5px; min-width: 0; }
dl.evidence dt { color: var(--muted); }
dl.evidence dd { margin: 0; overflow-wrap: anywhere; }
.saves { font-weight: 600; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _tile(stat: str, label: str, shown: str, exact: Any) -> str:
    return (
        f'<div class="tile" data-stat="{_e(stat)}" data-value="{_e(exact)}">'
        f'<span class="label">{_e(label)}</span><span class="value">{_e(shown)}</span></div>'
    )


def totals_tiles(stats: Stats) -> str:
    """The period's totals as tiles; ``data-value`` is the JSON contract's value."""
    tiles = [
        _tile("requests", "Requests", f"{stats.requests:,}", stats.requests),
        _tile("cost_usd", "Cost", money(stats.cost_usd), usd_text(stats.cost_usd)),
        _tile("input_tokens", "Input tokens", f"{stats.input_tokens:,}", stats.input_tokens),
        _tile("cached_input_tokens", "Cached input", f"{stats.cached_input_tokens:,}", stats.cached_input_tokens),
        _tile("output_tokens", "Output tokens", f"{stats.output_tokens:,}", stats.output_tokens),
        _tile("reasoning_tokens", "Reasoning tokens", f"{stats.reasoning_tokens:,}", stats.reasoning_tokens),
        _tile("errors", "Errors (≥ 400)", f"{stats.errors:,}", stats.errors),
        _tile("rate_limited", "Rate limited (429)", f"{stats.rate_limited:,}", stats.rate_limited),
        _tile("latency_p50_ms", "Latency p50", _ms(stats.latency_p50_ms), stats.latency_p50_ms),
        _tile("latency_p95_ms", "Latency p95", _ms(stats.latency_p95_ms), stats.latency_p95_ms),
    ]
    return f'<div class="tiles" id="totals">{"".join(tiles)}</div>'


def _svg(chart_id: str, height: int, label: str, body: Iterable[str]) -> str:
    return (
        f'<svg id="{_e(chart_id)}" class="chart" role="img" aria-label="{_e(label)}" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" shape-rendering="crispEdges">{"".join(body)}</svg>'
    )


def _rect(x: int, y: int, w: int, h: int, title: str, extra: str = "") -> str:
    return (
        f'<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}" fill="{BAR}"{extra}>'
        f"<title>{_e(title)}</title></rect>"
    )


def _length(amount: Decimal, top: Decimal, span: int) -> int:
    """Whole pixels for ``amount`` of ``top`` over ``span``; at least 1 for any spend."""
    if amount <= 0 or top <= 0:
        return 0
    return max(1, round(float(amount / top) * span))


def period_days(report: Report) -> list[dt.date]:
    """Every UTC day the period touches (its end is exclusive)."""
    first = dt.datetime.fromtimestamp(report.start, dt.UTC).date()
    last = dt.datetime.fromtimestamp(max(report.start, report.end - 1e-6), dt.UTC).date()
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def daily_chart(report: Report) -> str:
    """A vertical bar per UTC day with spend, on an axis of every day of the period; spikes marked."""
    days = period_days(report)
    spend = dict(report.daily)
    spiked = {spike.day for spike in report.spikes}
    top = max(spend.values(), default=Decimal(0))
    height, left, right, above, below = 220, 76, 8, 14, 34
    plot_w, plot_h = WIDTH - left - right, height - above - below
    slot = plot_w / max(1, len(days))
    body = [f'<line x1="{left}" y1="{above + plot_h}" x2="{WIDTH - right}" y2="{above + plot_h}" stroke="#8a93a6"/>']
    for fraction in (Decimal(1), Decimal("0.5")) if top > 0 else ():
        y = above + plot_h - round(float(fraction) * plot_h)
        body.append(f'<line x1="{left}" y1="{y}" x2="{WIDTH - right}" y2="{y}" stroke="#e1e4ea"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{_e(money(top * fraction))}</text>')
    step = max(1, round(len(days) / 8))
    for index, day in enumerate(days):
        x = left + round(index * slot)
        amount = spend.get(day, Decimal(0))
        if index % step == 0 or (index == len(days) - 1 and index % step > step / 2):
            body.append(f'<text x="{x + round(slot / 2)}" y="{height - 14}" text-anchor="middle">{day:%m-%d}</text>')
        bar_h = _length(amount, top, plot_h)
        if not bar_h:
            continue
        bar_w = max(1, round(slot * 0.8))
        mark = f" (spike: above the threshold {money(_threshold(report, day))})" if day in spiked else ""
        body.append(
            _rect(x + max(0, round((slot - bar_w) / 2)), above + plot_h - bar_h, bar_w, bar_h,
                  f"{day.isoformat()}: {money(amount)}{mark}", f' data-day="{day.isoformat()}"')
        )  # fmt: skip
        if day in spiked:
            cx = x + round(slot / 2)
            body.append(
                f'<path class="spike" d="M{cx - 5} {above - 10}h10l-5 8z" fill="{SPIKE}"><title>spike</title></path>'
            )
    with_spend = [(day, amount) for day, amount in report.daily if amount > 0]
    label = f"Spend per UTC day, {len(days)} days from {days[0]} to {days[-1]}: {len(with_spend)} with spend"
    if with_spend:
        peak_day, peak = max(with_spend, key=lambda pair: pair[1])
        label += f", the highest {money(peak)} on {peak_day}"
    return _svg("chart-daily", height, label, body)


def _threshold(report: Report, day: dt.date) -> Decimal | None:
    return next((s.threshold_usd for s in report.spikes if s.day == day), None)


def bar_list(chart_id: str, what: str, rows: Sequence[tuple[str, Decimal]]) -> str:
    """Horizontal bars, one per row with spend, each labelled with its name and amount."""
    top = max((amount for _, amount in rows), default=Decimal(0))
    row_h, label_w, amount_w = 26, 250, 110
    span = WIDTH - label_w - amount_w - 8
    height = max(1, len(rows)) * row_h + 4
    body = []
    for index, (name, amount) in enumerate(rows):
        y = 2 + index * row_h
        body.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end"><title>{_e(name)}</title>'
                    f"{_e(_cut(name))}</text>")  # fmt: skip
        length = _length(amount, top, span)
        if length:
            body.append(_rect(label_w, y + 4, length, row_h - 8, f"{name}: {money(amount)}"))
        body.append(f'<text x="{label_w + length + 6}" y="{y + 17}">{_e(money(amount))}</text>')
    label = f"Spend by {what}: " + "; ".join(f"{name} {money(amount)}" for name, amount in rows)
    return _svg(chart_id, height, label if rows else f"Spend by {what}: no records", body)


def _key_label(group: Group) -> str:
    name, key = group.values.get("key_name"), group.values.get("key")
    return f"{name} ({key})" if name else str(key)


def breakdown_series(report: Report) -> dict[str, list[tuple[str, Decimal]]]:
    """Spend per value of each ``--by`` dimension worth a bar chart, costliest first."""
    charts: dict[str, list[tuple[str, Decimal]]] = {}
    for dim in report.by:
        if dim in ("day", "hour", "model") or report.breakdown is None:
            continue
        sums: dict[str, Decimal] = {}
        for group in report.breakdown:
            value = group.values[dim]
            label = _key_label(group) if dim == "key" else "-" if value is None else str(value)
            sums[label] = sums.get(label, Decimal(0)) + group.stats.cost_usd
        charts[dim] = sorted(sums.items(), key=lambda pair: (-pair[1], pair[0]))
    return charts


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    numeric = [h in STAT_HEADERS or h in ("spend", "median", "threshold") for h in headers]
    cls = [" class=num" if n else "" for n in numeric]
    head = "".join(f'<th scope="col"{c}>{_e(h)}</th>' for h, c in zip(headers, cls, strict=True))
    lines = ["<tr>" + "".join(f"<td{c}>{_e(v)}</td>" for v, c in zip(row, cls, strict=True)) + "</tr>" for row in rows]
    ident = f' id="{_e(table_id)}"' if table_id else ""
    body = "".join(lines)
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def informative(headers: Sequence[str], rows: Sequence[Sequence[str]], keep: int) -> tuple[list[str], list[list[str]]]:
    """The columns past the first ``keep`` that say something: one that is ``0`` or ``-`` in every row
    (no reasoning tokens, no streams) is left out, so the table fits the page."""
    shown = [i for i in range(len(headers)) if i < keep or any(row[i] not in ("0", "-") for row in rows)]
    return [headers[i] for i in shown], [[row[i] for i in shown] for row in rows]


def _as_table(summary: str, headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{_table(headers, rows, table_id)}</details>"


def _section(section_id: str, title: str, *parts: str) -> str:
    return f'<section id="{_e(section_id)}" aria-labelledby="{_e(section_id)}-h">' \
           f'<h2 id="{_e(section_id)}-h">{_e(title)}</h2>{"".join(parts)}</section>'  # fmt: skip


def month_part(report: Report) -> str:
    m = report.month
    if m is None:
        return ""
    tiles = (
        _tile("to_date_usd", f"Month to date ({m.month})", money(m.to_date_usd), usd_text(m.to_date_usd))
        + _tile("projected_usd", "Projected month end", money(m.projected_usd), usd_text(m.projected_usd))
        + _tile("elapsed_days", "Days elapsed", f"{m.elapsed_days:.2f} of {m.days_in_month}", m.elapsed_days)
    )
    return _section("month", "Month", f'<div class="tiles">{tiles}</div>', f'<p class="muted">{_e(m.RULE)}</p>')


def spikes_part(report: Report) -> str:
    if not report.spikes:
        return ""
    rows = [[s.day.isoformat(), money(s.cost_usd), money(s.median_usd), money(s.threshold_usd)] for s in report.spikes]
    times, mark = "\N{MULTIPLICATION SIGN}", "\N{BLACK DOWN-POINTING TRIANGLE}"
    rule = f"Days above median + 3 {times} MAD of the daily spend (marked {mark} above the day's bar)."
    return _section(
        "spikes", "Spikes", f'<p class="muted">{rule}</p>',
        _table(["day", "spend", "median", "threshold"], rows, "spikes-table"),
    )  # fmt: skip


def _evidence_value(name: str, value: Any) -> str:
    if name.endswith("_usd") and isinstance(value, str):
        return money(Decimal(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def advice_part(report: Report) -> str:
    """The advice in the report's order (largest saving first): title, savings, action, evidence."""
    if not report.advice:
        return _section("advice", "Advice", '<p class="muted">Nothing to change found in this period.</p>')
    items = []
    for rank, item in enumerate(report.advice, 1):
        facts = "".join(
            f"<div><dt>{_e(name.replace('_', ' '))}</dt><dd>{_e(_evidence_value(name, value))}</dd></div>"
            for name, value in item.evidence.items()
            if value is not None
        )
        items.append(
            f'<li class="advice-item" data-kind="{_e(item.kind)}" data-rank="{rank}" '
            f'data-savings="{_e(usd_text(item.savings_usd))}"><h3>{_e(item.title)}</h3>'
            f'<p><span class="saves">Saves {_e(money(item.savings_usd))} over the period, '
            f"{_e(money(item.savings_usd_per_month))} per month</span> <span class=muted>({_e(item.kind)})</span></p>"
            f'<p class="action">{_e(item.action)}</p><dl class="evidence">{facts}</dl></li>'
        )
    return _section("advice", "Advice, largest saving first", f'<ol class="advice">{"".join(items)}</ol>')


def _filters_text(report: Report) -> str:
    f = report.filters
    said = [f"model {f['model']}" if f.get("model") else "", f"key {f['key']}" if f.get("key") else ""]
    said += [f"tag {name}={value}" for name, value in (f.get("tags") or {}).items()]
    return ", ".join(s for s in said if s)


def to_html(report: Report) -> str:
    """The whole page: header and totals, spend per day, by model and by each ``--by``, month, spikes, advice."""
    days = period_days(report)
    filters = _filters_text(report)
    by_model = [(str(g.values["model"]), g.stats.cost_usd) for g in report.by_model]
    parts = [
        f"<header><h1>{_e(heading(report))}</h1><p class=muted>{len(days)} UTC days, "
        f"{_e(iso(report.start))} (included) to {_e(iso(report.end))} (excluded)"
        f"{_e('; only ' + filters) if filters else ''}.</p></header>",
        _section("totals-section", "Totals", totals_tiles(report.totals)),
        _section(
            "daily", "Spend per day (UTC)", daily_chart(report),
            _as_table("Spend per day as a table", ["day", "spend"],
                      [[day.isoformat(), money(amount)] for day, amount in report.daily], "daily-table"),
        ),
        _section(
            "models", "Spend by model", bar_list("chart-by-model", "model", by_model),
            _as_table("By model as a table", ["model", "requests", "cost", "errors", "p50 ms", "p95 ms"],
                      [[str(g.values["model"]), f"{g.stats.requests:,}", money(g.stats.cost_usd), f"{g.stats.errors:,}",
                        _ms(g.stats.latency_p50_ms), _ms(g.stats.latency_p95_ms)] for g in report.by_model],
                      "by-model-table"),
        ),
    ]  # fmt: skip
    for dim, spend in breakdown_series(report).items():
        slug = "".join(c if c.isalnum() else "-" for c in dim)
        parts.append(_section(f"by-{slug}", f"Spend by {dim}", bar_list(f"chart-by-{slug}", dim, spend)))
    if report.breakdown is not None:
        title, headers, rows = sections(report)[2]  # after the totals and by model: the --by breakdown
        headers, rows = informative(headers, rows, len(report.by))
        parts.append(_section("breakdown", title, _table(headers, rows, "breakdown-table")))
    parts += [month_part(report), spikes_part(report), advice_part(report)]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(heading(report))}</title><style>{STYLE}</style></head>\n"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )
