"""One pass over a module's ``ast``: the facts the rules need, gathered without judging them.

Linting must keep up with whole repositories (the goal: the three reference code bases, ~440k lines,
in under 5 s), so the tree is walked once, iteratively (no recursion limit on deep expressions),
skipping annotations, and each node is pushed with its context: the innermost function, and the
loops and ``try`` bodies around it inside that function. The walk records:

- every call whose callee is a name or an attribute chain (classified later, when the imports and
  bindings of the whole module are known);
- bindings per scope (how often each name is stored, and the value of a single assignment), so
  :mod:`ferryman.lint.values` can propagate constants (``MODEL = "gpt-4o"`` then ``model=MODEL``);
- the imports (``alias → qualified name``), for telling ``openai.OpenAI`` from a class of the same name;
- assignments, dict literals, parameter defaults and string constants that may hold a model id or a key.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Fields never walked: annotations (no call in them matters), operators, and fields holding str/int.
_SKIP_FIELDS = frozenset({
    "ctx", "type_comment", "annotation", "returns", "type_params", "decorator_list", "op", "ops", "attr", "id",
    "name", "arg", "conversion", "kind", "is_async", "simple", "level", "module", "type_ignores", "lineno",
})  # fmt: skip
_FIELDS: dict[type, tuple[str, ...]] = {}
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_TRIES: tuple[type, ...] = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)


def _fields(kind: type) -> tuple[str, ...]:
    found = _FIELDS.get(kind)
    if found is None:
        found = _FIELDS[kind] = tuple(f for f in getattr(kind, "_fields", ()) if f not in _SKIP_FIELDS)
    return found


class Ctx(NamedTuple):
    """Where a node sits: its innermost function (None at module or class level) and, inside that
    function, the loops and ``try`` statements whose *body* holds it, outermost first."""

    func: ast.AST | None
    frames: tuple[ast.AST, ...]


@dataclass(eq=False)
class Scope:
    """A module, function, lambda or class body: the names stored in it and single-assignment values."""

    node: ast.AST
    parent: Scope | None  # the nearest enclosing scope whose names this one sees (never a class body)
    is_class: bool = False
    stores: dict[str, int] = field(default_factory=dict)
    values: dict[str, ast.expr] = field(default_factory=dict)
    annotations: dict[str, ast.expr] = field(default_factory=dict)  # parameter annotations
    globals: set[str] = field(default_factory=set)

    def store(self, name: str, module: Scope) -> None:
        target = module if name in self.globals else self
        target.stores[name] = target.stores.get(name, 0) + 1

    def lookup(self, name: str) -> tuple[Scope, ast.expr | None] | None:
        """The scope that binds ``name`` as seen from here and its value if stored exactly once."""
        scope: Scope | None = self
        while scope is not None:
            count = scope.stores.get(name, 0)
            if count:
                return scope, (scope.values.get(name) if count == 1 else None)
            scope = scope.parent
        return None


class Site(NamedTuple):
    """An expression somewhere that is worth a look: its node, its context and its scope."""

    node: Any
    ctx: Ctx
    scope: Scope


@dataclass(eq=False)
class Facts:
    tree: ast.Module
    module: Scope
    imports: dict[str, str] = field(default_factory=dict)  # local name -> qualified name
    calls: list[Site] = field(default_factory=list)
    assigns: list[Site] = field(default_factory=list)  # Assign / AnnAssign with a value
    dicts: list[Site] = field(default_factory=list)  # dict literals with a str key
    defaults: list[tuple[str, Site]] = field(default_factory=list)  # (parameter name, default)
    strings: list[Site] = field(default_factory=list)  # str constants that look like keys or bearer tokens
    handlers: list[Site] = field(default_factory=list)  # except clauses with a type
    import_nodes: list[ast.stmt] = field(default_factory=list)
    attr_values: dict[str, list[ast.expr]] = field(default_factory=dict)  # "self.client" -> assigned values

    def qualname(self, node: ast.AST) -> str | None:
        """``openai.OpenAI`` for ``OpenAI`` imported from openai, ``oa.Completion`` with ``import openai
        as oa``...; None for a name that is not an import."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.imports.get(node.id)
        if base is None:
            return None
        parts.append(base)
        return ".".join(reversed(parts))

    def imports_any(self, *prefixes: str) -> bool:
        return any(q == p or q.startswith(p + ".") for q in self.imports.values() for p in prefixes)


