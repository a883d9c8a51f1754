"""``ferryman run INPUT.jsonl -o RESULTS.jsonl``.

Exit codes: 0 every line succeeded; 1 some lines failed or could not be read (see the errors
file); 2 bad usage (unreadable input, a journal of another input, bad options); 3 stopped by
``--max-cost`` with lines left (run again with a higher cap to go on); 4 stopped because the disk
is full (the message names the file; the journal is intact: free some space and run the same
command again to resume, see :mod:`ferryman.batch.disk`); 130 interrupted (run the same command
again to resume).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ferryman.batch.disk import DiskFull

err = Console(stderr=True)


class Via(StrEnum):
    live = "live"
    batch_api = "batch-api"


class Order(StrEnum):
    input = "input"
    completion = "completion"


class _Rates(ProgressColumn):
    """requests/s, tokens/s and spend, from the task's fields."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rps = task.completed / elapsed if elapsed > 0 else 0.0
        tokens = task.fields.get("tokens", 0)
        tps = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{rps:,.1f} req/s  {tps:,.0f} tok/s  ${task.fields.get('spend', Decimal(0)):.4f}", style="cyan")


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rates(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
        speed_estimate_period=5,  # the ETA follows the paced rate, not the opening burst
    )


def _money(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise typer.BadParameter(f"not an amount of USD: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise typer.BadParameter("must be a positive amount of USD")
    return value


def _usd(value: Decimal) -> str:
    return f"${value:,.4f}"


def run(
    input_file: Annotated[
        Path, typer.Argument(help="JSONL: Batch API lines or one request body per line.", metavar="INPUT.jsonl")
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results file (default: INPUT.results.jsonl).")
    ] = None,
    via: Annotated[
        Via, typer.Option(help="live: at the rate limit's edge; batch-api: half price, within 24 h.")
    ] = Via.live,
    concurrency: Annotated[
        int, typer.Option(help="Most requests in flight (pacing holds them to the limits).", min=1)
    ] = 64,
    max_cost: Annotated[str | None, typer.Option(help="Stop cleanly before spending more than this (USD).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count tokens and estimate the cost; send nothing.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Model for lines that name none.")] = None,
    endpoint: Annotated[str, typer.Option(help="Endpoint for bare request bodies.")] = "/v1/chat/completions",
    order: Annotated[Order, typer.Option(help="Results in input order or completion order.")] = Order.input,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send again the lines a previous run recorded as failed.")
    ] = False,
    resubmit_failed_live: Annotated[
        bool,
        typer.Option("--resubmit-failed-live", help="batch-api: send the lines the batches failed once more, live."),
    ] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Forget this output's journal and start over.")] = False,
    poll_s: Annotated[float, typer.Option(help="batch-api: first poll interval (backs off to 60 s).", min=0.05)] = 5.0,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Run every request of a JSONL file, exactly once, resumably.

    Live (the default) as fast as the rate limits allow, through Ferryman's pipeline (pacing,
    retries, costs, audit); or through the Batch API at half price. Kill it at any point and run
    the same command again: only lines without a recorded result are sent. Results go to
    RESULTS.jsonl (one line per request, in input order), failures to RESULTS.errors.jsonl.

    Exit codes: 0 every line succeeded; 1 some lines failed or could not be read; 2 bad usage;
    3 stopped by --max-cost with lines left; 4 stopped because the disk is full (the journal is
    intact: free some space and run the same command again); 130 interrupted.
    """
    from ferryman.batch.disk import EXIT_DISK_FULL, DiskFull, reserve_size
    from ferryman.batch.estimate import estimate
    from ferryman.batch.inputs import BadLine, Line, fingerprint, read_lines
    from ferryman.batch.journal import Journal, JournalMismatch, journal_path
    from ferryman.batch.output import errors_path, write_results
    from ferryman.config import load
    from ferryman.pricing import PriceTable
    from ferryman.store.faults import disk_full

    if not input_file.is_file():
        err.print(f"[red]error:[/red] no such input file: {input_file}")
        raise typer.Exit(2)
    cap = _money(max_cost)
    output = output or input_file.with_name(input_file.stem + ".results.jsonl")
    settings = load()  # a settings error is one line and exit 2, printed by the ferryman command
    try:
        items = list(read_lines(input_file, model, endpoint))
    except (ValueError, OSError) as error:
        if disk_full(error):
            _say_disk_full(DiskFull.of(error), None)
            raise typer.Exit(EXIT_DISK_FULL) from None
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    prices = PriceTable.for_settings(settings)
    bad = [item for item in items if isinstance(item, BadLine)]
    for item in bad[:20]:
        err.print(f"[yellow]{escape(item.reason)}[/yellow]", soft_wrap=True, highlight=False)  # FILE:LINE:COL: words
    if len(bad) > 20:
        err.print(f"[yellow]... and {len(bad) - 20} more bad lines[/yellow] (all in {errors_path(output).name})")

    if dry_run:
        _print_estimate(estimate(items, prices))
        raise typer.Exit(0)

    path = journal_path(output)
    if restart and path.exists():
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
    try:
        journal = Journal.open(path, fingerprint(input_file))
    except JournalMismatch as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    except DiskFull as error:
        _say_disk_full(error, None)
        raise typer.Exit(EXIT_DISK_FULL) from None
    lines = {item.custom_id: item for item in items if isinstance(item, Line)}
    started = time.monotonic()
    interrupted = False
    stopped_by_cost = False
    full: DiskFull | None = None
    unrecorded = 0
    try:
        journal.add(items)
        if retry_failed:
            journal.retry_failed()
        pending_ids = journal.pending_ids()
        pending = [line for line in lines.values() if line.custom_id in pending_ids]
        if not pending:
            already = journal.counts()
            err.print(f"nothing to send: all {already['done'] + already['failed']} lines have results ({output})")
        else:
            journal.hold_reserve(reserve_size(concurrency))  # before anything is sent: see batch.disk
            spent_before = journal.totals()["cost_usd"]
            if via is Via.live:
                tally = _run_live(settings, journal, prices, pending, concurrency, cap, spent_before, progress)
                stopped_by_cost, full, unrecorded = bool(tally.stopped_by_cost), tally.disk_full, tally.unrecorded
            else:
                _run_batch_api(
                    settings, journal, prices, pending, lines, poll_s, resubmit_failed_live, concurrency, progress
                )
    except KeyboardInterrupt:
        interrupted = True
    except DiskFull as error:
        full = error
    except Exception as error:  # a full disk under another error (a temporary file, say)
        if not disk_full(error):
            raise
        full = DiskFull.of(error)
    finally:
        unwritten: DiskFull | None = None
        try:
            write_results(journal, output, order.value)
        except DiskFull as error:  # the journal has every result: the next run writes the files
            unwritten = error
        counts, totals = journal.counts(), journal.totals()
        journal.close()
        full = full or journal.full  # batch-api: the reserve was used, and the run went on in its room
    _print_summary(counts, totals, time.monotonic() - started, output, errors_path(output))
    if full is not None and (counts["pending"] or unrecorded or unwritten is not None):
        _say_disk_full(full, counts, unrecorded, unwritten)
        raise typer.Exit(EXIT_DISK_FULL)
    if full is not None:  # the last results fitted in the reserve: the job is whole, the disk is not
        err.print(f"[yellow]the disk is full:[/yellow] {escape(str(full))}; every line has its result", soft_wrap=True)
    if unwritten is not None:
        _say_disk_full(unwritten, counts)
        raise typer.Exit(EXIT_DISK_FULL)
    if interrupted:
        err.print("[yellow]interrupted:[/yellow] run the same command again to resume")
        raise typer.Exit(130)
    if stopped_by_cost or counts["pending"]:
        err.print(
            f"[yellow]stopped at --max-cost:[/yellow] {counts['pending']} lines left; run again with a higher cap"
        )
        raise typer.Exit(3)
    raise typer.Exit(1 if counts["failed"] or counts["bad"] else 0)


def _pipeline(settings: Any) -> Any:
    from ferryman.pipeline import build

    return build(settings)


def _run_live(
    settings: Any,
    journal: Any,
    prices: Any,
    pending: list[Any],
    concurrency: int,
    cap: Decimal | None,
    spent_before: Decimal,
    show: bool,
) -> Any:
    """Run ``pending`` live; returns the runner's :class:`~ferryman.batch.live.Tally`."""
    from ferryman.batch.live import LiveRunner, store_full
    from ferryman.store.faults import disk_full

    try:
        pipeline = _pipeline(settings)
    except Exception as error:  # its database, made or migrated on a full disk
        if disk_full(error):
            raise store_full(settings.store.url or settings.database_url(), error) from error
        raise
    with progress_bar(show) as bar:
        task = bar.add_task("live", total=len(pending), tokens=0, spend=Decimal(0))

        def on_result(result: Any, tally: Any) -> None:
            bar.update(task, advance=1, tokens=tally.input_tokens + tally.output_tokens, spend=tally.cost_usd)

        runner = LiveRunner(pipeline, journal, prices, concurrency, cap, on_result)

        async def main() -> Any:
            try:
                return await runner.run(pending, spent_before)
            finally:
                close = getattr(pipeline.terminal, "aclose", None)
                if close is not None:
                    await close()

        tally = asyncio.run(main())
    pipeline.store.close()
    return tally


def _run_batch_api(
    settings: Any,
    journal: Any,
    prices: Any,
    pending: list[Any],
    lines: dict[str, Any],
    poll_s: float,
    resubmit_failed_live: bool,
    concurrency: int,
    show: bool,
) -> None:
    from ferryman.batch.batch_api import BatchAPIError, BatchAPIRunner

    runner = BatchAPIRunner(settings, journal, lines, poll_s=poll_s, progress=progress_bar(show), console=err)
    try:
        runner.run_blocking(pending)
    except BatchAPIError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    if resubmit_failed_live:
        journal.retry_failed()
        again = [lines[i] for i in journal.pending_ids() if i in lines]
        if again:
            err.print(f"resubmitting {len(again)} failed lines live")
            tally = _run_live(settings, journal, prices, again, concurrency, None, Decimal(0), show)
            if tally.disk_full is not None:
                raise tally.disk_full


def _say_disk_full(
    error: DiskFull, counts: dict[str, int] | None, unrecorded: int = 0, unwritten: DiskFull | None = None
) -> None:
    """What stopped the run, where, and that running it again resumes it: no traceback."""
    err.print(f"[red]disk full:[/red] {escape(str(error))}", soft_wrap=True)
    if unwritten is not None:
        err.print(f"{escape(str(unwritten))}; the next run writes it from the journal", soft_wrap=True)
    if unrecorded:
        err.print(
            f"{unrecorded} replies came back after the disk filled and could not be recorded: "
            "the next run sends those lines again",
            soft_wrap=True,
        )
    if counts is None:
        err.print("nothing was sent; free some space and run the same command again", soft_wrap=True)
        return
    recorded = counts["done"] + counts["failed"]
    err.print(
        f"the journal is intact ({recorded} lines have results, {counts['pending']} left): "
        "free some space and run the same command again to resume",
        soft_wrap=True,
    )


def _print_estimate(result: Any) -> None:
    table = Table("model", "lines", "prompt tokens", "max output tokens", "live (worst case)", "Batch API (worst case)")
    for name, m in sorted(result.models.items()):
        note = f" ({m.unpriced} unpriced)" if m.unpriced else ""
        table.add_row(
            name,
            str(m.lines),
            f"{m.prompt_tokens:,}",
            f"{m.output_tokens:,}",
            _usd(m.live_usd) + note,
            _usd(m.batch_usd),
        )
    table.add_row(
        "[bold]total", str(result.lines), f"{result.prompt_tokens:,}", f"{result.output_tokens:,}",
        f"[bold]{_usd(result.live_usd)}", f"[bold]{_usd(result.batch_usd)}",
    )  # fmt: skip
    Console().print(table)
    err.print(
        f"{result.lines} lines to send, {result.bad_lines} unreadable; nothing was sent. "
        "The worst case assumes every reply uses its whole output cap."
    )


def _print_summary(counts: dict[str, int], totals: dict[str, Any], wall: float, output: Path, errors: Path) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("done", str(counts["done"]))
    table.add_row("failed", str(counts["failed"] + counts["bad"]))
    table.add_row("retried", str(totals["retried"]))
    table.add_row("left", str(counts["pending"]))
    table.add_row("tokens", f"{totals['input_tokens']:,} in, {totals['output_tokens']:,} out")
    table.add_row("cost", _usd(totals["cost_usd"]))
    table.add_row("wall time", f"{wall:.1f} s")
    table.add_row("results", str(output))
    table.add_row("errors", str(errors))
    err.print(table)
