"""``[tool.ferryman.lint]`` in ``pyproject.toml``, and the options a run works with.

The table is found the way ruff finds ``[tool.ruff]``: walking up from the first path linted (or the
working directory) to the nearest ``pyproject.toml`` that has it. Keys, all optional::

    [tool.ferryman.lint]
    select = ["FM"]               # codes or prefixes; default: every rule not marked opt-in
    extend-select = ["FM801"]     # added to select
    ignore = ["FM102"]
    exclude = ["legacy/"]         # replaces the default excludes (.venv, .git, node_modules, build...)
    extend-exclude = ["tests/fixtures"]
    retiring-within = "180d"      # FM102's window; "all" reports every model with a shutdown date

An unknown key or a wrong type is an error (exit code 2): a typo must not silently lint less.
Command-line ``--select`` replaces ``select``; ``--extend-select``, ``--ignore`` and
``--extend-exclude`` add to the table's.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

DEFAULT_EXCLUDE = (
    ".git", ".hg", ".svn", ".venv", "venv", ".env", "env", "node_modules", "build", "dist", "_build",
    "__pycache__", ".tox", ".nox", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".eggs", "*.egg-info",
    "site-packages", "__pypackages__", ".ipynb_checkpoints",
)  # fmt: skip
DEFAULT_WINDOW_DAYS = 180
_KEYS = {"select", "extend-select", "ignore", "exclude", "extend-exclude", "retiring-within"}
_WINDOW = re.compile(r"^\s*(\d+)\s*([dwmy]?)\s*$", re.IGNORECASE)
_UNIT_DAYS = {"": 1, "d": 1, "w": 7, "m": 30, "y": 365}


class ConfigError(ValueError):
    """A bad ``[tool.ferryman.lint]`` table or option value (exit code 2)."""


def parse_window(value: str | int | None) -> int | None:
    """``"180d"``, ``"26w"``, ``"6m"``, ``180`` → days; ``"all"`` → None (no window)."""
    if value is None:
        return DEFAULT_WINDOW_DAYS
    if isinstance(value, bool):
        raise ConfigError(f"retiring-within: expected days like '180d' or 'all', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("retiring-within: must not be negative")
        return value
    if value.strip().lower() in ("all", "any", "always"):
        return None
    found = _WINDOW.match(value)
    if not found:
        raise ConfigError(f"retiring-within: expected days like '180d', '26w', '6m' or 'all', not {value!r}")
    return int(found.group(1)) * _UNIT_DAYS[found.group(2).lower()]


@dataclass
class FileConfig:
    """The ``[tool.ferryman.lint]`` table (all keys empty when there is none)."""

    path: Path | None = None
    select: list[str] | None = None
    extend_select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] | None = None
    extend_exclude: list[str] = field(default_factory=list)
    retiring_within: str | int | None = None

    @property
    def root(self) -> Path | None:
        return self.path.parent if self.path else None


def _strings(table: dict[str, Any], key: str, where: Path) -> list[str] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: [tool.ferryman.lint] {key} must be a list of strings")
    return list(value)


def load_file(path: Path) -> FileConfig | None:
    """The table in ``path``, or None when the file has no ``[tool.ferryman.lint]``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    table = data.get("tool", {}).get("ferryman", {}).get("lint")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.ferryman.lint] must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [tool.ferryman.lint]: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_KEYS))})")  # fmt: skip
    window = table.get("retiring-within")
    if window is not None and not isinstance(window, (str, int)):
        raise ConfigError(f"{path}: [tool.ferryman.lint] retiring-within must be a string like '180d' or days")
    parse_window(window)
    return FileConfig(
        path=path,
        select=_strings(table, "select", path),
        extend_select=_strings(table, "extend-select", path) or [],
        ignore=_strings(table, "ignore", path) or [],
        exclude=_strings(table, "exclude", path),
        extend_exclude=_strings(table, "extend-exclude", path) or [],
        retiring_within=window,
    )


def discover(start: Path) -> FileConfig:
    """The nearest ``pyproject.toml`` with ``[tool.ferryman.lint]`` from ``start`` upwards."""
    here = start.resolve()
    if not here.is_dir():
        here = here.parent
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            found = load_file(candidate)
            if found is not None:
                return found
    return FileConfig()


@dataclass(frozen=True)
class Options:
    """Everything a run needs besides the files."""

    codes: frozenset[str]
    today: dt.date
    retiring_within: int | None = DEFAULT_WINDOW_DAYS  # days; None: report every dated model
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    root: Path | None = None  # where relative exclude patterns start (the pyproject's directory)


class Excluder:
    """Glob patterns: one without ``/`` matches any path component (``.venv``, ``*.egg-info``); one
    with ``/`` matches the path relative to the config's directory, or a directory above it."""

    def __init__(self, patterns: tuple[str, ...], root: Path | None) -> None:
        self.names = tuple(p for p in patterns if "/" not in p.strip("/"))
        self.paths = tuple(p.strip("/") for p in patterns if "/" in p.strip("/"))
        self.names = tuple(p.strip("/") for p in self.names)
        self.root = root.resolve() if root else Path.cwd().resolve()

    def name_excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)

    def excluded(self, path: Path, parts: tuple[str, ...]) -> bool:
        """Whether ``path`` is out; ``parts`` are the components the name patterns are tried on (those
        below the directory being walked, or a file's path as given: never the directories above)."""
        if any(self.name_excluded(part) for part in parts if part not in (".", "..")):
            return True
        if not self.paths:
            return False
        try:
            rel = PurePosixPath(path.resolve().relative_to(self.root).as_posix())
        except ValueError:
            return False
        candidates = [str(rel), *(str(parent) for parent in rel.parents if str(parent) != ".")]
        return any(fnmatch.fnmatchcase(c, pattern) for c in candidates for pattern in self.paths)
