"""What linting produces: findings, the edits that fix them, and files that could not be read.

Plain, picklable dataclasses: files are linted in worker processes on large runs, and the findings
come back to the parent to be filtered, sorted and reported. Positions are 1-based lines and
0-based *character* columns (``ast`` gives UTF-8 byte offsets; :func:`char_col` converts), which is
what ``libcst`` uses, so an :class:`Edit` can find its node again when ``--fix`` rewrites the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Edit:
    """A rewrite ``--fix`` can make, located by the node it starts at.

    - ``rename``: the keyword argument at (line, col) named ``old`` becomes ``new``;
    - ``add``: after the keyword argument at (line, col) (named ``old``), insert the argument ``new``
      (source text, e.g. ``stream_options={"include_usage": True}``);
    - ``replace``: the string literal at (line, col) with the value ``old`` gets the value ``new``.
    """

    kind: str
    line: int
    col: int
    old: str
    new: str
    safety: str = "safe"  # "safe" | "unsafe" | "models"


@dataclass(frozen=True)
class Finding:
    code: str
    line: int
    col: int  # 0-based, characters
    end_line: int
    end_col: int
    message: str
    path: str = ""
    edit: Edit | None = None

    def at(self, path: str) -> Finding:
        return replace(self, path=path)

    @property
    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.col, self.code)


@dataclass(frozen=True)
class ParseError:
    """A file that could not be read or parsed: reported, counted (exit code 2), never fatal."""

    path: str
    line: int
    col: int
    message: str


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    error: ParseError | None = None
    lines: int = 0
    fixed: int = 0  # findings removed by --fix in this file


def char_col(line: bytes, byte_offset: int) -> int:
    """The character column of a UTF-8 byte offset in ``line``."""
    if line.isascii():
        return byte_offset
    return len(line[:byte_offset].decode("utf-8", "replace"))