def dotted(node: ast.AST) -> str | None:
    """``self.client`` for an attribute chain of plain names, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _key_like(text: str) -> bool:
    return text.startswith(("sk-", "fm-", "Bearer ", "bearer "))


def scan(tree: ast.Module) -> Facts:
    """Walk ``tree`` once and return its :class:`Facts`."""
    module = Scope(tree, None)
    facts = Facts(tree, module)
    calls, assigns, dicts, strings = facts.calls, facts.assigns, facts.dicts, facts.strings
    stack: list[tuple[ast.AST, Ctx, Scope]] = [(tree, Ctx(None, ()), module)]
    push = stack.append
    pop = stack.pop
    Name, Call, Constant, Attribute = ast.Name, ast.Call, ast.Constant, ast.Attribute
    Assign, AnnAssign, Dict, AST = ast.Assign, ast.AnnAssign, ast.Dict, ast.AST

    fields = _FIELDS
    load = ast.Load

    def children(node: ast.AST, ctx: Ctx, scope: Scope) -> None:
        """Push the children of ``node``; names and constants (most of a tree) are handled here, unpushed."""
        kind = node.__class__
        for name in fields.get(kind) or _fields(kind):
            value = getattr(node, name)
            items = value if value.__class__ is list else (value,)
            for item in items:
                cls = item.__class__
                if cls is Name:
                    if item.ctx.__class__ is not load:
                        scope.store(item.id, module)
                elif cls is Constant:
                    text = item.value
                    if text.__class__ is str and _key_like(text):
                        strings.append(Site(item, ctx, scope))
                elif isinstance(item, AST):
                    push((item, ctx, scope))

    while stack:
        node, ctx, scope = pop()
        kind = type(node)
        if kind is Name:
            if type(node.ctx) is not ast.Load:  # type: ignore[attr-defined]
                scope.store(node.id, module)  # type: ignore[attr-defined]
            continue
        if kind is Constant:
            value = node.value  # type: ignore[attr-defined]
            if type(value) is str and _key_like(value):
                strings.append(Site(node, ctx, scope))
            continue
        if kind is Call:
            if isinstance(node.func, (Attribute, Name)):  # type: ignore[attr-defined]
                calls.append(Site(node, ctx, scope))
        elif kind is Assign:
            assigns.append(Site(node, ctx, scope))
            _record_assign(node.targets, node.value, scope, facts)  # type: ignore[attr-defined]
        elif kind is AnnAssign:
            if node.value is not None:  # type: ignore[attr-defined]
                assigns.append(Site(node, ctx, scope))
                _record_assign([node.target], node.value, scope, facts)  # type: ignore[attr-defined]
        elif kind is Dict:
            if any(type(k) is Constant and type(k.value) is str for k in node.keys):  # type: ignore[attr-defined]
                dicts.append(Site(node, ctx, scope))
        elif kind in _FUNCS or kind is ast.Lambda:
            _function(node, ctx, scope, facts, push)
            continue
        elif kind is ast.ClassDef:
            scope.store(node.name, module)  # type: ignore[attr-defined]
            for item in (*node.decorator_list, *node.bases, *node.keywords):  # type: ignore[attr-defined]
                push((item, ctx, scope))
            inner = Scope(node, scope if not scope.is_class else scope.parent, is_class=True)
            for stmt in node.body:  # type: ignore[attr-defined]
                push((stmt, ctx, inner))
            continue
        elif kind in _TRIES:
            inner_ctx = Ctx(ctx.func, (*ctx.frames, node))
            for stmt in node.body:  # type: ignore[attr-defined]
                push((stmt, inner_ctx, scope))
            for part in (*node.handlers, *node.orelse, *node.finalbody):  # type: ignore[attr-defined]
                push((part, ctx, scope))
            continue
        elif kind in _LOOPS:
            inner_ctx = Ctx(ctx.func, (*ctx.frames, node))
            for stmt in node.body:  # type: ignore[attr-defined]
                push((stmt, inner_ctx, scope))
            head = (node.test,) if kind is ast.While else (node.target, node.iter)  # type: ignore[attr-defined]
            for part in (*head, *node.orelse):  # type: ignore[attr-defined]
                push((part, ctx, scope))
            continue
        elif kind is ast.ExceptHandler:
            if node.name:  # type: ignore[attr-defined]
                scope.store(node.name, module)  # type: ignore[attr-defined]
            if node.type is not None:  # type: ignore[attr-defined]
                facts.handlers.append(Site(node, ctx, scope))
        elif kind is ast.Import or kind is ast.ImportFrom:
            _imports(node, scope, facts)  # type: ignore[arg-type]
            continue
        elif kind is ast.Global:
            scope.globals.update(node.names)  # type: ignore[attr-defined]
            continue
        elif kind is ast.Nonlocal:
            outer = scope.parent
            while outer is not None:  # a nonlocal name is not a constant anywhere up the chain
                for name in node.names:  # type: ignore[attr-defined]
                    outer.stores[name] = outer.stores.get(name, 0) + 2
                outer = outer.parent
            continue
        children(node, ctx, scope)
    return facts


def _record_assign(targets: list[ast.expr], value: ast.expr, scope: Scope, facts: Facts) -> None:
    for target in targets:
        if isinstance(target, ast.Name):
            scope.values[target.id] = value
        elif isinstance(target, ast.Attribute):
            key = dotted(target)
            if key is not None:
                facts.attr_values.setdefault(key, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
            _record_assign_pairs(target.elts, value.elts, scope, facts)


def _record_assign_pairs(targets: list[ast.expr], values: list[ast.expr], scope: Scope, facts: Facts) -> None:
    if len(targets) != len(values):  # a, b = *rest, c: no values to pair
        return
    for target, value in zip(targets, values, strict=True):
        _record_assign([target], value, scope, facts)


def _function(node: Any, ctx: Ctx, scope: Scope, facts: Facts, push: Any) -> None:
    """A def or lambda: decorators and defaults belong to the outside, the body to a new scope (and,
    for a def, a new context; a lambda is transparent: it usually runs where it is written)."""
    module = facts.module
    args: ast.arguments = node.args
    if not isinstance(node, ast.Lambda):
        scope.store(node.name, module)
        for item in node.decorator_list:
            push((item, ctx, scope))
    positional = [*args.posonlyargs, *args.args]
    pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
    for arg, default in pairs:
        facts.defaults.append((arg.arg, Site(default, ctx, scope)))
        push((default, ctx, scope))
    inner = Scope(node, scope if not scope.is_class else scope.parent)
    for param in (*positional, *args.kwonlyargs, args.vararg, args.kwarg):
        if param is not None:
            inner.stores[param.arg] = 1
            if param.annotation is not None:
                inner.annotations[param.arg] = param.annotation
    if isinstance(node, ast.Lambda):
        push((node.body, ctx, inner))
        return
    body_ctx = Ctx(node, ())
    for stmt in node.body:
        push((stmt, body_ctx, inner))


def _imports(node: ast.Import | ast.ImportFrom, scope: Scope, facts: Facts) -> None:
    facts.import_nodes.append(node)
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                facts.imports[alias.asname] = alias.name
                scope.store(alias.asname, facts.module)
            else:
                top = alias.name.split(".")[0]
                facts.imports[top] = top
                scope.store(top, facts.module)
        return
    if node.level or not node.module:
        for alias in node.names:
            scope.store(alias.asname or alias.name, facts.module)
        return
    for alias in node.names:
        name = alias.asname or alias.name
        facts.imports[name] = f"{node.module}.{alias.name}"
        scope.store(name, facts.module)
