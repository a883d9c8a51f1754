"""The rules about how a call waits and fails: clients without a timeout (FM501), retries that
multiply (FM502), calls with no error handling (FM801, opt-in).

The SDK's defaults (``openai/_constants.py``): ``timeout=600`` s per attempt and ``max_retries=2``,
so a client built bare can hold a caller for 3 x 600 s. An outer retry (tenacity's ``@retry``,
backoff's ``@on_exception``, a ``for attempt in range(n)`` or ``while True`` loop around a
``try``) multiplies the SDK's attempts: ``(2+1)x5 = 15`` calls, and as many waits, for one failure.
A Ferryman client (``ferryman.OpenAI()``) turns the SDK's retries off and retries in its pipeline
instead, within a deadline; under an outer retry its attempts multiply just the same.

Limits, on purpose: everything is decided inside one function. A caller's ``try`` is not seen (so
FM801 is opt-in), nor is a client re-wrapped later with ``.with_options(timeout=...)``, nor a retry
decorator other than tenacity's and backoff's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache

from ferryman.lint.calls import SdkCall
from ferryman.lint.context import Context
from ferryman.lint.scan import Site, dotted

SDK_TIMEOUT_S = 600  # openai/_constants.py DEFAULT_TIMEOUT
SDK_MAX_RETRIES = 2  # openai/_constants.py DEFAULT_MAX_RETRIES
HANDLED = frozenset({"RateLimitError", "APIError", "APIStatusError", "OpenAIError", "Exception", "BaseException"})
_TENACITY_LOOPS = ("tenacity.Retrying", "tenacity.AsyncRetrying")
TIMES = "\u00d7"  # the multiplication sign, as in "(2+1)x5 = 15"


@dataclass(frozen=True)
class Outer:
    """An outer retry: what it is and how many attempts it makes (None: unbounded; 0: bounded by
    time or by something not known)."""

    label: str
    attempts: int | None
    tenacity: bool = False  # a retry decorator or a tenacity loop: errors count as handled


def run(cx: Context) -> None:
    if cx.on("FM501"):
        timeouts(cx)
    if cx.on("FM502"):
        doubled(cx)
    if cx.on("FM502", "FM801"):
        for call in cx.sdk_calls:
            outer = _outer_retries(cx, call.site)
            if cx.on("FM502") and outer:
                multiply(cx, call, outer)
            if cx.on("FM801"):
                unhandled(cx, call, outer)


# -- FM501 -------------------------------------------------------------------------------------


def timeouts(cx: Context) -> None:
    facts = cx.facts
    rewrapped = set()
    for site in facts.calls:  # OpenAI().with_options(timeout=...)
        func = site.node.func
        wraps = isinstance(func, ast.Attribute) and func.attr in ("with_options", "copy")
        if wraps and any(k.arg == "timeout" for k in site.node.keywords):
            rewrapped.add(id(func.value))
    for site in facts.calls:
        call: ast.Call = site.node
        kind = cx.clients.constructor(call)
        if kind not in ("sdk", "azure") or id(call) in rewrapped:
            continue
        given = {k.arg: k for k in call.keywords}
        if None in given or "http_client" in given:  # **options, or a client that brings its own timeout
            continue
        name = dotted(call.func) or "OpenAI"
        if "timeout" in given:
            value = cx.resolver.value(given["timeout"].value, site.scope)
            if value is not None and value.value is None:
                cx.add("FM501", given["timeout"], f"{name}(timeout=None) never times out: pass a number of seconds")
            continue
        retries = cx.resolver.integer(given["max_retries"].value, site.scope) if "max_retries" in given else None
        retries = SDK_MAX_RETRIES if retries is None and "max_retries" not in given else retries
        total = f", {SDK_TIMEOUT_S * (retries + 1)} s with max_retries={retries}" if retries else ""
        cx.add("FM501", call, f"{name}() has no timeout: each attempt may wait {SDK_TIMEOUT_S} s{total}; "
               "pass timeout= (seconds)")  # fmt: skip


def doubled(cx: Context) -> None:
    """``openai.OpenAI(http_client=ferryman.http_client())`` keeping the SDK's retries: both retry."""
    for site in cx.facts.calls:
        call: ast.Call = site.node
        if cx.clients.constructor(call) not in ("sdk", "azure") or not cx.clients.pipeline_http(call, site.scope):
            continue
        client = cx.clients.of(call, site.scope)
        sdk = client.sdk_retries
        if sdk == 0 or (client.retries_given and sdk is None):
            continue
        pipeline = _pipeline_attempts()
        total = f" = {pipeline * (sdk + 1)}" if pipeline and sdk is not None else ""
        cx.add("FM502", call, f"retries multiply: up to {pipeline or 'retry.max_attempts'}{TIMES}({sdk}+1){total} "
               f"attempts per call (Ferryman's pipeline retries, and the SDK's max_retries={sdk}); "
               "pass max_retries=0, or build the client with ferryman.OpenAI()")  # fmt: skip


