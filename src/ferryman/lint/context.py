"""What every check of one file shares: the facts, the resolver, the clients, the options, and the
findings so far (with the UTF-8 byte columns of ``ast`` turned into character columns once)."""

from __future__ import annotations

import ast
import datetime as dt

from ferryman import catalogue
from ferryman.lint.calls import Clients, SdkCall, sdk_call
from ferryman.lint.config import Options
from ferryman.lint.result import Edit, Finding, char_col
from ferryman.lint.scan import Facts
from ferryman.lint.values import Resolver


class Context:
    def __init__(self, facts: Facts, source_lines: list[bytes], options: Options, sdk_source: bool = False) -> None:
        self.facts = facts
        self.sdk_source = sdk_source  # a file of the openai package itself
        self.lines = source_lines
        self.options = options
        self.codes = options.codes
        self.today = options.today
        self.resolver = Resolver(facts)
        self.clients = Clients(facts, self.resolver)
        self.findings: list[Finding] = []
        self.sdk_calls: list[SdkCall] = [found for site in facts.calls if (found := sdk_call(site)) is not None]

    def on(self, *codes: str) -> bool:
        return any(code in self.codes for code in codes)

    def col(self, line: int, byte_col: int) -> int:
        if 0 < line <= len(self.lines):
            return char_col(self.lines[line - 1], byte_col)
        return byte_col

    def position(self, node: ast.AST) -> tuple[int, int, int, int]:
        line = getattr(node, "lineno", 1)
        end_line = getattr(node, "end_lineno", None) or line
        col = self.col(line, getattr(node, "col_offset", 0))
        end_col = self.col(end_line, getattr(node, "end_col_offset", None) or 0)
        return line, col, end_line, end_col

    def add(self, code: str, node: ast.AST, message: str, edit: Edit | None = None) -> None:
        if code not in self.codes:
            return
        line, col, end_line, end_col = self.position(node)
        self.findings.append(Finding(code, line, col, end_line, end_col, message, edit=edit))

    def edit(self, kind: str, node: ast.AST, old: str, new: str, safety: str = "safe") -> Edit:
        line = getattr(node, "lineno", 1)
        return Edit(kind, line, self.col(line, getattr(node, "col_offset", 0)), old, new, safety)

    def when(self, date: dt.date) -> tuple[bool, str]:
        """(past?, "was retired on D" / "retires on D (in N days)")."""
        days = (date - self.today).days
        if days <= 0:
            return True, f"on {date.isoformat()}"
        return False, f"on {date.isoformat()} (in {days} day{'s' if days != 1 else ''})"

    def in_window(self, date: dt.date) -> bool:
        window = self.options.retiring_within
        return window is None or (date - self.today).days <= window


def lifecycle(model: str) -> catalogue.Lifecycle | None:
    """The shipped lifecycle of ``model`` when it has a shutdown date (the linter reads no store)."""
    found = catalogue.lifecycle(model)
    return found if found is not None and found.shutdown_date is not None else None
