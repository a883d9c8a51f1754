"""The ``ferryman`` command.

A command-line tool is started far more often than it runs anything long, so ``ferryman --help``
and ``ferryman mock`` must not pay for the gateway, the batch runner and the settings model
(SQLAlchemy, pydantic-settings, aiohttp: most of a second). :class:`LazyGroup` lists those
subcommands from placeholders holding only a name and a line of help, and imports a subcommand's
module when it is the one asked for (run, help or completion). ``tests/cli`` holds each
placeholder's line equal to the real command's own.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from ferryman import __version__, errors
from ferryman.errors import OpenAIError

# name -> (module:attribute, the line of help the listing shows). An attribute that is a Typer
# is a group of commands (``ferryman keys ...``); a function is one command.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "ferryman.gateway.serve_cli:serve",
        "Run the OpenAI-compatible gateway: virtual keys, budgets, limits, audit, metrics, dashboard.",
    ),
    "run": ("ferryman.batch.cli:run", "Run every request of a JSONL file, exactly once, resumably."),
    "audit": ("ferryman.audit.cli:app", "Verify, prune and export the audit log."),
    "keys": ("ferryman.gateway.cli:keys_app", "Create, list, rotate and revoke the gateway's virtual keys."),
    "teams": ("ferryman.gateway.cli:teams_app", "Limits and budgets shared by every key of a team."),
    "lint": (
        "ferryman.lint.cli:lint",
        "Audit Python code that calls the OpenAI API: retiring models, rejected parameters, retries, keys.",
    ),
    "models": (
        "ferryman.models_cli:models",
        "List the models Ferryman knows, with shutdown dates, successors and where each date came from.",
    ),
    "report": (
        "ferryman.report.cli:report",
        "Usage and cost from the audit log: totals, breakdowns, spikes, and what to change, in dollars.",
    ),
    "doctor": (
        "ferryman.doctor_cli:doctor",
        "Check a live setup: upstreams and keys, models, rate limits, SDK, prices, store, audit, files.",
    ),
}


def load_command(name: str) -> Any:
    """The real click command behind a lazy subcommand (importing its module)."""
    target, _ = LAZY_COMMANDS[name]
    module_name, attribute = target.split(":")
    thing = getattr(importlib.import_module(module_name), attribute)
    if isinstance(thing, typer.Typer):
        command = typer.main.get_command(thing)
    else:
        single = typer.Typer(rich_markup_mode="rich")
        single.command(name=name)(thing)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommand(typer.core.TyperCommand):
    """A placeholder for a subcommand whose module is imported only when it is used."""

    def __init__(self, name: str, help_line: str) -> None:
        super().__init__(name, help=help_line, short_help=help_line)


class LazyGroup(typer.core.TyperGroup):
    """The top-level group: lists every subcommand, imports only the one resolved, and turns a
    settings error into one line and exit code 2 (a usage error, as click's own are)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, (_, help_line) in LAZY_COMMANDS.items():
            self.commands.setdefault(name, LazyCommand(name, help_line))

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, LazyCommand) and name is not None:
            command = self.commands[name] = load_command(name)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except errors.SettingsError as error:
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="ferryman",
    cls=LazyGroup,
    help="Make any application's use of the OpenAI API production-grade.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

FAULT_HELP = (
    "Inject faults into matching requests; repeatable. A rule is key=value pairs joined by ';'. "
    "Selectors: path=GLOB, model=GLOB, p=PROBABILITY, times=N. Actions: status=CODE "
    "(OpenAI-format error; with type=, code=, message=, param=, retry_after_ms=, retry_after=, "
    "should_retry=true|false), delay_ms=N, ttft_ms=N, chunk_delay_ms=N, cut_after=N (drop the "
    "stream after N chunks), error_after=N (error event after N chunks), reset (reset the "
    "connection). Example: --fault 'path=/v1/chat/*;p=0.05;status=500'. The same grammar, "
    "without selectors, works per request in the x-ferryman-fault header."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ferryman {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Ferryman: emulator, pipeline, gateway and batch runner for the OpenAI API."""


@app.command()
def mock(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute allowed per API key (default 30000).", min=1)
    ] = None,
    tpm: Annotated[
        int | None, typer.Option(help="Tokens per minute allowed per API key (default 150M).", min=1)
    ] = None,
    quota_usd: Annotated[
        float | None, typer.Option(help="Dollars each key may spend; then 429 insufficient_quota.", min=0)
    ] = None,
    keys: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated API keys to accept (default: any bearer token).", envvar="FERRYMAN_MOCK_KEYS"
        ),
    ] = None,
    batch_seconds: Annotated[
        float, typer.Option(help="How long a batch takes from validating to completed.", min=0)
    ] = 6.0,
    finetune_seconds: Annotated[
        float, typer.Option(help="How long a fine-tuning job takes from validating_files to succeeded.", min=0)
    ] = 6.0,
    latency_ms: Annotated[float, typer.Option(help="Latency added to every reply.", min=0)] = 0.0,
    fault: Annotated[list[str] | None, typer.Option(help=FAULT_HELP)] = None,
    fixtures: Annotated[
        Path | None, typer.Option(help="YAML or JSON file of scripted replies.", exists=True, dir_okay=False)
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="Keep files, batches and jobs in this directory across restarts.", file_okay=False),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest JSON request body accepted, in MiB.", min=0.001)] = 32.0,
    today: Annotated[
        str | None,
        typer.Option(
            help="Act as on this date (YYYY-MM-DD): models past their shutdown date are refused as OpenAI "
            "refuses them (default: the real date).",
            envvar="FERRYMAN_MOCK_TODAY",
        ),
    ] = None,
) -> None:
    """Run the OpenAI API emulator (chat, responses, embeddings, files, batches, fine-tuning...).

    Point any client at it: OPENAI_BASE_URL=http://HOST:PORT/v1 with any OPENAI_API_KEY.
    """
    from ferryman.mock.app import MockApp
    from ferryman.mock.faults import parse_rule
    from ferryman.mock.server import serve
    from ferryman.mock.settings import MockSettings, parse_today

    try:
        rules = [parse_rule(spec) for spec in fault or []]
    except OpenAIError as error:
        err.print(f"[red]error:[/red] --fault: {error.message}")
        raise typer.Exit(2) from None
    try:
        acting_on = parse_today(today, "--today") if today else None
    except ValueError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if state is not None:
        from ferryman.files import private_dir

        private_dir(state)  # 0700 when made here: it will hold the uploaded files
    settings = MockSettings(
        rpm=rpm,
        tpm=tpm,
        quota_usd=quota_usd,
        keys=frozenset(k.strip() for k in keys.split(",") if k.strip()) if keys else None,
        latency_ms=latency_ms,
        batch_seconds=batch_seconds,
        finetune_seconds=finetune_seconds,
        faults=rules,
        fixtures_path=fixtures,
        state_dir=state,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        today=acting_on,
    )
    try:
        mock_app = MockApp(settings)
    except OpenAIError as error:
        err.print(f"[red]error:[/red] {error.message}")
        raise typer.Exit(2) from None
    err.print(f"ferryman mock on [bold]http://{host}:{port}/v1[/bold]  (control API at /_ferryman/)")
    serve(mock_app, host, port)


if __name__ == "__main__":
    app()