# -- outer retries -----------------------------------------------------------------------------


def _outer_retries(cx: Context, site: Site) -> list[Outer]:
    found: list[Outer] = []
    func = site.ctx.func
    if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for decorator in func.decorator_list:
            outer = _decorator(cx, decorator, site)
            if outer is not None:
                found.append(outer)
    frames = site.ctx.frames
    for index, frame in enumerate(frames):
        if isinstance(frame, (ast.For, ast.AsyncFor, ast.While)):
            outer = _loop(cx, frame, frames[index + 1 :], site)
            if outer is not None:
                found.append(outer)
    return found


def _decorator(cx: Context, decorator: ast.expr, site: Site) -> Outer | None:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    qualname = cx.facts.qualname(target) or ""
    keywords = {k.arg: k.value for k in decorator.keywords} if isinstance(decorator, ast.Call) else {}
    if qualname == "tenacity.retry" or (qualname.startswith("tenacity.") and qualname.endswith(".retry")):
        attempts, label = _stop(cx, keywords.get("stop"), site)
        return Outer(f"@retry({label})", attempts, tenacity=True)
    if qualname in ("backoff.on_exception", "backoff.on_predicate"):
        tries = keywords.get("max_tries")
        if tries is not None:
            count = cx.resolver.integer(tries, site.scope)
            return Outer(f"@{qualname.partition('.')[2]}(max_tries={count if count is not None else '…'})",
                         count if count is not None else 0, tenacity=True)  # fmt: skip
        if "max_time" in keywords:
            return Outer(f"@{qualname.partition('.')[2]}(max_time=…)", 0, tenacity=True)
        return Outer(f"@{qualname.partition('.')[2]}() without max_tries", None, tenacity=True)
    return None


def _stop(cx: Context, stop: ast.expr | None, site: Site) -> tuple[int | None, str]:
    """Attempts a tenacity ``stop=`` allows (None: never stops; 0: time-bounded or not known)."""
    if stop is None:
        return None, "no stop"
    if isinstance(stop, ast.BinOp) and isinstance(stop.op, (ast.BitOr, ast.BitAnd)):
        left, left_label = _stop(cx, stop.left, site)
        right, right_label = _stop(cx, stop.right, site)
        known = [n for n in (left, right) if n]
        if isinstance(stop.op, ast.BitOr):  # stops at whichever comes first
            attempts = min(known) if known else (0 if 0 in (left, right) else None)
        else:
            attempts = max(known) if known and None not in (left, right) and 0 not in (left, right) else 0
        return attempts, f"{left_label} {'|' if isinstance(stop.op, ast.BitOr) else '&'} {right_label}"
    if isinstance(stop, ast.Call):
        name = (cx.facts.qualname(stop.func) or dotted(stop.func) or "").rpartition(".")[2]
        if name == "stop_after_attempt" and stop.args:
            count = cx.resolver.integer(stop.args[0], site.scope)
            return (count if count is not None else 0), f"stop_after_attempt({count if count is not None else '…'})"
        if name in ("stop_any", "stop_all"):
            parts = [_stop(cx, arg, site) for arg in stop.args]
            known = [n for n, _ in parts if n]
            attempts = (min(known) if known else 0) if name == "stop_any" else 0
            return attempts, f"{name}(…)"
        return 0, f"{name}(…)"
    if (cx.facts.qualname(stop) or "").endswith("stop_never"):
        return None, "stop_never"
    return 0, "stop=…"


