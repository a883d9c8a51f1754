"""Simple constant propagation: what value an expression has when the source says so plainly.

``MODEL = "o3"`` then ``model=MODEL``; ``MODELS = {"fast": "gpt-4o-mini"}`` then
``model=MODELS["fast"]``; ``params = {"model": "o3", "max_tokens": 100}`` then ``create(**params)``;
``self.model = "o3"`` (the only assignment to ``self.model`` in the module) then ``model=self.model``.
A name resolves when its scope (function, then enclosing functions, then the module) stores it
exactly once, from a literal, a dict of literals or another such name. Anything else (a parameter,
a name stored twice, a call's result, an f-string) is unknown, and a rule that needs the value stays
silent rather than guess.

:data:`UNKNOWN` stands for a value that is present but not known. It compares equal to everything,
so a check of the form "is it the default?" (``ferryman.catalogue.rejected_params``) gives an unknown
value the benefit of the doubt, while a check of presence ("is ``max_tokens`` there?") still sees it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from ferryman.lint.scan import Facts, Scope, dotted

_DEPTH = 8  # how many names deep a value is followed (a = b, b = c, ...)


class _Unknown:
    """Present, value not known: equal to anything (see the module docstring)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "…"

    __str__ = __repr__


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Val:
    """A known value and the literal it came from (a ``Constant`` or ``Dict`` node, or None)."""

    value: Any  # str | int | float | bool | None | dict[str, Val]
    node: ast.AST | None


@dataclass
class Body:
    """A call's keyword arguments: name → known :class:`Val`, or :data:`UNKNOWN`; ``open`` when a
    ``**mapping`` could not be read (more keywords may be there)."""

    args: dict[str, Any]
    nodes: dict[str, ast.keyword]  # the keyword node written in the call, when there is one
    open: bool

    def plain(self) -> dict[str, Any]:
        """Python values, :data:`UNKNOWN` where a value is not known (dicts one level deep)."""
        return {k: plain(v) for k, v in self.args.items()}


def plain(found: Any) -> Any:
    if not isinstance(found, Val):
        return UNKNOWN
    if isinstance(found.value, dict):
        return {k: plain(v) for k, v in found.value.items()}
    return found.value


class Resolver:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def value(self, expr: ast.AST | None, scope: Scope, depth: int = 0) -> Val | None:
        """The value of ``expr`` when plainly known, else None."""
        if expr is None or depth > _DEPTH:
            return None
        kind = type(expr)
        if kind is ast.Constant:
            return Val(expr.value, expr)  # type: ignore[attr-defined]
        if kind is ast.Name:
            found = scope.lookup(expr.id)  # type: ignore[attr-defined]
            if found is None or found[1] is None:
                return None
            where, value = found
            return self.value(value, where, depth + 1)
        if kind is ast.Dict:
            return self._dict(expr, scope, depth)  # type: ignore[arg-type]
        if kind is ast.Subscript:
            container = self.value(expr.value, scope, depth + 1)  # type: ignore[attr-defined]
            key = self.value(expr.slice, scope, depth + 1)  # type: ignore[attr-defined]
            if container is None or key is None or not isinstance(container.value, dict):
                return None
            item = container.value.get(key.value) if isinstance(key.value, str) else None
            return item if isinstance(item, Val) else None
        if kind is ast.Attribute:  # self.model, assigned once in the module
            name = dotted(expr)
            values = self.facts.attr_values.get(name) if name else None
            if values is not None and len(values) == 1:
                return self.value(values[0], self.facts.module, depth + 1)
            return None
        if kind is ast.UnaryOp and isinstance(expr.op, ast.USub):  # type: ignore[attr-defined]
            inner = self.value(expr.operand, scope, depth + 1)  # type: ignore[attr-defined]
            if inner is not None and type(inner.value) in (int, float):
                return Val(-inner.value, None)
        return None

    def _dict(self, expr: ast.Dict, scope: Scope, depth: int) -> Val | None:
        out: dict[str, Any] = {}
        for key, item in zip(expr.keys, expr.values, strict=True):
            if key is None:  # {**other}
                merged = self.value(item, scope, depth + 1)
                if merged is None or not isinstance(merged.value, dict):
                    return None
                out.update(merged.value)
                continue
            name = self.value(key, scope, depth + 1)
            if name is None or not isinstance(name.value, str):
                return None
            out[name.value] = self.value(item, scope, depth + 1) or UNKNOWN
        return Val(out, expr)

    def body(self, call: ast.Call, scope: Scope) -> Body:
        args: dict[str, Any] = {}
        nodes: dict[str, ast.keyword] = {}
        is_open = False
        for keyword in call.keywords:
            if keyword.arg is None:
                merged = self.value(keyword.value, scope)
                if merged is None or not isinstance(merged.value, dict):
                    is_open = True
                else:
                    args.update(merged.value)
                continue
            args[keyword.arg] = self.value(keyword.value, scope) or UNKNOWN
            nodes[keyword.arg] = keyword
        return Body(args, nodes, is_open)

    def string(self, expr: ast.AST | None, scope: Scope) -> Val | None:
        found = self.value(expr, scope)
        return found if found is not None and isinstance(found.value, str) else None

    def integer(self, expr: ast.AST | None, scope: Scope) -> int | None:
        found = self.value(expr, scope)
        if found is None or type(found.value) is not int:
            return None
        return int(found.value)
