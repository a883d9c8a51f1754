"""``ferryman keys …`` / ``ferryman teams …`` (``ferryman serve`` is :mod:`.serve_cli`).

The key commands work on the gateway's store directly (the same settings, so the same database
as the server); a running gateway sees a change within ``gateway.key_cache_s``. Exit codes:
0 done, 1 not found, 2 bad usage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ferryman.config import Settings, load

keys_app = typer.Typer(help="Create, list, rotate and revoke the gateway's virtual keys.", no_args_is_help=True)
teams_app = typer.Typer(help="Limits and budgets shared by every key of a team.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

StoreOption = Annotated[
    str | None, typer.Option("--store", help="Database URL (default: settings, else SQLite in the data directory).")
]
RedisOption = Annotated[str | None, typer.Option("--redis", help="Redis URL, to share limits between instances.")]


def _settings(store: str | None = None, redis: str | None = None, shared: bool = False) -> Settings:
    """Settings with the command line's store on top (validated together: sharing needs
    PostgreSQL, Redis and one audit checkpoint key)."""
    overrides: dict[str, Any] = {}
    if store:
        overrides["url"] = store
    if redis:
        overrides["redis_url"] = redis
    if shared:
        overrides["shared"] = True
    try:
        return load(store=overrides) if overrides else load()
    except Exception as error:
        err.print(f"[red]error:[/red] settings: {error}")
        raise typer.Exit(2) from None


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def _keystore(store_url: str | None) -> Any:
    from ferryman.gateway.keys import KeyStore
    from ferryman.store import open_store

    return KeyStore(open_store(_settings(store_url)))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z" if ts else "-"


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"


def _bad(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


# -- keys -------------------------------------------------------------------------------------


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name for the key (team-a, ci, alice).")],
    team: Annotated[str | None, typer.Option(help="The team it belongs to (team limits and budget apply too).")] = None,
    budget: Annotated[str | None, typer.Option(help="USD per period: 50/month, 5/day.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (prompt + max output).", min=1)] = None,
    models: Annotated[str | None, typer.Option(help="Allowed models, comma-separated (globs allowed).")] = None,
    tags: Annotated[
        str | None,
        typer.Option(help="Billing tags, counted by tag: budget rules: project=apollo,env=prod."),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime: 30d, 12h, 2w.")] = None,
    store: StoreOption = None,
) -> None:
    """Create a key and print it once (it is stored only as a hash)."""
    from ferryman.gateway.key_rules import check_tags, parse_budget, parse_duration

    try:
        parsed_budget = parse_budget(budget) if budget else None
        expires_in = parse_duration(expires) if expires else None
        parsed_tags = check_tags(tags, "--tags")
    except ValueError as error:
        raise _bad(str(error)) from None
    keys = _keystore(store)
    try:
        secret, record = _run(
            keys.create(
                name,
                team=team,
                rpm=rpm,
                tpm=tpm,
                budget=parsed_budget,
                models=models.split(",") if models else None,
                tags=parsed_tags,
                expires_in_s=expires_in,
            )
        )
    except ValueError as error:
        raise _bad(str(error)) from None
    err.print(f"created [bold]{record.id}[/bold] ({record.name}); the key is shown only this once:")
    typer.echo(secret)


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    store: StoreOption = None,
) -> None:
    """List keys with their limits, state and spend (never the keys themselves)."""
    keys = _keystore(store)
    records = _run(keys.all(include_revoked=all_keys))
    usage = _run(keys.usage())
    table = Table(
        "id", "name", "team", "key", "state", "budget", "rpm", "tpm", "models", "tags", "calls", "spent $", "expires"
    )
    now = time.time()
    for r in records:
        u = usage.get(r.id) or {}
        table.add_row(
            r.id,
            r.name,
            r.team or "-",
            r.hint,
            r.state(now),
            f"{r.budget_usd}/{r.budget_period}" if r.budget_usd is not None else "-",
            str(r.rpm or "-"),
            str(r.tpm or "-"),
            ",".join(r.models) if r.models else "all",
            _tags(r.tags),
            str(u.get("calls", 0)),
            str(u.get("cost_usd", "0")),
            _when(r.expires),
        )
    out.print(table)


@keys_app.command("show")
def show(
    key: Annotated[str, typer.Argument(help="Key id (key_…) or name.")],
    store: StoreOption = None,
) -> None:
    """One key's settings and usage."""
    from ferryman.gateway.keys import KeyError_

    keys = _keystore(store)
    try:
        record = _run(keys.find(key))
    except KeyError_:
        err.print(f"[red]error:[/red] no key {key!r}")
        raise typer.Exit(1) from None
    usage = _run(keys.usage()).get(record.id) or {}
    for field, value in {**record.public(), **{f"usage.{k}": v for k, v in usage.items()}}.items():
        out.print(f"[bold]{field}[/bold]: {value}")


