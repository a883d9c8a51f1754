"""httpx2 transports that run the pipeline, for the official ``openai`` SDK.

``openai.OpenAI(http_client=httpx2.Client(transport=FerrymanTransport(pipeline)))`` sends every
SDK call through Ferryman's stages. The async transport runs the pipeline on the caller's loop;
the sync one runs it on one background loop per process (see ``_loop``), so each stage is
written once. Ferryman's per-call headers (``ferryman-cache``, ``ferryman-tags``) are taken
off before the upstream sees the request; replies gain ``x-ferryman-*`` headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2

from ferryman import _loop, redact
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Pipeline


def api_path(url: httpx2.URL) -> str:
    """The API path below the base URL, still percent-encoded as the SDK sent it:
    ``/v1/chat/completions`` → ``/chat/completions`` (``Exchange.build`` makes it canonical)."""
    raw = url.raw_path.partition(b"?")[0].decode("ascii", errors="replace")
    at = raw.find("/v1/")
    if at >= 0:
        return raw[at + 3 :]
    return raw[:-3] if raw.endswith("/v1") else raw


def exchange_from(request: httpx2.Request, body: bytes) -> Exchange:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:  # one pass, no httpx2.Headers views
        name = raw_name.decode("latin-1").lower()
        try:
            value = raw_value.decode("ascii")
        except UnicodeDecodeError:
            value = raw_value.decode("utf-8", errors="replace")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = request.url.query
    return Exchange.build(
        request.method,
        api_path(request.url),
        headers,
        body,
        query=query.decode("ascii") if isinstance(query, bytes) else str(query),
    )


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
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        exchange = exchange_from(request, await request.aread())
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

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        loop = _loop.background_loop()
        exchange = exchange_from(request, body)
        reply = _loop.run(self.pipeline(exchange), loop)
        return to_response(exchange, reply, request, lambda streamed: _SyncStream(streamed, loop))

    def close(self) -> None:
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            asyncio.run_coroutine_threadsafe(close(), _loop.background_loop()).result()


__all__ = ["AsyncFerrymanTransport", "FerrymanTransport", "api_path"]
