"""The ``ferryman lint`` command: options, configuration, exit codes.

Exit codes, as linters use them: 0 nothing found, 1 findings, 2 a usage or configuration error or a
file that could not be parsed (it is reported with its line and the other files are still linted).
``--exit-zero`` turns 1 into 0 (an informational CI step); it never hides a 2.
"""

from __future__ import annotations

import datetime as dt
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer

from ferryman.lint.config import (
    DEFAULT_EXCLUDE,
    ConfigError,
    Excluder,
    FileConfig,
    Options,
    discover,
    load_file,
    parse_window,
)
from ferryman.lint.engine import discover as find_files
from ferryman.lint.engine import lint_files
from ferryman.lint.report import Run, render, summary
from ferryman.lint.rules import RULES, SelectorError, enabled

EPILOG = (
    "[bold]Examples[/bold]\n"
    "  ferryman lint src/                          lint a tree (.py files; .venv, .git, build... skipped)\n"
    "  ferryman lint --select FM1,FM2 app.py       only the model and parameter rules\n"
    "  ferryman lint --extend-select FM801 .       add the opt-in error-handling rule\n"
    "  ferryman lint --fix .                       rename max_tokens, add include_usage where safe\n"
    "  ferryman lint --fix-models --diff .         show each retiring model swapped for its successor\n"
    "  ferryman lint --format sarif -o lint.sarif  for GitHub code scanning\n\n"
    "[bold]Rules[/bold] (details and fixes: docs/lint-rules.md; --list-rules prints them)\n"
    + "\n".join(f"  {r.code}  {r.name}{'' if r.default else ' (opt-in)'}" for r in RULES)
    + "\n\n[bold]Silence one line[/bold] with [cyan]# ferryman: noqa\\[FM102][/cyan] (or a bare "
    "[cyan]# ferryman: noqa[/cyan]). [bold]Configure[/bold] in pyproject.toml under \\[tool.ferryman.lint]: "
    "select, extend-select, ignore, exclude, extend-exclude, retiring-within.\n\n"
    "[bold]Exit codes[/bold]: 0 clean, 1 findings, 2 usage error or a file that does not parse."
)


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _rules_table() -> str:
    rows = [f"{r.code}  {r.name:32} {'(opt-in) ' if not r.default else ''}{r.summary}" for r in RULES]
    return "\n".join(rows) + "\n"


def lint(
    paths: Annotated[list[str] | None, typer.Argument(help="Files or directories to lint (default: .).")] = None,
    select: Annotated[
        list[str] | None, typer.Option(help="Only these codes or prefixes (FM1, FM201, ALL); comma-separated.")
    ] = None,
    extend_select: Annotated[list[str] | None, typer.Option(help="Codes or prefixes added to the selection.")] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Codes or prefixes to skip.")] = None,
    extend_exclude: Annotated[
        list[str] | None, typer.Option(help="Globs of paths to skip, added to the defaults and the config.")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="text, json or sarif.")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Apply the safe fixes (FM201, FM202, FM701 where safe).")] = False,
    unsafe_fixes: Annotated[
        bool, typer.Option("--unsafe-fixes", help="With --fix: also the fixes that need a look (FM701).")
    ] = False,
    fix_models: Annotated[
        bool, typer.Option("--fix-models", help="Replace retired and retiring model ids with their successors.")
    ] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print the fixes as a diff instead of writing them.")] = False,
    retiring_within: Annotated[
        str | None, typer.Option(help="FM102's window: 180d (default), 26w, 6m, or 'all'.")
    ] = None,
    today: Annotated[
        str | None, typer.Option(help="Judge dates as of this day, YYYY-MM-DD (default: today), for reproducible CI.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A pyproject.toml to read \\[tool.ferryman.lint] from (default: the nearest).")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes (0: one per CPU for large runs).", min=0)] = 0,
    exit_zero: Annotated[bool, typer.Option(help="Exit 0 even when there are findings.")] = False,
    list_rules: Annotated[bool, typer.Option(help="Print every rule and exit.")] = False,
) -> None:
    """Audit Python code that calls the OpenAI API: retiring models, rejected parameters, retries, keys.

    Reads the code, never runs it. Model dates, successors and which models reason come from
    Ferryman's catalogue, the table the pipeline and `ferryman doctor` use.
    """
    if list_rules:
        typer.echo(_rules_table(), nl=False)
        raise typer.Exit(0)
    if output_format not in ("text", "json", "sarif"):
        raise _fail(f"--format must be text, json or sarif, not {output_format!r}")
    targets = paths or ["."]
    try:
        file_config = _file_config(config, targets)
        codes = enabled(
            _split(select) if select else file_config.select,
            [*file_config.extend_select, *_split(extend_select)],
            [*file_config.ignore, *_split(ignore)],
        )
        window = parse_window(retiring_within if retiring_within is not None else file_config.retiring_within)
        day = dt.date.fromisoformat(today) if today else dt.date.today()
    except (ConfigError, SelectorError) as error:
        raise _fail(str(error)) from None
    except ValueError:
        raise _fail(f"--today must be YYYY-MM-DD, not {today!r}") from None
    base = tuple(file_config.exclude) if file_config.exclude is not None else DEFAULT_EXCLUDE
    exclude = (*base, *file_config.extend_exclude, *_split(extend_exclude))
    options = Options(codes, day, window, exclude, file_config.root)
    files, missing = find_files(targets, Excluder(exclude, file_config.root))
    safeties = {"safe"} if fix else set()
    if fix and unsafe_fixes:
        safeties.add("unsafe")
    if fix_models:
        safeties.add("models")
    if safeties or diff:
        run, diffs = _fix(files, options, safeties or {"safe"}, write=not diff)
    else:
        run, diffs = Run(lint_files(files, options, jobs), []), []
    run.errors = [*missing, *(r.error for r in run.results if r.error is not None)]
    if diff:
        sys.stdout.write("".join(diffs))
        sys.stdout.flush()
        typer.echo(summary(run), err=True)
        raise typer.Exit(2 if run.errors else (1 if diffs else 0))
    _emit(render(run, output_format), output)
    if run.errors:
        raise typer.Exit(2)
    raise typer.Exit(1 if run.findings and not exit_zero else 0)


def _file_config(config: Path | None, targets: list[str]) -> FileConfig:
    if config is None:
        return discover(Path(targets[0]))
    found = load_file(config)
    if found is None:
        raise ConfigError(f"{config}: no [tool.ferryman.lint] table")
    return found


def _fix(files: list[str], options: Options, safeties: set[str], write: bool) -> tuple[Run, list[str]]:
    from ferryman.lint.fix import fix_file

    results, diffs, fixed = [], [], 0
    for path in files:
        done = fix_file(path, options, safeties, write=write)
        results.append(done.result)
        fixed += done.result.fixed
        if done.changed:
            diffs.append(done.diff())
    return Run(results, [], fixed), diffs


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output.write_text(text, encoding="utf-8")


lint.__doc__ = f"{inspect.cleandoc(lint.__doc__ or '')}\n\n{EPILOG}"
