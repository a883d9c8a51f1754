"""One call as it travels the pipeline: :class:`Exchange` in, :class:`Reply` out.

An exchange holds the request (method, API path, headers, body and its parsed JSON), who is
calling (:class:`Principal`), the per-call options the caller sent in ``ferryman-*`` headers,
and what the stages learn on the way (tokens, deployment, attempts, usage, cost, cache). A
reply is an HTTP answer whose body is either bytes or an async stream of bytes; stages that
need the end of a stream wrap ``Reply.stream`` and see it as the caller does.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ferryman.apipath import PathRefused, canonical, canonical_query

if TYPE_CHECKING:
    from ferryman.errors import OpenAIError
    from ferryman.upstream import Deployment

# Per-call options travel in these request headers and never reach the upstream.
CACHE_HEADER = "ferryman-cache"  # no-store | refresh
TAGS_HEADER = "ferryman-tags"  # team=a,feature=search

# In ``Exchange.notes``: the reply is a refusal Ferryman made itself (pacing's 429, a 404 for
# another key's object), not the upstream's: never retried, never held against a deployment.
FERRYMAN_MADE = "ferryman_refused"

# In ``Exchange.notes``: what a stage adds to the call's audit record, as entries of its ``tags``
# whose names start with ``@`` (``@routed_from``): no caller's tag can have such a name (see
# :func:`parse_tags`; a key's tags are letters, digits and ``_ . -``), so the record tells
# Ferryman's own notes from the caller's, with no change to the record's fields or its hash.
AUDIT_TAGS = "audit_tags"
OWN_TAG = "@"

# ``Exchange.source``: the front door a call came in by, set by the one that builds its exchange (the
# in-SDK transport, the gateway's proxy, ``ferryman run`` live, or ``run --via batch-api``'s own
# calls), so its audit record says which traffic is which without any front door importing another.
SOURCE_SDK, SOURCE_GATEWAY, SOURCE_RUN, SOURCE_RUN_BATCH_API = "sdk", "gateway", "run", "run-batch-api"

# Hop-by-hop and transport headers that a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)


@dataclass(frozen=True)
class Cap:
    """A budget that travels with the caller (a virtual key's or its team's): the budget stage
    holds it like a configured rule on the counter ``scope`` (``key:ID``, ``team:NAME``)."""

    scope: str
    period: str  # day | month
    usd: Decimal


@dataclass(frozen=True)
class Rate:
    """Requests and tokens per minute allowed to a caller (a virtual key, or its whole team)."""

    scope: str  # key:ID | team:NAME
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a virtual key (gateway), or the process itself (in-SDK). ``models``: the
    globs of the models a key may use (None: any). A virtual key's calls bill to its own
    ``billing_tags`` (its team): a caller's header adds reporting tags, never a budget scope."""

    id: str = "process"
    team: str | None = None
    user: str | None = None
    scopes: frozenset[str] = frozenset()
    caps: tuple[Cap, ...] = ()
    rates: tuple[Rate, ...] = ()
    models: tuple[str, ...] | None = None
    # The tags this caller's calls bill to (budget scopes ``tag:…``), set by who issued the key;
    # None (the process itself): the ``ferryman-tags`` header's.
    billing_tags: tuple[tuple[str, str], ...] | None = None

    def allows(self, model: str | None) -> bool:
        """Whether this caller may use ``model``: one of its globs matches, case and all, as
        OpenAI's model ids are case-sensitive (no globs: any model; no model: nothing to refuse).
        One rule here for every stage that picks a model, the gateway's intake (the model asked
        for) and the lifecycle stage (a successor it would send the call to) alike."""
        if self.models is None or model is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


# A gateway caller before (or without) a valid virtual key: what its refusals are recorded as.
ANONYMOUS = Principal(id="anonymous")


class Upload(Protocol):
    """A request body too large to hold in memory (a file upload), kept where it can be read again
    from the start for each attempt."""

    size: int

    def chunks(self) -> AsyncIterator[bytes]: ...


