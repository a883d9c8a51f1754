"""Shared by the lint tests: lint a snippet of source with chosen rules and a chosen day.

Dates are taken from the catalogue and the day is set relative to them, so the tests keep passing
when the shipped table moves (only a model losing its date, or its family, would break them).
Key-shaped strings are built here at run time, never written out, for the suite's leak guard.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Iterable

from ferryman import catalogue
from ferryman.lint.config import Options
from ferryman.lint.engine import lint_source
from ferryman.lint.result import Finding
from ferryman.lint.rules import enabled

TODAY = dt.date(2026, 12, 4)


def options(select: Iterable[str] | None = ("ALL",), today: dt.date = TODAY, window: int | None = 180) -> Options:
    return Options(enabled(list(select) if select is not None else None), today, window)


def lint(
    source: str,
    select: Iterable[str] | None = ("ALL",),
    today: dt.date = TODAY,
    window: int | None = 180,
    sdk_source: bool = False,
) -> list[Finding]:
    result = lint_source(textwrap.dedent(source).encode(), "snippet.py", options(select, today, window), sdk_source)
    assert result.error is None, result.error
    return result.findings


def codes(source: str, select: Iterable[str] | None = ("ALL",), **kwargs: object) -> list[str]:
    return [f.code for f in lint(source, select, **kwargs)]  # type: ignore[arg-type]


def only(source: str, code: str, **kwargs: object) -> list[Finding]:
    """The findings of one rule."""
    return lint(source, (code,), **kwargs)  # type: ignore[arg-type]


def shutdown(model: str) -> dt.date:
    life = catalogue.lifecycle(model)
    assert life is not None and life.shutdown_date is not None, f"the catalogue no longer dates {model}"
    return life.shutdown_date


def fake_key(prefix: str = "sk", body: str = "proj-Q7mZ2xK9pL4vB8nR3tW6yH1cF5dJ0sA") -> str:
    """A key-shaped string that is no key, assembled so that no test file holds one."""
    return prefix + "-" + body
