"""One call as it travels the pipeline: :class:`Exchange` in, :class:`Reply` out.

An exchange holds the request (method, API path, headers, body and its parsed JSON), who is
calling (:class:`Principal`), the per-call options the caller sent in ``ferryman-*`` headers,
and what the stages learn on the way (tokens, deployment, attempts, usage, cost, cache). A
reply is an HTTP answer whose body is either bytes or an async stream of bytes; stages that
need the end of a stream wrap ``Reply.stream`` and see it as the caller does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ferryman.upstream import Deployment

# Per-call options travel in these request headers and never reach the upstream.
CACHE_HEADER = "ferryman-cache"  # no-store | refresh
TAGS_HEADER = "ferryman-tags"  # team=a,feature=search

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
    """Who is calling: a virtual key (gateway), or the process itself (in-SDK)."""

    id: str = "process"
    team: str | None = None
    user: str | None = None
    scopes: frozenset[str] = frozenset()
    caps: tuple[Cap, ...] = ()
    rates: tuple[Rate, ...] = ()


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
    """``team=a,feature=search`` → ``{"team": "a", "feature": "search"}`` (bad pairs skipped)."""
    tags: dict[str, str] = {}
    for part in (raw or "").split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if sep and key and value:
            tags[key[:64]] = value[:256]
    return tags


@dataclass
class Exchange:
    method: str
    path: str  # the API path below the base URL, e.g. "/chat/completions"
    headers: dict[str, str]  # lower-case names; no hop-by-hop, no ferryman-* headers
    body: bytes = b""
    query: str = ""
    principal: Principal = field(default_factory=Principal)
    tags: dict[str, str] = field(default_factory=dict)
    cache_control: str | None = None  # "no-store" | "refresh" | None
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
        """Split Ferryman's own headers from the caller's and parse a JSON body."""
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
            tags=parse_tags(headers.get(TAGS_HEADER) or headers.get(TAGS_HEADER.title())),
            cache_control=(headers.get(CACHE_HEADER) or "").strip().lower() or None,
        )
        if body and "json" in clean.get("content-type", "application/json"):
            try:
                ex.json = orjson.loads(body)
            except orjson.JSONDecodeError:
                ex.json = None
        if isinstance(ex.json, dict):
            model = ex.json.get("model")
            ex.model = model if isinstance(model, str) else None
            ex.stream = ex.json.get("stream") is True
        return ex

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