def merged_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw HTTP headers (ASGI's, aiohttp's) as one dict of lower-case names; a repeated header's
    values joined with ``, `` as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def parse_tags(raw: str | None) -> dict[str, str]:
    """``team=a,feature=search`` → ``{"team": "a", "feature": "search"}``, one canonical way: names
    lower-cased, the first of a repeated name kept, bad pairs (and names starting with ``@``, which
    are Ferryman's own: :data:`AUDIT_TAGS`) skipped, at most 32 tags."""
    tags: dict[str, str] = {}
    for part in (raw or "").split(",")[:256]:
        key, sep, value = part.partition("=")
        key, value = key.strip().lower()[:64], value.strip()[:256]
        if sep and key and value and not key.startswith(OWN_TAG) and key not in tags and len(tags) < 32:
            tags[key] = value
    return tags


@dataclass
class Exchange:
    method: str
    path: str  # the canonical API path below the base URL, e.g. "/chat/completions" (ferryman.apipath)
    headers: dict[str, str]  # lower-case names; no hop-by-hop, no ferryman-* headers
    body: bytes = b""
    query: str = ""
    principal: Principal = field(default_factory=Principal)
    # The body as the caller sent it (stages may rewrite ``body``), and a spooled upload's body
    # (``body`` is then empty and ``json`` holds the form's text fields).
    received: bytes = b""
    upload: Upload | None = None
    # Set by a front door that could not make the request canonical: the guard stage answers it.
    refusal: OpenAIError | None = None
    tags: dict[str, str] = field(default_factory=dict)
    cache_control: str | None = None  # "no-store" | "refresh" | None
    source: str | None = None  # SOURCE_*: the front door that built this exchange
    # Learned on the way.
    json: Any = None  # the parsed body, when it is JSON
    model: str | None = None  # the requested model (an alias until routing resolves it)
    stream: bool = False
    prompt_tokens: int | None = None
    output_cap: int | None = None
    deployment: Deployment | None = None
    attempts: int = 0
    usage: dict[str, Any] | None = None
    cost_usd: Decimal | None = None
    cache: str = "off"  # off | miss | hit | bypass | refresh
    request_id: str | None = None  # the upstream's x-request-id
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte_at: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # stage scratch space

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        query: str = "",
        principal: Principal | None = None,
    ) -> Exchange:
        """Make the path canonical (:mod:`ferryman.apipath`: ``path`` is the percent-encoded API
        path as sent; one that has no canonical form becomes ``refusal``), split Ferryman's own
        headers from the caller's and parse a JSON body."""
        refusal: OpenAIError | None = None
        try:
            path = canonical(method, path)
            query = canonical_query(method, path, query) if query else query
        except PathRefused as refused:
            refusal = refused
        clean: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower not in HOP_BY_HOP and not lower.startswith("ferryman-"):
                clean[lower] = value
        ex = cls(
            method=method.upper(),
            path=path,
            headers=clean,
            body=body,
            query=query,
            principal=principal or Principal(),
            received=body,
            refusal=refusal,
            tags=parse_tags(headers.get(TAGS_HEADER) or headers.get(TAGS_HEADER.title())),
            cache_control=(headers.get(CACHE_HEADER) or "").strip().lower() or None,
        )
        if body and not clean.get("content-type", "").lower().startswith("multipart/"):
            try:
                ex.json = orjson.loads(body)
            except orjson.JSONDecodeError:
                ex.json = None
        ex.learn_request()
        return ex

    def learn_request(self) -> None:
        """``model`` and ``stream`` from the parsed body (or a form's fields)."""
        if isinstance(self.json, dict):
            model = self.json.get("model")
            self.model = model if isinstance(model, str) else None
            stream = self.json.get("stream")
            self.stream = stream is True or (self.upload is not None and stream == "true")

    def set_json(self, value: Any) -> None:
        """Replace the body with ``value`` (a stage rewriting the request)."""
        self.json = value
        self.body = orjson.dumps(value)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # Called once when the reply is finished with (body sent, stream ended or abandoned).
    on_close: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    @classmethod
    def of_json(cls, status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, {"content-type": "application/json", **(headers or {})}, orjson.dumps(value))

    async def aread(self) -> bytes:
        """Drain a streamed reply into ``body`` (for stages that must see a whole error)."""
        if self.stream is not None:
            chunks = [chunk async for chunk in self.stream]
            self.stream = None
            self.body = b"".join(chunks)
        return self.body