def _loop(cx: Context, loop: ast.AST, inner: tuple[ast.AST, ...], site: Site) -> Outer | None:
    """A retry loop around the call: ``for _ in range(n)`` or ``while ...`` with a ``try`` inside whose
    handler does not re-raise, and a ``break``/``return`` for success; or tenacity's ``Retrying``."""
    if isinstance(loop, (ast.For, ast.AsyncFor)) and isinstance(loop.iter, ast.Call):
        qualname = cx.facts.qualname(loop.iter.func) or ""
        if qualname in _TENACITY_LOOPS:
            keywords = {k.arg: k.value for k in loop.iter.keywords}
            attempts, label = _stop(cx, keywords.get("stop"), site)
            return Outer(f"{qualname.rpartition('.')[2]}({label})", attempts, tenacity=True)
    tries = [f for f in inner if isinstance(f, ast.Try) and any(_swallows(h) for h in f.handlers)]
    if not tries or not _exits_on_success(loop, tries):
        return None
    if isinstance(loop, (ast.For, ast.AsyncFor)):
        call = loop.iter
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "range"):
            return None
        bounds = [cx.resolver.integer(arg, site.scope) for arg in call.args]
        count = None if None in bounds or not bounds else (bounds[0] if len(bounds) == 1 else len(range(*bounds)))  # type: ignore[arg-type]
        return Outer(f"a loop over range({', '.join('…' if b is None else str(b) for b in bounds)})",
                     count if count is not None else 0)  # fmt: skip
    assert isinstance(loop, ast.While)
    test = loop.test
    if isinstance(test, ast.Constant) and test.value is True:
        return Outer("a while True loop", None)
    if isinstance(test, ast.Compare) and len(test.comparators) == 1:
        limit = cx.resolver.integer(test.comparators[0], site.scope)
        op = test.ops[0]
        if limit is not None and isinstance(op, (ast.Lt, ast.LtE)):
            return Outer("a while loop", limit + (1 if isinstance(op, ast.LtE) else 0))
    return Outer("a while loop", 0)


def _swallows(handler: ast.ExceptHandler) -> bool:
    return bool(handler.body) and not isinstance(handler.body[-1], ast.Raise)


def _exits_on_success(loop: ast.AST, tries: list[ast.Try]) -> bool:
    """A ``break`` or ``return`` in the loop outside the handlers: the loop ends when the call works
    (a loop that breaks only in its ``except``, "call until refused", is no retry loop)."""
    in_handlers = {id(node) for t in tries for h in t.handlers for node in ast.walk(h)}
    for stmt in getattr(loop, "body", []):
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Break, ast.Return)) and id(node) not in in_handlers:
                return True
    return False


@cache
def _pipeline_attempts() -> int | None:
    """Ferryman's own default ``retry.max_attempts`` (read from the settings model, not copied)."""
    try:
        from ferryman.config import RetrySettings

        return int(RetrySettings.model_fields["max_attempts"].default)
    except Exception:  # settings not importable here: the message names the setting instead
        return None


def multiply(cx: Context, call: SdkCall, outer: list[Outer]) -> None:
    client = cx.clients.of(call.client_expr, call.site.scope)
    if client.retries_given and client.max_retries is None:
        return  # max_retries= given, value not known
    if client.pipeline:
        sdk = client.sdk_retries or 0
        pipeline = _pipeline_attempts()
        inner_label = f"{pipeline if pipeline else 'retry.max_attempts'}" + (f"{TIMES}({sdk}+1)" if sdk else "")
        inner = (pipeline or 0) * (sdk + 1)
        why = "Ferryman's pipeline retries" + (f", and the SDK's max_retries={sdk}" if sdk else " (the SDK's are off)")
    else:
        retries = client.max_retries if client.retries_given else SDK_MAX_RETRIES
        assert retries is not None
        if retries == 0:
            return
        inner, inner_label = retries + 1, f"({retries}+1)"
        why = f"max_retries={retries}" + ("" if client.retries_given else ", the SDK's default")
    counts = [o.attempts for o in outer]
    outer_label = TIMES.join("unbounded" if n is None else ("N" if n == 0 else str(n)) for n in counts)
    if None in counts:
        total = "unbounded"
    elif 0 in counts or not inner:
        total = "many"
    else:
        product = inner
        for n in counts:
            product *= n or 1
        total = str(product)
    around = " and ".join(o.label for o in outer)
    cx.add("FM502", call.node, f"retries multiply: up to {inner_label}{TIMES}{outer_label} = {total} attempts per call "
           f"({why}, inside {around}); set max_retries=0 on this client, or drop the outer retry")  # fmt: skip


# -- FM801 -------------------------------------------------------------------------------------


def unhandled(cx: Context, call: SdkCall, outer: list[Outer]) -> None:
    func = call.site.ctx.func
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or any(o.tenacity for o in outer):
        return
    for frame in call.site.ctx.frames:
        if isinstance(frame, ast.Try) and any(_catches(cx, h) for h in frame.handlers):
            return
    cx.add("FM801", call.node, f"{call.label}() in {func.name}() has no handler for rate-limit or API errors: "
           "catch openai.RateLimitError / openai.APIError, or retry with tenacity or backoff")  # fmt: skip


def _catches(cx: Context, handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for kind in kinds:
        name = cx.facts.qualname(kind) or dotted(kind) or ""
        if name.rpartition(".")[2] in HANDLED:
            return True
    return False
