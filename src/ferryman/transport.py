"""httpx2 transports that run the pipeline, for the official ``openai`` SDK.

``openai.OpenAI(http_client=httpx2.Client(transport=FerrymanTransport(pipeline)))`` sends every
SDK call through Ferryman's stages. The async transport runs the pipeline on the caller's loop;
the sync one runs it on one background loop per process (see ``_loop``), so each stage is
written once. Ferryman's per-call headers (``ferryman-cache``, ``ferryman-tags``) are taken
off before the upstream sees the request; replies gain ``x-ferryman-*`` headers.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2

from ferryman import _loop, redact
from ferryman.exchange import SOURCE_SDK, Exchange, Reply
from ferryman.pipeline.chain import Pipeline


def api_path(url: httpx2.URL) -> str:
    """The API path below the base URL, still percent-encoded as the SDK sent it:
    ``/v1/chat/completions`` → ``/chat/completions`` (``Exchange.build`` makes it canonical)."""
    raw = url.raw_path.partition(b"?")[0].decode("ascii", errors="replace")
    at = raw.find("/v1/")
    if at >= 0:
        return raw[at + 3 :]
    return raw[:-3] if raw.endswith("/v1") else raw


def exchange_from(request: httpx2.Request, body: bytes, source: str = SOURCE_SDK) -> Exchange:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:  # one pass, no httpx2.Headers views
        name = raw_name.decode("latin-1").lower()
        try:
            value = raw_value.decode("ascii")
        except UnicodeDecodeError:
            value = raw_value.decode("utf-8", errors="replace")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = request.url.query
    exchange = Exchange.build(
        request.method,
        api_path(request.url),
        headers,
        body,
        query=query.decode("ascii") if isinstance(query, bytes) else str(query),
    )
    exchange.source = source
    return exchange


def redact_error(reply: Reply) -> None:
    """An upstream error that echoes a key must not carry it into the caller's exception."""
    if reply.status >= 400 and not reply.is_stream and reply.body:
        reply.body = redact.secrets_bytes(reply.body)


def ferryman_headers(exchange: Exchange, reply: Reply) -> dict[str, str]:
    headers = dict(reply.headers)
    headers["x-ferryman-attempts"] = str(max(exchange.attempts, 1 if exchange.cache != "hit" else 0))
    headers["x-ferryman-cache"] = exchange.cache
    if exchange.cost_usd is not None and not reply.is_stream:
        headers["x-ferryman-cost-usd"] = format(exchange.cost_usd, "f")
    waited = exchange.notes.get("upstream_ms", 0.0) + exchange.notes.get("waited_ms", 0.0)
    headers["x-ferryman-overhead-ms"] = f"{max(0.0, exchange.elapsed_ms - waited):.3f}"
    return headers


def _raw(headers: dict[str, str], length: int | None = None) -> list[tuple[bytes, bytes]]:
    """Headers as httpx2 keeps them (cheaper to hand over than a dict it must normalise)."""
    raw = [
        (name.encode("latin-1"), value.encode("utf-8"))
        for name, value in headers.items()
        if name != "content-length" and name != "transfer-encoding"
    ]
    if length is not None:
        raw.append((b"content-length", str(length).encode("ascii")))
    return raw


def _close(reply: Reply) -> None:
    for callback in reply.on_close:
        callback()
    reply.on_close.clear()


_DEFAULT_PORTS = {"http": 80, "https": 443}


def base_url_key(url: str | httpx2.URL) -> tuple[str, str, int | None, str]:
    """What makes two base URLs the same: scheme, host, port (the scheme's default made
    explicit) and path without its trailing slash."""
    parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    path = parsed.raw_path.partition(b"?")[0].decode("ascii", errors="replace").rstrip("/")
    return parsed.scheme, parsed.host, parsed.port or _DEFAULT_PORTS.get(parsed.scheme), path


class MisdirectedRequest(ValueError):
    """The SDK sent a call to a base URL that is not where Ferryman would send it (no deployments
    configured, and the SDK's ``base_url`` differs from the implicit upstream's). Nothing was sent.

    Raised from the transport, so the SDK sees it first. While the ``openai`` SDK is loaded the
    instance raised is also an ``openai.OpenAIError``: the SDK passes those on as they are, not
    retried and not wrapped in an ``APIConnectionError`` whose "Connection error." would hide the
    message (older SDKs wrap it; it is then the ``__cause__``)."""


def _misdirected(message: str) -> MisdirectedRequest:
    base = getattr(sys.modules.get("openai"), "OpenAIError", None)
    if not (isinstance(base, type) and issubclass(base, Exception)):
        return MisdirectedRequest(message)
    kind = _sdk_kinds.get(base)
    if kind is None:
        kind = _sdk_kinds[base] = type("MisdirectedRequest", (MisdirectedRequest, base), {"__module__": __name__})
    return kind(message)


_sdk_kinds: dict[type[Exception], type[MisdirectedRequest]] = {}  # by the SDK's OpenAIError


