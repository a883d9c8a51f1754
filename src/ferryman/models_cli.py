"""``ferryman models``: what Ferryman knows of each model's retirement, and where it came from.

One table for everyone (:mod:`ferryman.catalogue`): the shipped dates (OpenAI's deprecations page
and the dated price table) under the dates the upstreams themselves report on ``GET /v1/models``,
which ``--refresh`` fetches and caches in the store (:mod:`ferryman.lifecycle_store`). The
pipeline's ``Deprecation``/``Sunset`` headers, ``ferryman lint`` and ``ferryman doctor`` read the
same table, so what this command prints is what they act on.

Exit codes: 0 listed; 1 ``--refresh`` could not reach an upstream (what it knew before is kept,
and listed); 2 bad usage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ferryman import catalogue
from ferryman.cli_tables import print_table

out = Console()
err = Console(stderr=True)

_SPAN = re.compile(r"^\s*(\d{1,5})\s*([dwmy]?)\s*$")
_DAYS = {"": 1, "d": 1, "w": 7, "m": 30, "y": 365}

EPILOG = """Examples:

  ferryman models --retiring 90d          what retires in the next 90 days (and what already has)
  ferryman models --refresh --json        ask the upstreams first, print JSON for a script
  ferryman models --today 2027-01-15      rehearse: the table as it will read on that day
"""


def parse_span(text: str) -> int:
    """``90d``, ``12w``, ``6m``, ``1y`` or a bare number of days → days."""
    match = _SPAN.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a span: write 90d, 12w, 6m or 1y")
    return int(match.group(1)) * _DAYS[match.group(2)]


def parse_today(text: str | None) -> dt.date:
    """``--today YYYY-MM-DD`` (``ferryman models``, ``ferryman doctor``), else today in UTC."""
    if text is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date: write YYYY-MM-DD", param_hint="--today") from None


def rows(today: dt.date, within_days: int | None, upstream: dict[str, catalogue.UpstreamDate]) -> list[dict[str, Any]]:
    """Every model with a lifecycle (with ``within_days``: those retiring within it, or retired)."""
    if within_days is not None:
        found = catalogue.retiring(today, within_days, upstream)
    else:
        names = sorted(set(catalogue.models()) | set(upstream))
        found = [life for name in names if (life := catalogue.lifecycle(name, upstream))]
    listed = []
    for life in found:
        entry = life.as_json(today)
        entry["reasoning"] = catalogue.is_reasoning(life.model)
        listed.append(entry)
    return listed


def _print(listed: list[dict[str, Any]]) -> None:
    table = Table("model", "shutdown", "days left", "successor", "reasoning", "source")
    for entry in listed:
        days = entry["days_left"]
        state = "" if days is None else ("[red]retired[/red]" if entry["retired"] else str(days))
        reasoning = {True: "yes", False: "no", None: "?"}[entry["reasoning"]]
        table.add_row(
            escape(entry["model"]),
            entry["shutdown_date"] or "-",
            state or "-",
            escape(entry["successor"] or "-"),
            reasoning,
            entry["source"],
        )
    print_table(out, table)


async def _gather(refresh: bool, store_url: str | None) -> tuple[dict[str, Any], list[Any]]:
    from ferryman import lifecycle_store
    from ferryman.config import load
    from ferryman.store import open_store

    settings = load(store={"url": store_url}) if store_url else load()
    store = open_store(settings)
    try:
        fetched = await lifecycle_store.refresh(settings, store) if refresh else []
        return await lifecycle_store.load(store), fetched
    finally:
        store.close()


def models(
    retiring: Annotated[
        str | None,
        typer.Option("--retiring", help="Only models retiring within this span (90d, 12w, 6m, 1y), or retired."),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ask every upstream's GET /v1/models for its dates first, and cache them.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {models: [...], refreshed: [...]}.")] = False,
    today: Annotated[
        str | None, typer.Option("--today", help="Read the table as on this day (YYYY-MM-DD); default: today, UTC.")
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Database URL (default: settings, else SQLite in the data directory).")
    ] = None,
) -> None:
    """List the models Ferryman knows, with shutdown dates, successors and where each date came from."""
    within = parse_span(retiring) if retiring is not None else None
    day = parse_today(today)
    upstream, fetched = asyncio.run(_gather(refresh, store))
    listed = rows(day, within, upstream)
    failed = [f for f in fetched if f.error and not f.error.startswith("skipped")]
    if as_json:
        refreshed = [{"upstream": f.upstream, "models": len(f.dates), "error": f.error} for f in fetched]
        out.print_json(json.dumps({"today": day.isoformat(), "models": listed, "refreshed": refreshed}))
    else:
        for f in fetched:
            if f.error:
                err.print(f"[yellow]{escape(f.upstream)}[/yellow]: {escape(f.error)}", soft_wrap=True)
            else:
                err.print(f"{escape(f.upstream)}: {len(f.dates)} models, dates cached", soft_wrap=True)
        _print(listed)
        if not listed:
            err.print("no model retires in that span" if within is not None else "no models known")
    if failed:
        raise typer.Exit(1)


models.__doc__ = f"{models.__doc__}\n\n{EPILOG}"
