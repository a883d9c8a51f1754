"""Which calls are OpenAI SDK calls, which endpoint each reaches, and which client makes it.

A call is recognised by its shape, the attribute chain the SDK's resources form:
``<client>.chat.completions.create(...)``, ``<client>.responses.stream(...)``, with
``with_raw_response``/``with_streaming_response`` and ``beta`` anywhere in between. The shape is
enough for the inference endpoints (compatible SDKs use it too, and the rules hold for them). For
resources whose names are common words (``videos``, ``evals``) the thing before them must look like
an OpenAI client: bound to ``OpenAI(...)``, named ``*openai*``, or a ``client``-like name in a file
that imports ``openai``/``ferryman``/``agents``.

A client is followed back to where it was built when the source says so plainly (a name or a
``self.x`` attribute assigned once from ``OpenAI(...)``, ``ferryman.OpenAI(...)``, a parameter
annotated ``OpenAI``, ``.with_options(...)``), which tells the rules its kind and ``max_retries``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache

from ferryman import catalogue
from ferryman.lint.scan import Facts, Scope, Site, dotted
from ferryman.lint.values import Resolver

STRIP = frozenset({"with_raw_response", "with_streaming_response"})
CHAT, RESPONSES, COMPLETIONS = "/v1/chat/completions", "/v1/responses", "/v1/completions"
# (resource chain, endpoint, the method always streams)
SUFFIXES: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("chat", "completions", "create"), CHAT, False),
    (("chat", "completions", "parse"), CHAT, False),
    (("chat", "completions", "stream"), CHAT, True),
    (("responses", "create"), RESPONSES, False),
    (("responses", "parse"), RESPONSES, False),
    (("responses", "stream"), RESPONSES, True),
    (("completions", "create"), COMPLETIONS, False),
    (("embeddings", "create"), "/v1/embeddings", False),
    (("moderations", "create"), "/v1/moderations", False),
    (("images", "generate"), "/v1/images/generations", False),
    (("images", "edit"), "/v1/images/edits", False),
    (("audio", "speech", "create"), "/v1/audio/speech", False),
    (("audio", "transcriptions", "create"), "/v1/audio/transcriptions", False),
    (("audio", "translations", "create"), "/v1/audio/translations", False),
)
_KINDS = {"OpenAI": "sdk", "AsyncOpenAI": "sdk", "AzureOpenAI": "azure", "AsyncAzureOpenAI": "azure"}
_FERRYMAN = {"ferryman.OpenAI": "ferryman", "ferryman.AsyncOpenAI": "ferryman"}
_GENERIC_CLIENT_NAMES = frozenset({"client", "aclient", "async_client", "sync_client", "oai", "api"})
# SDK method -> (HTTP method, on the collection or on one item); any other verb is POST .../{id}/<verb>.
_ROUTES = {"list": ("GET", False), "retrieve": ("GET", True), "content": ("GET", True), "poll": ("GET", True),
           "update": ("POST", True), "delete": ("DELETE", True)}  # fmt: skip


@dataclass(frozen=True)
class Client:
    """How a client was built, as far as the source tells."""

    kind: str  # "sdk" | "azure" | "ferryman" (ferryman.OpenAI) | "unknown"
    max_retries: int | None  # as given; None when not given (the kind's default) or not known
    retries_given: bool  # max_retries= was passed (with a value known or not)
    node: ast.Call | None  # the constructor call, when found
    pipeline: bool = False  # calls go through Ferryman's pipeline (its kind, or http_client=ferryman.http_client())

    @property
    def sdk_retries(self) -> int | None:
        """The SDK's own retries: as given, else 0 for ``ferryman.OpenAI()`` and 2 for the SDK's clients."""
        if self.retries_given:
            return self.max_retries
        return 0 if self.kind == "ferryman" else 2


UNKNOWN_CLIENT = Client("unknown", None, False, None)
PIPELINE_HTTP = ("ferryman.http_client", "ferryman.async_http_client")


@dataclass(frozen=True)
class SdkCall:
    site: Site
    endpoint: str
    shape: str  # the resource chain, "chat.completions.create"
    streams: bool  # the method always streams (``.stream(...)``)
    client_expr: ast.expr  # what the resource chain hangs off (``client``, ``self._client``)

    @property
    def node(self) -> ast.Call:
        node: ast.Call = self.site.node
        return node

    @property
    def label(self) -> str:
        return self.shape


@cache
def _retiring_heads() -> frozenset[str]:
    """The first path segments of the APIs that retire (``assistants``, ``evals``...), from the catalogue."""
    heads = set()
    for api in catalogue.api_retirements():
        for entry in api.paths:
            path = entry.rpartition(" ")[2]
            heads.update(path.removeprefix("/v1/").split("/")[:1])
    return frozenset(heads)


def chain(func: ast.expr) -> tuple[list[ast.Attribute], ast.expr]:
    """The attribute nodes of ``a.b.c`` (outermost last) and the root ``a``."""
    nodes: list[ast.Attribute] = []
    while isinstance(func, ast.Attribute):
        nodes.append(func)
        func = func.value
    nodes.reverse()
    return nodes, func


def strip_client(expr: ast.expr) -> ast.expr:
    """``client.beta`` / ``client.with_raw_response`` → ``client``."""
    while isinstance(expr, ast.Attribute) and (expr.attr in STRIP or expr.attr == "beta"):
        expr = expr.value
    return expr


def sdk_call(site: Site) -> SdkCall | None:
    """The endpoint a call reaches when it has the shape of an SDK inference call, else None."""
    func = site.node.func
    if not isinstance(func, ast.Attribute):
        return None
    nodes = [n for n in chain(func)[0] if n.attr not in STRIP]
    names = [n.attr for n in nodes]
    for suffix, endpoint, streams in SUFFIXES:
        size = len(suffix)
        if len(names) < size or tuple(names[-size:]) != suffix:
            continue
        if endpoint == COMPLETIONS and len(names) > size and names[-size - 1] == "chat":
            continue
        return SdkCall(site, endpoint, ".".join(suffix), streams, strip_client(nodes[-size].value))
    return None


class Clients:
    def __init__(self, facts: Facts, resolver: Resolver) -> None:
        self.facts = facts
        self.resolver = resolver
        self.uses_openai = facts.imports_any("openai", "ferryman", "agents", "langchain_openai")

    def constructor(self, call: ast.Call) -> str | None:
        """The kind of client ``call`` builds ("sdk", "azure", "ferryman"), or None."""
        qualname = self.facts.qualname(call.func)
        if qualname is None:
            return None
        if qualname in _FERRYMAN:
            return _FERRYMAN[qualname]
        head, _, last = qualname.rpartition(".")
        if head == "openai" or head.startswith("openai."):
            return _KINDS.get(last)
        return None

    def of(self, expr: ast.expr, scope: Scope, depth: int = 0) -> Client:
        """The client ``expr`` evaluates to, as far as the source tells (:data:`UNKNOWN_CLIENT`)."""
        if depth > 6:
            return UNKNOWN_CLIENT
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in ("with_options", "copy"):
                base = self.of(func.value, scope, depth + 1)
                return self._retries(base, expr, scope)
            kind = self.constructor(expr)
            if kind is None:
                return UNKNOWN_CLIENT
            pipeline = kind == "ferryman" or self.pipeline_http(expr, scope)
            return self._retries(Client(kind, None, False, expr, pipeline), expr, scope)
        if isinstance(expr, ast.Name):
            if self.facts.qualname(expr) == "openai":
                return Client("sdk", None, False, None)  # the module-level client
            found = scope.lookup(expr.id)
            if found is None:
                return UNKNOWN_CLIENT
            where, value = found
            if value is not None:
                return self.of(value, where, depth + 1)
            annotation = where.annotations.get(expr.id)
            if annotation is not None:
                return self._annotated(annotation)
            return UNKNOWN_CLIENT
        key = dotted(expr)
        if key is not None and "." in key:
            values = self.facts.attr_values.get(key, [])
            if len(values) == 1:
                return self.of(values[0], self.facts.module, depth + 1)
        return UNKNOWN_CLIENT

    def _annotated(self, annotation: ast.expr) -> Client:
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return UNKNOWN_CLIENT
        qualname = self.facts.qualname(annotation)
        if qualname is None:
            return UNKNOWN_CLIENT
        last = qualname.rpartition(".")[2]
        if qualname.startswith("openai") and last in _KINDS:
            return Client(_KINDS[last], None, False, None)
        return UNKNOWN_CLIENT

    def _retries(self, base: Client, call: ast.Call, scope: Scope) -> Client:
        for keyword in call.keywords:
            if keyword.arg == "max_retries":
                value = self.resolver.integer(keyword.value, scope)
                return Client(base.kind, value, True, base.node, base.pipeline)
            if keyword.arg is None:  # **options may hold max_retries
                return Client(base.kind, None, True, base.node, base.pipeline)
        return base

    def pipeline_http(self, call: ast.Call, scope: Scope) -> bool:
        """``http_client=ferryman.http_client(...)`` (directly or through a name assigned once)."""
        for keyword in call.keywords:
            if keyword.arg != "http_client":
                continue
            value: ast.expr | None = keyword.value
            if isinstance(value, ast.Name):
                found = scope.lookup(value.id)
                value = found[1] if found else None
            return isinstance(value, ast.Call) and self.facts.qualname(value.func) in PIPELINE_HTTP
        return False

    def clientish(self, expr: ast.expr, scope: Scope) -> bool:
        """Whether ``expr`` looks like an OpenAI client (see the module docstring)."""
        if self.of(expr, scope).kind != "unknown":
            return True
        name = expr.attr if isinstance(expr, ast.Attribute) else expr.id if isinstance(expr, ast.Name) else None
        if name is None:
            return False
        lowered = name.lower().lstrip("_")
        if "openai" in lowered:
            return True
        return self.uses_openai and (lowered in _GENERIC_CLIENT_NAMES or lowered.endswith("_client"))

    def api_path(self, site: Site) -> tuple[str, str, str] | None:
        """``(HTTP method, /v1/path, dotted SDK call)`` for a call on an SDK resource, else None."""
        func = site.node.func
        if not isinstance(func, ast.Attribute):
            return None
        nodes, _root = chain(func)
        nodes = [n for n in nodes if n.attr not in STRIP]
        names = [n.attr for n in nodes]
        if len(names) < 2:
            return None
        verb, resources = names[-1], names[:-1]
        if not _retiring_heads().intersection(resources):
            return None
        start = None
        if "beta" in resources:
            start = resources.index("beta") + 1
        elif "fine_tuning" in resources:
            start = resources.index("fine_tuning")
        else:
            for index in range(len(resources)):
                if self.clientish(nodes[index].value, site.scope):
                    start = index
                    break
        if start is None or start >= len(resources):
            return None
        rest = resources[start:]
        path = "/v1/" + "/".join(rest)
        if verb.startswith("create"):
            method = "POST"
        elif verb in _ROUTES:
            method, on_item = _ROUTES[verb]
            path += "/{id}" if on_item else ""
        else:
            method, path = "POST", f"{path}/{{id}}/{verb}"
        return method, path, ".".join([*rest, verb])
