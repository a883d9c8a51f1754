"""``ferryman keys …`` / ``ferryman teams …`` (``ferryman serve`` is :mod:`.serve_cli`).

The key commands work on the gateway's store directly (the same settings, so the same database
as the server); a running gateway sees a change within ``gateway.key_cache_s``. Exit codes:
0 done, 1 not found (or several found, or a name taken), 2 bad usage.

A key is named (``show``, ``tags``, ``rotate``, ``revoke``) by its full id, a unique prefix of
its id (six or more hex digits, with or without ``key_``: ``c3a9f1``) or its name; the rules are
:mod:`ferryman.gateway.key_lookup`'s, shared with the admin API. Tables show times in UTC to the
minute and money as people write it (``$50.00/month``, ``$0.0123``); ``--json`` prints ISO 8601
times and exact decimal strings instead (:mod:`ferryman.gateway.key_format`). Neither ever holds
a key's secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from ferryman.cli_tables import print_table
from ferryman.config import Settings, load

KEY_HELP = (
    "A key is named by its full id (key_…), a unique id prefix of 6+ hex digits with or without key_ "
    "(c3a9f1, key_c3a9f1), or its name."
)
keys_app = typer.Typer(
    help=f"Create, list, rotate and revoke the gateway's virtual keys.\n\n{KEY_HELP}", no_args_is_help=True
)
teams_app = typer.Typer(help="Limits and budgets shared by every key of a team.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

StoreOption = Annotated[
    str | None, typer.Option("--store", help="Database URL (default: settings, else SQLite in the data directory).")
]
RedisOption = Annotated[str | None, typer.Option("--redis", help="Redis URL, to share limits between instances.")]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print JSON: ISO 8601 UTC times, USD as exact decimal strings, no secrets (only the fm-… hint)."
    ),
]
KeyArgument = Annotated[
    str,
    typer.Argument(help="The key: its id (key_…), a unique id prefix of 6+ hex digits (key_ optional) or its name."),
]


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
    # A SettingsError goes up to the ferryman command, which prints its one line and exits 2.
    return load(store=overrides) if overrides else load()


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def _keystore(store_url: str | None) -> Any:
    from ferryman.gateway.keys import KeyStore
    from ferryman.store import open_store

    return KeyStore(open_store(_settings(store_url)))


def _bad(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _fail(message: str) -> typer.Exit:
    """Exit 1 (not found, several found, a name taken) with one line on stderr."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(1)


def _find(keys: Any, ref: str) -> Any:
    """The key ``ref`` names (:meth:`KeyStore.find`), or exit 1 saying why not."""
    from ferryman.gateway.key_lookup import MAX_CANDIDATES, KeyAmbiguous
    from ferryman.gateway.keys import KeyError_

    try:
        return _run(keys.find(ref))
    except KeyError_:
        raise _fail(f"no key {ref!r} (by id, id prefix or name); `ferryman keys list` shows them") from None
    except KeyAmbiguous as error:
        now = time.time()
        count = len(error.candidates)
        many = f"{count} or more" if count >= MAX_CANDIDATES else str(count)
        listed = "".join(f"\n  {k.id}  {k.name} ({k.state(now)})" for k in error.candidates)
        raise _fail(f"{ref!r} fits {many} keys; name one by its full id or more of it:{listed}") from None


def _print_table(table: Table) -> None:
    print_table(out, table)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


# -- keys -------------------------------------------------------------------------------------


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name for the key (team-a, ci, alice): unique among live keys.")],
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
    """Create a key and print it once (it is stored only as a hash). A name a live key has already
    is refused (exit 1): names are how keys are found."""
    from ferryman.gateway.key_lookup import NameTaken
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
    except NameTaken as error:
        raise _fail(f"{error}; use another --name or revoke it first") from None
    except ValueError as error:
        raise _bad(str(error)) from None
    err.print(f"created [bold]{record.id}[/bold] ({escape(record.name)}); the key is shown only this once:")
    typer.echo(secret)


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """List keys with their limits, state and spend (never the keys themselves)."""
    from ferryman.gateway import key_format as fmt

    keys = _keystore(store)
    records = _run(keys.all(include_revoked=all_keys))
    usage = _run(keys.usage())
    now = time.time()
    if as_json:
        _print_json([fmt.key_json(r, usage.get(r.id), now) for r in records])
        return
    table = Table(
        Column("id", no_wrap=True, min_width=max((len(r.id) for r in records), default=2)),
        *("name", "team", "key", "state", "budget", "rpm", "tpm", "models", "tags", "calls", "spent"),
        *("created", "expires"),
    )
    for r in records:
        u = usage.get(r.id) or {}
        cells = [
            r.id,
            r.name,
            r.team or "-",
            r.hint,
            r.state(now),
            fmt.budget(r.budget_usd, r.budget_period),
            fmt.limit(r.rpm),
            fmt.limit(r.tpm),
            ",".join(r.models) if r.models else "all",
            fmt.tags(r.tags),
            str(u.get("calls", 0)),
            fmt.money(u.get("cost_usd", 0)),
            fmt.when(r.created),
            fmt.when(r.expires),
        ]
        table.add_row(*(escape(c) for c in cells))
    _print_table(table)


