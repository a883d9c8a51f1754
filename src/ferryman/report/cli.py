"""``ferryman report``: usage and cost over the audit log, and what to change, in dollars.

Reads the store the settings name (as ``ferryman keys`` does; ``--store URL`` for another), never
writes to it beyond bringing its schema up to date. Exit codes: 0 printed (or written to ``-o``);
2 bad usage (a bad ``--since``, ``--from`` after ``--to``, an unknown ``--by`` or ``--format``),
with one line naming the option.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)

FORMATS = ("table", "json", "md")
DEFAULT_DAYS = 30
_SINCE = re.compile(r"^\s*(\d{1,5})\s*([hdw])\s*$")
_UNIT = {"h": 3_600, "d": 86_400, "w": 7 * 86_400}

EPILOG = """Examples:

  ferryman report                           the last 30 days: totals, by model, month, spikes, advice
  ferryman report --since 7d --by day       spend per UTC day this week
  ferryman report --by key --by model       per key and model (key names from the gateway's keys)
  ferryman report --by tag:feature --tag team=search --format md -o report.md
  ferryman report --from 2026-11-01 --to 2026-11-30 --format json
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
    output_format: Annotated[str, typer.Option("--format", help="table, json or md.")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (mode 0600).")] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Database URL (default: settings, else SQLite in the data directory).")
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
    except Usage as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None

    from ferryman.config import load
    from ferryman.report import render
    from ferryman.report.build import build
    from ferryman.report.query import Filters
    from ferryman.store import open_store

    settings = load(store={"url": store}) if store else load()
    opened = open_store(settings)
    try:
        with opened.engine.connect() as conn:
            made = build(conn, Filters(begin, end, model, key, tags), names, now=now)
    finally:
        opened.close()
    if output_format == "json":
        text = render.to_json(made)
    elif output_format == "md":
        text = render.to_markdown(made)
    elif output is not None:
        buffer = io.StringIO()
        render.to_console(made, Console(file=buffer, width=120, no_color=True))
        text = buffer.getvalue()
    else:
        render.to_console(made, out)
        return
    if output is None:
        typer.echo(text, nl=False)
        return
    from ferryman.files import write_private

    write_private(output, text)
    err.print(f"wrote {escape(str(output))}", highlight=False)


report.__doc__ = (report.__doc__ or "") + "\n\n" + EPILOG
