"""``ferryman audit``: verify, prune and export the audit log.

Exit codes: 0 the log is intact (or the command did its work), 1 the log has been tampered
with, 2 a usage or configuration error (no database, no key, a bad option).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from ferryman.audit.chain import Chain, Report
from ferryman.audit.chain import export as export_records
from ferryman.audit.keys import AuditKeyError, CheckpointKey, key_file, load_key
from ferryman.files import open_private

app = typer.Typer(help="Verify, prune and export the audit log.", no_args_is_help=True)

INTACT, TAMPERED, USAGE = 0, 1, 2
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: the settings' database, store.url or the data directory's)."),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Checkpoint key reference: env:NAME, file:/path or keyring:SERVICE/NAME "
        "(default: audit.checkpoint_key, else audit.key in the data directory).",
    ),
]


def parse_duration(value: str) -> float:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` → seconds."""
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{value!r} is not a duration like 90d, 12h, 2w, 30m or 45s")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 date or time (UTC unless it says otherwise) → unix seconds."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time (2026-11-25, 2026-11-25T08:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _fail(message: str, code: int = USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Any:
    from ferryman.config import load

    return load()  # a SettingsError is one line and exit 2, printed by the ferryman command


def _engine(db: str | None) -> Engine:
    from ferryman.store.database import make_engine

    url = db or _settings().database_url()
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and not path.startswith(":memory:") and not Path(path.split("?")[0]).exists():
            raise _fail(f"no database at {path}")
    try:
        engine = make_engine(url)
        names = set(inspect(engine).get_table_names())
    except Exception as exc:
        raise _fail(f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not {"audit", "audit_checkpoints"} <= names:
        engine.dispose()
        raise _fail("the database has no audit tables (has Ferryman ever run against it?)")
    return engine


def _key(reference: str | None, required: bool = True) -> CheckpointKey | None:
    if reference is None:
        reference = _settings().audit.checkpoint_key
        if reference is None and not required and not key_file().exists():
            return None
    try:
        return load_key(reference, create=False)
    except AuditKeyError as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _chain(db: str | None, key: str | None, key_required: bool = True) -> Iterator[tuple[Chain | None, Engine]]:
    checkpoint_key = _key(key, key_required)
    engine = _engine(db)
    try:
        yield (Chain(engine, checkpoint_key) if checkpoint_key is not None else None), engine
    finally:
        engine.dispose()


def verify_summary(report: Report) -> str:
    if report.ok:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.records else "no records"
        pruned = f"; pruned up to seq {report.prune.seq}" if report.prune else ""
        head = f"; head checkpoint at seq {report.head.seq}, signature good" if report.head else ""
        return f"intact: {report.records} records ({span}){head}{pruned}"
    first = report.problems[0]
    lines = [f"TAMPERED: {first}"]
    lines += [f"  {problem}" for problem in report.problems[1:]]
    lines.append(f"{len(report.problems)} problem(s) in {report.records} records")
    return "\n".join(lines)


@app.command()
def verify(
    db: DbOption = None,
    key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check the hash chain and its signed checkpoints: edited, removed, reordered or truncated
    records, malformed records (named by seq) and forged checkpoints. Exit 0 intact, 1 tampered
    or malformed, 2 usage or configuration error (or a database that cannot be read)."""
    with _chain(db, key) as (chain, _):
        assert chain is not None
        try:
            report = chain.verify()
        except SQLAlchemyError as exc:  # the tables cannot be read at all: no verdict on the chain
            cause = getattr(exc, "orig", None) or exc
            raise _fail(
                f"cannot read the audit log: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
            ) from None
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "ok": report.ok,
                    "records": report.records,
                    "first_seq": report.first_seq,
                    "last_seq": report.last_seq,
                    "problems": [{"seq": p.seq, "message": p.message} for p in report.problems],
                }
            ).decode()
        )
    else:
        typer.echo(verify_summary(report))
    raise typer.Exit(INTACT if report.ok else TAMPERED)


@app.command()
def prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Delete records older than this: 90d, 12h, 2w, 30m, 45s.")
    ],
    db: DbOption = None,
    key: KeyOption = None,
) -> None:
    """Delete old records in one transaction and sign a prune checkpoint the rest verifies from.
    A log that does not verify is left untouched (exit 1)."""
    import time

    seconds = parse_duration(older_than)
    with _chain(db, key) as (chain, _):
        assert chain is not None
        result = chain.prune(time.time() - seconds)
    if not result.report.ok:
        typer.echo("refusing to prune: the audit log does not verify", err=True)
        typer.echo(verify_summary(result.report))
        raise typer.Exit(TAMPERED)
    if result.deleted:
        typer.echo(f"pruned {result.deleted} records (up to seq {result.seq}); the rest verifies from there")
    else:
        typer.echo(f"nothing to prune: no record older than {older_than} at the start of the log")


@app.command()
def export(
    since: Annotated[str | None, typer.Option(help="Only records from this ISO 8601 time on (UTC by default).")] = None,
    until: Annotated[str | None, typer.Option(help="Only records before this ISO 8601 time.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of standard output.", dir_okay=False)
    ] = None,
    db: DbOption = None,
    key: KeyOption = None,
) -> None:
    """Write records as JSON lines (one record a line, cost as a string, hashes included). When a
    key is at hand the chain is verified too: exit 1, after writing, if it has been tampered with."""
    start, end = parse_time(since), parse_time(until)
    with _chain(db, key, key_required=key is not None) as (chain, engine):
        if output is None:
            count = export_records(engine, sys.stdout, start, end)
        else:
            with open_private(output, "w", encoding="utf-8") as handle:  # audit records: 0600
                count = export_records(engine, handle, start, end)
        report = chain.verify() if chain is not None else None
    typer.echo(f"exported {count} records" + (f" to {output}" if output else ""), err=True)
    if report is not None and not report.ok:
        typer.echo(f"warning: the audit log does not verify: {report.problems[0]}", err=True)
        raise typer.Exit(TAMPERED)
