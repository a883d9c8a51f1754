"""The ``ferryman`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ferryman import __version__
from ferryman.errors import OpenAIError

app = typer.Typer(
    name="ferryman",
    help="Make any application's use of the OpenAI API production-grade.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _register_subcommands() -> None:
    from ferryman.audit.cli import app as audit_app
    from ferryman.batch.cli import run
    from ferryman.gateway.cli import keys_app, teams_app
    from ferryman.gateway.serve_cli import serve

    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    app.add_typer(teams_app, name="teams")
    app.command()(serve)
    app.command()(run)

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
) -> None:
    """Run the OpenAI API emulator (chat, responses, embeddings, files, batches, fine-tuning...).

    Point any client at it: OPENAI_BASE_URL=http://HOST:PORT/v1 with any OPENAI_API_KEY.
    """
    from ferryman.mock.app import MockApp
    from ferryman.mock.faults import parse_rule
    from ferryman.mock.server import serve
    from ferryman.mock.settings import MockSettings

    try:
        rules = [parse_rule(spec) for spec in fault or []]
    except OpenAIError as error:
        err.print(f"[red]error:[/red] --fault: {error.message}")
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
    )
    try:
        mock_app = MockApp(settings)
    except OpenAIError as error:
        err.print(f"[red]error:[/red] {error.message}")
        raise typer.Exit(2) from None
    err.print(f"ferryman mock on [bold]http://{host}:{port}/v1[/bold]  (control API at /_ferryman/)")
    serve(mock_app, host, port)


_register_subcommands()

if __name__ == "__main__":
    app()
