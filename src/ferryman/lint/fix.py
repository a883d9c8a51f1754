"""``--fix``: the rewrites that cannot change what a working program does, made with libcst so that
every comment, blank line and quote style stays as it was.

The edits (:class:`~ferryman.lint.result.Edit`), by how they are applied:

- ``--fix`` (safe): ``max_tokens`` → ``max_completion_tokens`` on a reasoning model's chat call
  (FM201; the call fails with a 400 otherwise) and ``max_tokens`` → ``max_output_tokens`` in a
  Responses call (FM202; a TypeError otherwise); adding ``stream_options={"include_usage": True}``
  (FM701) only where the code reading the stream provably copes with the extra last chunk, whose
  ``choices`` is empty;
- ``--unsafe-fixes``: FM701 everywhere else (code doing ``chunk.choices[0]`` would then raise
  IndexError on the usage chunk: guard it with ``if chunk.choices:``);
- ``--fix-models``: a retiring model literal → its successor (FM101/FM102). Never implied by
  ``--fix``: a successor can be a different kind of model (a reasoning model rejects
  ``temperature``), which the next round then reports.

No ``timeout=`` is ever added (FM501): no value is right for every call.

Each round lints the rewritten source again, so fixes that enable others (a model swapped to a
reasoning one, whose ``max_tokens`` must then be renamed) settle in a few rounds; a rewrite that
would not parse is never written.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from ferryman.lint.config import Options
from ferryman.lint.engine import lint_source
from ferryman.lint.result import Edit, FileResult, ParseError

ROUNDS = 4


class _Apply(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, edits: Collection[Edit]) -> None:
        super().__init__()
        self.edits = {(e.kind, e.line, e.col): e for e in edits}
        self.applied: set[Edit] = set()

    def _find(self, kind: str, node: cst.CSTNode) -> Edit | None:
        start = self.get_metadata(PositionProvider, node).start
        return self.edits.get((kind, start.line, start.column))

    def leave_Arg(self, original_node: cst.Arg, updated_node: cst.Arg) -> cst.Arg:
        edit = self._find("rename", original_node)
        if edit is None or original_node.keyword is None or original_node.keyword.value != edit.old:
            return updated_node
        self.applied.add(edit)
        return updated_node.with_changes(keyword=cst.Name(edit.new))

    def leave_SimpleString(self, original_node: cst.SimpleString, updated_node: cst.SimpleString) -> cst.SimpleString:
        edit = self._find("replace", original_node)
        if edit is None:
            return updated_node
        prefix, quote = original_node.prefix, original_node.quote
        inner = original_node.value[len(prefix) + len(quote) : -len(quote)]
        if inner != edit.old:
            return updated_node
        self.applied.add(edit)
        return updated_node.with_changes(value=f"{prefix}{quote}{edit.new}{quote}")

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        for index, arg in enumerate(original_node.args):
            edit = self._find("add", arg)
            if edit is None or arg.keyword is None or arg.keyword.value != edit.old:
                continue
            self.applied.add(edit)
            return updated_node.with_changes(args=_insert_after(list(updated_node.args), index, edit.new))
        return updated_node


def _insert_after(args: list[cst.Arg], index: int, text: str) -> list[cst.Arg]:
    """``args`` with the argument ``text`` after ``args[index]``, spaced like its neighbours (a
    multi-line call stays one argument a line, a trailing comma stays trailing)."""
    parsed = cst.parse_expression(f"f({text})")
    assert isinstance(parsed, cst.Call)
    new = parsed.args[0]
    anchor = args[index]
    if index < len(args) - 1:
        new = new.with_changes(comma=anchor.comma)
    else:
        between: cst.Comma | None = None
        if index > 0 and isinstance(args[index - 1].comma, cst.Comma):
            between = args[index - 1].comma  # type: ignore[assignment]
        if between is None:
            between = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        new = new.with_changes(comma=anchor.comma, whitespace_after_arg=anchor.whitespace_after_arg)
        anchor = anchor.with_changes(comma=between, whitespace_after_arg=cst.SimpleWhitespace(""))
    return [*args[:index], anchor, new, *args[index + 1 :]]


def apply(source: bytes, edits: Collection[Edit]) -> tuple[bytes, int]:
    """``source`` with ``edits`` made, and how many were (an edit whose node is gone is skipped)."""
    module = cst.parse_module(source)
    transformer = _Apply(edits)
    fixed = MetadataWrapper(module).visit(transformer)
    return fixed.bytes, len(transformer.applied)


@dataclass
class Fixed:
    result: FileResult  # the findings left after fixing
    before: bytes
    after: bytes

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        old = self.before.decode("utf-8", "replace").splitlines(keepends=True)
        new = self.after.decode("utf-8", "replace").splitlines(keepends=True)
        path = self.result.path
        shown = path.lstrip("/")
        return "".join(difflib.unified_diff(old, new, f"a/{shown}", f"b/{shown}"))


def fix_source(source: bytes, path: str, options: Options, safeties: Collection[str]) -> Fixed:
    """Fix what ``safeties`` ("safe", "unsafe", "models") allow, in rounds, and lint what is left."""
    result = lint_source(source, path, options)
    current, fixed = source, 0
    for _ in range(ROUNDS):
        edits = [f.edit for f in result.findings if f.edit is not None and f.edit.safety in safeties]
        if not edits or result.error is not None:
            break
        try:
            rewritten, applied = apply(current, edits)
        except cst.ParserSyntaxError:
            break
        if not applied or rewritten == current:
            break
        again = lint_source(rewritten, path, options)
        if again.error is not None:  # never write what does not parse
            break
        current, result = rewritten, again
        fixed += applied
    result.fixed = fixed
    return Fixed(result, source, current)


def fix_file(path: str, options: Options, safeties: Collection[str], write: bool = True) -> Fixed:
    try:
        source = Path(path).read_bytes()
    except OSError as error:
        failed = FileResult(path, error=ParseError(path, 1, 0, f"could not read: {error.strerror or error}"))
        return Fixed(failed, b"", b"")
    done = fix_source(source, path, options, safeties)
    if write and done.changed:
        Path(path).write_bytes(done.after)
    return done
