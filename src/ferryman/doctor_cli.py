"""``ferryman doctor``: check a live setup and say, for each check, ok / warn / fail, what was
found and what to do.

The checks are :mod:`ferryman.doctor`'s; this module reads the settings, runs them and prints a
table (or JSON for scripts). Exit codes are what a CI job or a cron line needs to act on: 0 when
nothing failed (warnings do not fail a run, unless ``--strict``), 1 when a check failed, 2 for
bad usage or settings that do not load (printed as one line by the ``ferryman`` command).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ferryman.doctor import DEFAULT_TIMEOUT_S, FAIL, OK, SKIP, WARN, Check, exit_code, run
from ferryman.models_cli import parse_today

out = Console()
err = Console(stderr=True)

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}

EPILOG = """What it checks, with the settings of ferryman.toml and FERRYMAN_* variables:

  upstream:NAME     each deployment answers GET /models with each of its keys (refused, timeout, 401...)
  model:NAME:MODEL  each model the settings name (models entries, aliases) is listed and not retiring
  rate-limits       with --probe: one tiny call per model, and the x-ratelimit-* limits it reports
  openai-sdk        the installed openai against the range Ferryman allows and the release it was tested with
  prices            the price table's age (and pricing_file's)
  store, redis      the database reachable and at the schema head; Redis answering, when configured
  audit             the audit chain verifies (as ferryman audit verify)
  permissions       the data directory 0700, its files (database, admin.key, audit.key) 0600
  sharing           gateway.workers > 1 or store.shared with the shared state they need

Doctor only looks: it creates, migrates and chmods nothing. Exit codes: 0 nothing failed
(warnings allowed; --strict fails them too), 1 a check failed, 2 bad usage or settings.

Examples:

  ferryman doctor                       the table
  ferryman doctor --json | jq '.[] | select(.status == "fail")'
  ferryman doctor --probe               also the rate limits (one small, billed call per model)
  ferryman doctor --offline             no calls to the upstreams (store and Redis are still checked)
  ferryman doctor --today 2027-01-01    what will have retired by then
"""


def doctor(
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also make one tiny call per configured model to read its rate limits (billed: a few tokens each).",
        ),
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Make no call to the upstreams (their checks say skip).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of {check, status, message, hint, details}.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too, not only on failures.")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds each network check may take.", min=0.1, max=600)
    ] = DEFAULT_TIMEOUT_S,
    today: Annotated[
        str | None,
        typer.Option(help="Check as if on this date (YYYY-MM-DD): which models will have retired, how old prices are."),
    ] = None,
) -> None:
    """Check a live setup: upstreams and keys, models, rate limits, SDK, prices, store, audit, files.

    Each check says ok, warn, fail or skip (not checked), what it found, and what to do.
    """
    if probe and offline:
        raise typer.BadParameter("--probe calls the upstreams; --offline says not to: choose one", param_hint="--probe")
    day = parse_today(today)
    from ferryman.config import load

    settings = load()  # a SettingsError is one line and exit 2, printed by the ferryman command
    checks = run(settings, today=day, probe=probe, offline=offline, timeout=timeout)
    if as_json:
        import json

        typer.echo(json.dumps([check.as_json() for check in checks], indent=2, ensure_ascii=False))
    else:
        _print(checks)
    raise typer.Exit(exit_code(checks, strict))


def _print(checks: list[Check]) -> None:
    from ferryman.cli_tables import print_table

    table = Table("", "check", "finding", "what to do", show_lines=False, pad_edge=False)
    for check in checks:
        style = _STYLE[check.status]
        table.add_row(
            f"[{style}]{check.status}[/{style}]", escape(check.check), escape(check.message), escape(check.hint)
        )
    print_table(out, table)
    counts = {status: sum(1 for c in checks if c.status == status) for status in (OK, WARN, FAIL, SKIP)}
    warnings = f"{counts[WARN]} warning" + ("" if counts[WARN] == 1 else "s")
    summary = f"{counts[OK]} ok, {warnings}, {counts[FAIL]} failed, {counts[SKIP]} skipped"
    out.print(summary, highlight=False)


doctor.__doc__ = (doctor.__doc__ or "") + "\n\n" + EPILOG
