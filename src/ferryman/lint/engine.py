"""Finding the files, linting each one, and ``# ferryman: noqa``.

A file that cannot be read or parsed becomes a :class:`~ferryman.lint.result.ParseError` (reported
with its line, exit code 2) and the run goes on. Large runs are spread over worker processes (one
per CPU, up to 8), since parsing is most of the cost and ``ast`` holds the GIL; small runs stay in
this process, where starting workers would cost more than it saves. The cyclic garbage collector is
paused while files are linted: syntax trees are large, acyclic and freed by reference counting, and
each collection the parser would set off walks every node again.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ferryman import _collector_paused
from ferryman.lint import checks, retries
from ferryman.lint.config import Excluder, Options
from ferryman.lint.context import Context
from ferryman.lint.result import FileResult, Finding, ParseError
from ferryman.lint.rules import matches_any
from ferryman.lint.scan import scan

NOQA = re.compile(rb"#\s*ferryman:\s*noqa(?:\[([A-Za-z0-9,\s]*)\])?", re.IGNORECASE)
PARALLEL_FROM = 200  # files: below this one process is faster than starting workers
MAX_JOBS = 8


def noqa_lines(source: bytes) -> dict[int, tuple[str, ...] | None]:
    """Line → the codes its ``# ferryman: noqa[...]`` names (None: bare, every code)."""
    found: dict[int, tuple[str, ...] | None] = {}
    if b"noqa" not in source.lower():
        return found
    for number, line in enumerate(source.splitlines(), start=1):
        match = NOQA.search(line)
        if match is None:
            continue
        codes = match.group(1)
        if codes is None:
            found[number] = None
        else:
            found[number] = tuple(c.strip().upper() for c in codes.decode().split(",") if c.strip())
    return found


def suppressed(finding: Finding, noqa: dict[int, tuple[str, ...] | None]) -> bool:
    if finding.line not in noqa:
        return False
    codes = noqa[finding.line]
    return codes is None or matches_any(finding.code, codes)


def lint_source(source: bytes, path: str, options: Options, sdk_source: bool = False) -> FileResult:
    """Lint one file's bytes; ``path`` is only for the report. ``sdk_source``: the file is part of the
    ``openai`` package itself, which implements what FM301/FM302 warn about (see :func:`top_package`)."""
    result = FileResult(path, lines=source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1))
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        result.error = ParseError(path, error.lineno or 1, (error.offset or 1) - 1, f"could not parse: {error.msg}")
        return result
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        result.error = ParseError(path, 1, 0, f"could not parse: {error}")
        return result
    try:
        cx = Context(scan(tree), source.splitlines(), options, sdk_source)
        checks.run(cx)
        retries.run(cx)
    except Exception as error:  # a bug in a rule: report it for this file, lint the others
        result.error = ParseError(path, 1, 0, f"internal error, please report: {type(error).__name__}: {error}")
        return result
    noqa = noqa_lines(source)
    unique = {(f.code, f.line, f.col): f.at(path) for f in cx.findings}
    result.findings = sorted((f for f in unique.values() if not suppressed(f, noqa)), key=lambda f: f.sort_key)
    return result


def lint_file(path: str, options: Options) -> FileResult:
    try:
        source = Path(path).read_bytes()
    except OSError as error:
        return FileResult(path, error=ParseError(path, 1, 0, f"could not read: {error.strerror or error}"))
    return lint_source(source, path, options, sdk_source=top_package(os.path.dirname(path)) == "openai")


@functools.cache
def top_package(directory: str) -> str | None:
    """The top-level package a directory belongs to (walking up while there is an ``__init__.py``)."""
    if not os.path.isfile(os.path.join(directory, "__init__.py")):
        return None
    parent = os.path.dirname(os.path.abspath(directory))
    return top_package(parent) or os.path.basename(os.path.abspath(directory))


def _lint_chunk(paths: Sequence[str], options: Options) -> list[FileResult]:
    with _collector_paused():
        return [lint_file(path, options) for path in paths]


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def lint_files(paths: Sequence[str], options: Options, jobs: int = 0) -> list[FileResult]:
    """Lint ``paths`` (in worker processes when there are many: ``jobs`` 0 picks, 1 never)."""
    workers = jobs if jobs > 0 else (min(cpus(), MAX_JOBS) if len(paths) >= PARALLEL_FROM else 1)
    if workers <= 1 or len(paths) < 2:
        return sorted(_lint_chunk(paths, options), key=lambda r: r.path)
    # Many small chunks, largest files first, so no worker is left with the tail on its own.
    ordered = sorted(paths, key=_size, reverse=True)
    chunks = [ordered[i :: workers * 4] for i in range(workers * 4)]
    results: list[FileResult] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_lint_chunk, chunks, [options] * len(chunks)):
            results.extend(part)
    return sorted(results, key=lambda r: r.path)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def discover(paths: Iterable[str], excluder: Excluder) -> tuple[list[str], list[ParseError]]:
    """The ``.py`` files under ``paths`` (files named explicitly are kept whatever their suffix), in
    order, without excluded directories; paths that do not exist are errors."""
    found: list[str] = []
    missing: list[ParseError] = []
    seen: set[str] = set()
    for raw in paths:
        given = Path(raw)
        if given.is_file():
            if not excluder.excluded(given, given.parts) and raw not in seen:
                seen.add(raw)
                found.append(raw)
            continue
        if not given.is_dir():
            missing.append(ParseError(raw, 1, 0, "no such file or directory"))
            continue
        for directory, dirs, files in os.walk(raw):
            dirs[:] = sorted(d for d in dirs if not excluder.name_excluded(d) and not _excluded(excluder, directory, d))
            for name in sorted(files):
                if not name.endswith(".py") or excluder.name_excluded(name):
                    continue
                path = os.path.normpath(os.path.join(directory, name))  # "./a.py" -> "a.py"
                if path not in seen and not (excluder.paths and excluder.excluded(Path(path), ())):
                    seen.add(path)
                    found.append(path)
    return found, missing


def _excluded(excluder: Excluder, directory: str, name: str) -> bool:
    return bool(excluder.paths) and excluder.excluded(Path(directory, name), ())
