"""``ferryman audit``: verify, prune and export the audit log (being written)."""

import typer

app = typer.Typer(help="Verify, prune and export the audit log.", no_args_is_help=True)


@app.command()
def verify() -> None:
    """Check the hash chain and its signed checkpoints."""
    raise typer.Exit(1)