@keys_app.command("tags")
def set_tags(
    key: Annotated[str, typer.Argument(help="Key id (key_…) or name.")],
    tags: Annotated[str, typer.Argument(help='All of its billing tags: "project=apollo,env=prod" ("" for none).')],
    store: StoreOption = None,
) -> None:
    """Set the tags a key bills to: tag: budget rules count these (and its team's), never a caller's header."""
    from ferryman.gateway.key_rules import check_tags
    from ferryman.gateway.keys import KeyError_

    try:
        parsed = check_tags(tags, "tags")
    except ValueError as error:
        raise _bad(str(error)) from None
    keys = _keystore(store)
    try:
        record = _run(keys.find(key))
        record = _run(keys.set_limits(record.id, tags=parsed))
    except KeyError_:
        err.print(f"[red]error:[/red] no key {key!r}")
        raise typer.Exit(1) from None
    err.print(f"[bold]{record.id}[/bold] ({record.name}) bills to: {_tags(record.tags)}")


@keys_app.command("rotate")
def rotate(key: Annotated[str, typer.Argument(help="Key id (key_…) or name.")], store: StoreOption = None) -> None:
    """Give a key a new secret (limits, budget, usage and objects stay); the old one stops working."""
    from ferryman.gateway.keys import KeyError_

    keys = _keystore(store)
    try:
        record = _run(keys.find(key))
        secret, record = _run(keys.rotate(record.id))
    except KeyError_:
        err.print(f"[red]error:[/red] no key {key!r}")
        raise typer.Exit(1) from None
    err.print(f"rotated [bold]{record.id}[/bold]; the new key is shown only this once:")
    typer.echo(secret)


@keys_app.command("revoke")
def revoke(key: Annotated[str, typer.Argument(help="Key id (key_…) or name.")], store: StoreOption = None) -> None:
    """Revoke a key: every gateway instance refuses it within a second."""
    from ferryman.gateway.keys import KeyError_

    keys = _keystore(store)
    try:
        record = _run(keys.find(key))
        record = _run(keys.revoke(record.id))
    except KeyError_:
        err.print(f"[red]error:[/red] no key {key!r}")
        raise typer.Exit(1) from None
    err.print(f"revoked [bold]{record.id}[/bold] ({record.name})")


# -- teams ------------------------------------------------------------------------------------


@teams_app.command("set")
def set_team(
    name: Annotated[str, typer.Argument(help="Team name.")],
    budget: Annotated[str | None, typer.Option(help="USD per period for the whole team: 500/month.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute for the whole team.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute for the whole team.", min=1)] = None,
    tags: Annotated[
        str | None,
        typer.Option(help="Billing tags every key of the team carries: project=apollo,env=prod."),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Create or change a team's shared limits, budget and billing tags (all at once: what is left out is none)."""
    from ferryman.gateway.key_rules import check_tags, parse_budget

    try:
        parsed = parse_budget(budget) if budget else None
        parsed_tags = check_tags(tags, "--tags")
        team = _run(_keystore(store).set_team(name, rpm=rpm, tpm=tpm, budget=parsed, tags=parsed_tags))
    except ValueError as error:
        raise _bad(str(error)) from None
    err.print(
        f"team [bold]{team.name}[/bold]: budget {team.budget_usd or '-'}, rpm {team.rpm or '-'}, "
        f"tpm {team.tpm or '-'}, tags {_tags(team.tags)}"
    )


@teams_app.command("list")
def list_teams(store: StoreOption = None) -> None:
    """List teams and their limits."""
    table = Table("team", "budget", "rpm", "tpm", "tags")
    for t in _run(_keystore(store).teams()):
        budget = f"{t.budget_usd}/{t.budget_period}" if t.budget_usd is not None else "-"
        table.add_row(t.name, budget, str(t.rpm or "-"), str(t.tpm or "-"), _tags(t.tags))
    out.print(table)
