"""``ferryman report``: usage and cost over the audit log, and what to change, in dollars.

Reads the store the settings name (as ``ferryman keys`` does; ``--store URL`` for another), never
writes to it beyond bringing its schema up to date. Exit codes: 0 printed (or written to ``-o``);
2 bad usage (a bad ``--since``, ``--from`` after ``--to``, an unknown ``--by`` or ``--format``),
with one line naming the option.

With ``--reconcile`` (the upstream's Usage and Costs API against the audit, see
:mod:`ferryman.report.reconcile`): 0 when every day and model matched, 1 when a difference was
found (the report is printed either way: a script can act on the code), 2 when it cannot be done
(no admin key, the key refused, the upstream unreachable), with one line naming the cause.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ferryman.report.billed import Billed

out = Console()
err = Console(stderr=True)

FORMATS = ("table", "json", "md", "html")
DEFAULT_DAYS = 30
_SINCE = re.compile(r"^\s*(\d{1,5})\s*([hdw])\s*$")
_UNIT = {"h": 3_600, "d": 86_400, "w": 7 * 86_400}

EPILOG = """Examples:

  ferryman report                           the last 30 days: totals, by model, month, spikes, advice
  ferryman report --since 7d --by day       spend per UTC day this week
  ferryman report --by key --by model       per key and model (key names from the gateway's keys)
  ferryman report --by tag:feature --tag team=search --format md -o report.md
  ferryman report --from 2026-11-01 --to 2026-11-30 --format json
  ferryman report --since 7d --reconcile     OpenAI's bill against the audit (exit 1 on a difference)
"""


class Usage(Exception):
    """Bad usage: the message names the option."""


def parse_since(text: str, now: float) -> float:
    match = _SINCE.match(text)
    if not match or int(match.group(1)) == 0:
        raise Usage(f"--since: {text!r} is not a span: write 24h, 7d, 30d or 4w")
    return now - int(match.group(1)) * _UNIT[match.group(2)]


def parse_moment(text: str, option: str, *, end: bool = False) -> float:
    """``YYYY-MM-DD`` (a whole UTC day: ``--to`` includes it) or an ISO 8601 time (UTC unless it says)."""
    try:
        if len(text.strip()) == 10:
            day = dt.date.fromisoformat(text.strip())
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return (moment + dt.timedelta(days=1 if end else 0)).timestamp()
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Usage(f"{option}: {text!r} is not a date: write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def period(since: str | None, start: str | None, to: str | None, now: float) -> tuple[float, float]:
    if since is not None and (start is not None or to is not None):
        raise Usage("--since: give either --since or --from/--to, not both")
    if since is not None:
        return parse_since(since, now), now
    end = parse_moment(to, "--to", end=True) if to is not None else now
    begin = parse_moment(start, "--from") if start is not None else end - DEFAULT_DAYS * 86_400
    if begin >= end:
        raise Usage(f"--from: {start!r} is not before --to {to!r}" if to else f"--from: {start!r} is in the future")
    return begin, end


def parse_by(values: list[str]) -> list[str]:
    from ferryman.report.query import dimension

    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    for name in names:
        try:
            dimension(name)
        except ValueError as error:
            raise Usage(f"--by: {error}") from None
    return names


def parse_tags(values: list[str]) -> tuple[tuple[str, str], ...]:
    found = []
    for value in values:
        name, eq, wanted = value.partition("=")
        if not eq or not name.strip():
            raise Usage(f"--tag: {value!r} is not NAME=VALUE")
        found.append((name.strip(), wanted.strip()))
    return tuple(found)


def report(
    since: Annotated[str | None, typer.Option("--since", help="The last 24h, 7d, 30d or 4w (default 30d).")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="First UTC day (YYYY-MM-DD) or moment (ISO 8601) of the period.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last UTC day of the period (included), or a moment.")] = None,
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="Break down by model, endpoint, key, team, tag:NAME, day or hour; repeatable."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only calls to this model.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only calls of this key (its id or its name).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only calls tagged NAME=VALUE; repeatable.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json, md or html.")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (mode 0600).")] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Database URL (default: settings, else SQLite in the data directory).")
    ] = None,
    reconcile: Annotated[
        bool, typer.Option("--reconcile", help="Compare with the upstream's Usage and Costs API, per day and model.")
    ] = False,
    admin_key: Annotated[
        str, typer.Option("--admin-key", help="With --reconcile: the organisation admin key, as a secret reference.")
    ] = "env:OPENAI_ADMIN_KEY",
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="With --reconcile: the openai deployment to reconcile with.")
    ] = None,
) -> None:
    """Usage and cost from the audit log: totals, breakdowns, spikes, and what to change, in dollars.

    Every figure is summed by the database from the audit records of the period (UTC; the last
    30 days unless --since or --from/--to say otherwise). JSON follows a versioned contract
    (money as exact decimal strings); see the README's "Reports" section.
    """
    now = time.time()
    try:
        begin, end = period(since, start, to, now)
        names = parse_by(by or [])
        tags = parse_tags(tag or [])
        if output_format not in FORMATS:
            raise Usage(f"--format: {output_format!r} is not one of {', '.join(FORMATS)}")
        if reconcile and (key is not None or tags):
            raise Usage("--reconcile: compares all of the upstream's traffic; --key and --tag do not apply to it")
    except Usage as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None

    from ferryman.config import load
    from ferryman.report import render
    from ferryman.report.build import build
    from ferryman.report.query import Filters
    from ferryman.store import open_store

    settings = load(store={"url": store}) if store else load()
    fetched = _fetch_billed(settings, begin, end, admin_key, upstream) if reconcile else None
    opened = open_store(settings)
    try:
        with opened.engine.connect() as conn:
            made = build(conn, Filters(begin, end, model, key, tags), names, now=now)
            if fetched is not None:
                from ferryman.report.reconcile import reconcile as reconciled

                made = dataclasses.replace(made, reconciliation=reconciled(conn, settings, *fetched, model))
    finally:
        opened.close()
    code = 1 if made.reconciliation is not None and not made.reconciliation.matched else 0
    if output_format == "json":
        text = render.to_json(made)
    elif output_format == "md":
        text = render.to_markdown(made)
    elif output_format == "html":
        from ferryman.report.render_html import to_html

        text = to_html(made)
    elif output is not None:
        buffer = io.StringIO()
        render.to_console(made, Console(file=buffer, width=120, no_color=True))
        text = buffer.getvalue()
    else:
        render.to_console(made, out)
        raise typer.Exit(code)
    if output is None:
        typer.echo(text, nl=False)
        raise typer.Exit(code)
    from ferryman.files import write_private

    write_private(output, text)
    err.print(f"wrote {escape(str(output))}", highlight=False)
    raise typer.Exit(code)


def _fetch_billed(
    settings: Any, begin: float, end: float, admin_key: str, upstream: str | None
) -> tuple[Billed, tuple[str, ...], str, tuple[int, int]]:
    """What the upstream billed over the period's whole UTC days, with the deployments, base URL and
    span to reconcile them against; one line and exit code 2 when that cannot be had."""
    from ferryman.report import billed, reconcile
    from ferryman.secrets import SecretError, resolve

    try:
        deployments, base_url = reconcile.choose_upstream(settings, upstream)
        try:
            secret = resolve(admin_key)
        except SecretError as error:
            raise Usage(f"--admin-key: {error} (the Usage and Costs API needs an organisation admin key)") from None
        span = reconcile.whole_days(begin, end)
        fetched = billed.fetch(base_url, secret, *span)
    except (Usage, ValueError, billed.UpstreamError) as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    return fetched, deployments, base_url, span


report.__doc__ = (report.__doc__ or "") + "\n\n" + EPILOG