@keys_app.command("show")
def show(key: KeyArgument, as_json: JsonOption = False, store: StoreOption = None) -> None:
    """One key's settings and usage."""
    from ferryman.gateway import key_format as fmt

    keys = _keystore(store)
    record = _find(keys, key)
    usage = _run(keys.usage()).get(record.id)
    if as_json:
        _print_json(fmt.key_json(record, usage, time.time()))
        return
    for label, value in fmt.key_lines(record, usage, time.time()):
        out.print(f"[bold]{label}[/bold]: {escape(value)}", soft_wrap=True)


@keys_app.command("tags")
def set_tags(
    key: KeyArgument,
    tags: Annotated[str, typer.Argument(help='All of its billing tags: "project=apollo,env=prod" ("" for none).')],
    store: StoreOption = None,
) -> None:
    """Set the tags a key bills to: tag: budget rules count these (and its team's), never a caller's header."""
    from ferryman.gateway import key_format as fmt
    from ferryman.gateway.key_rules import check_tags

    try:
        parsed = check_tags(tags, "tags")
    except ValueError as error:
        raise _bad(str(error)) from None
    keys = _keystore(store)
    record = _run(keys.set_limits(_find(keys, key).id, tags=parsed))
    err.print(f"[bold]{record.id}[/bold] ({escape(record.name)}) bills to: {escape(fmt.tags(record.tags))}")


@keys_app.command("rotate")
def rotate(key: KeyArgument, store: StoreOption = None) -> None:
    """Give a key a new secret (limits, budget, usage and objects stay); the old one stops working."""
    keys = _keystore(store)
    secret, record = _run(keys.rotate(_find(keys, key).id))
    err.print(f"rotated [bold]{record.id}[/bold]; the new key is shown only this once:")
    typer.echo(secret)


@keys_app.command("revoke")
def revoke(key: KeyArgument, store: StoreOption = None) -> None:
    """Revoke a key: every gateway instance refuses it within a second (its name is free again)."""
    keys = _keystore(store)
    record = _run(keys.revoke(_find(keys, key).id))
    err.print(f"revoked [bold]{record.id}[/bold] ({escape(record.name)})")


# -- teams ------------------------------------------------------------------------------------

TeamBudget = Annotated[str | None, typer.Option(help="USD per period for the whole team: 500/month.")]
TeamRpm = Annotated[int | None, typer.Option(help="Requests per minute for the whole team.", min=1)]
TeamTpm = Annotated[int | None, typer.Option(help="Tokens per minute for the whole team.", min=1)]
TeamTags = Annotated[
    str | None, typer.Option(help="Billing tags every key of the team carries: project=apollo,env=prod.")
]


def _write_team(
    name: str, budget: str | None, rpm: int | None, tpm: int | None, tags: str | None, store: str | None, new: bool
) -> None:
    from ferryman.gateway import key_format as fmt
    from ferryman.gateway.key_lookup import NameTaken
    from ferryman.gateway.key_rules import check_tags, parse_budget

    try:
        parsed = parse_budget(budget) if budget else None
        parsed_tags = check_tags(tags, "--tags")
        team = _run(_keystore(store).set_team(name, rpm=rpm, tpm=tpm, budget=parsed, tags=parsed_tags, new=new))
    except NameTaken as error:
        raise _fail(f"{error}; use another name, or `ferryman teams set` to change it") from None
    except ValueError as error:
        raise _bad(str(error)) from None
    err.print(
        f"team [bold]{escape(team.name)}[/bold]: budget {fmt.budget(team.budget_usd, team.budget_period)}, "
        f"rpm {fmt.limit(team.rpm)}, tpm {fmt.limit(team.tpm)}, tags {escape(fmt.tags(team.tags))}",
        soft_wrap=True,
    )


@teams_app.command("create")
def create_team(
    name: Annotated[str, typer.Argument(help="Team name (unique).")],
    budget: TeamBudget = None,
    rpm: TeamRpm = None,
    tpm: TeamTpm = None,
    tags: TeamTags = None,
    store: StoreOption = None,
) -> None:
    """Create a team; a name another team has is refused (exit 1). Keys join it with keys create --team."""
    _write_team(name, budget, rpm, tpm, tags, store, new=True)


@teams_app.command("set")
def set_team(
    name: Annotated[str, typer.Argument(help="Team name.")],
    budget: TeamBudget = None,
    rpm: TeamRpm = None,
    tpm: TeamTpm = None,
    tags: TeamTags = None,
    store: StoreOption = None,
) -> None:
    """Create or change a team's shared limits, budget and billing tags (all at once: what is left out is none)."""
    _write_team(name, budget, rpm, tpm, tags, store, new=False)


@teams_app.command("list")
def list_teams(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """List teams and their limits."""
    from ferryman.gateway import key_format as fmt

    found = _run(_keystore(store).teams())
    if as_json:
        _print_json([fmt.team_json(t) for t in found])
        return
    table = Table("team", "budget", "rpm", "tpm", "tags", "created")
    for t in found:
        cells = (t.name, fmt.budget(t.budget_usd, t.budget_period), fmt.limit(t.rpm), fmt.limit(t.tpm))
        table.add_row(*(escape(c) for c in (*cells, fmt.tags(t.tags), fmt.when(t.created))))
    _print_table(table)