class Destination:
    """Where calls go when no deployments are configured: the one implicit deployment's base URL
    (``OPENAI_BASE_URL``, OpenAI's, or the ``base_url`` given to ``ferryman.http_client``). A
    request the SDK aimed elsewhere is refused, not sent there (with configured deployments,
    routing decides and the SDK's base URL does not matter)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.scheme, self.host, self.port, path = base_url_key(self.base_url)
        self.path = path.encode("ascii")

    @classmethod
    def implicit(cls, pipeline: Pipeline) -> Destination | None:
        settings = getattr(pipeline, "settings", None)
        if settings is None or getattr(settings, "deployments_configured", True):
            return None
        deployments = settings.deployments
        return cls(deployments[0].base_url) if len(deployments) == 1 else None

    def covers(self, url: httpx2.URL) -> bool:
        scheme = url.scheme
        if scheme != self.scheme or url.host != self.host or (url.port or _DEFAULT_PORTS.get(scheme)) != self.port:
            return False
        raw = url.raw_path.partition(b"?")[0]
        return not self.path or raw == self.path or raw.startswith(self.path + b"/")

    def check(self, url: httpx2.URL) -> None:
        if self.covers(url):
            return
        aimed = str(url).partition("?")[0]
        raise _misdirected(
            f"ferryman: not sent: the client aimed this call at {aimed}, but with no deployments configured "
            f"Ferryman sends every call to {self.base_url} (the base_url given to ferryman.http_client(), else "
            "OPENAI_BASE_URL, else OpenAI's). Give Ferryman the client's base URL: ferryman.OpenAI(base_url=...) / "
            "ferryman.AsyncOpenAI(base_url=...), or http_client=ferryman.http_client(base_url=...) / "
            "ferryman.async_http_client(base_url=...); or configure [[deployments]] in ferryman.toml "
            "(or FERRYMAN_DEPLOYMENTS)"
        )


class _AsyncStream(httpx2.AsyncByteStream):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert self.reply.stream is not None
        async for chunk in self.reply.stream:
            yield chunk

    async def aclose(self) -> None:
        stream = self.reply.stream
        if stream is not None and hasattr(stream, "aclose"):
            await stream.aclose()
        _close(self.reply)


class AsyncFerrymanTransport(httpx2.AsyncBaseTransport):
    def __init__(self, pipeline: Pipeline, source: str = SOURCE_SDK) -> None:
        """``source``: what the calls' audit records name as their front door (``ferryman run
        --via batch-api`` drives the SDK on this transport and says so)."""
        self.pipeline = pipeline
        self.source = source
        self.destination = Destination.implicit(pipeline)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.destination is not None:
            self.destination.check(request.url)
        exchange = exchange_from(request, await request.aread(), self.source)
        reply = await self.pipeline(exchange)
        return to_response(exchange, reply, request, _AsyncStream)

    async def aclose(self) -> None:
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            await close()


def to_response(
    exchange: Exchange, reply: Reply, request: httpx2.Request, stream: Callable[[Reply], httpx2.ByteStream | Any]
) -> httpx2.Response:
    """The reply as an httpx2 response, ``x-ferryman-*`` headers added; ``stream(reply)`` wraps a
    streamed body for the caller's side (sync or async)."""
    redact_error(reply)
    headers = ferryman_headers(exchange, reply)
    if reply.is_stream:
        return httpx2.Response(reply.status, headers=_raw(headers), stream=stream(reply), request=request)
    _close(reply)
    body = reply.body
    raw = _raw(headers, len(body))
    return httpx2.Response(reply.status, headers=raw, stream=httpx2.ByteStream(body), request=request)


class _SyncStream(httpx2.SyncByteStream):
    """A streamed reply read from the sync SDK: a task on the background loop reads it ahead."""

    def __init__(self, reply: Reply, loop: asyncio.AbstractEventLoop) -> None:
        assert reply.stream is not None
        self.reply = reply
        self.pump = _loop.Pump(reply.stream, loop)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.pump)

    def close(self) -> None:
        self.pump.close()
        _close(self.reply)


class FerrymanTransport(httpx2.BaseTransport):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.destination = Destination.implicit(pipeline)
        if hasattr(pipeline.terminal, "aclose"):
            # a client dropped or never closed leaves no open session behind (nor at exit)
            _loop.close_with(self, pipeline.terminal)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.destination is not None:
            self.destination.check(request.url)
        body = request.read()
        loop = _loop.background_loop()
        exchange = exchange_from(request, body)
        reply = _loop.run(self.pipeline(exchange), loop)
        return to_response(exchange, reply, request, lambda streamed: _SyncStream(streamed, loop))

    def close(self) -> None:
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            asyncio.run_coroutine_threadsafe(close(), _loop.background_loop()).result()


__all__ = ["AsyncFerrymanTransport", "FerrymanTransport", "MisdirectedRequest", "api_path", "base_url_key"]
