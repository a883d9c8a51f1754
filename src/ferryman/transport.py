"""httpx2 transports that run the pipeline, for the official ``openai`` SDK.

``openai.OpenAI(http_client=httpx2.Client(transport=FerrymanTransport(pipeline)))`` sends every
SDK call through Ferryman's stages. The async transport runs the pipeline on the caller's loop;
the sync one runs it on one background loop per process (see ``_loop``), so each stage is
written once. Ferryman's per-call headers (``ferryman-cache``, ``ferryman-tags``) are taken
off before the upstream sees the request; replies gain ``x-ferryman-*`` headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx2

from ferryman import _loop, redact
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Pipeline


def api_path(url: httpx2.URL) -> str:
    """The API path below the base URL: ``/v1/chat/completions`` → ``/chat/completions``."""
    path = url.path
    at = path.find("/v1/")
    if at >= 0:
        return path[at + 3 :]
    return path[:-3] if path.endswith("/v1") else path


def exchange_from(request: httpx2.Request, body: bytes) -> Exchange:
    return Exchange.build(
        request.method,
        api_path(request.url),
        dict(request.headers.items()),
        body,
        query=request.url.query.decode("ascii") if isinstance(request.url.query, bytes) else str(request.url.query),
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
        return to_response(exchange, reply, request)

    async def aclose(self) -> None:
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            await close()


def to_response(exchange: Exchange, reply: Reply, request: httpx2.Request) -> httpx2.Response:
    redact_error(reply)
    headers = ferryman_headers(exchange, reply)
    if reply.is_stream:
        return httpx2.Response(reply.status, headers=headers, stream=_AsyncStream(reply), request=request)
    _close(reply)
    return httpx2.Response(reply.status, headers=headers, content=reply.body, request=request)


class _SyncStream(httpx2.SyncByteStream):
    """A streamed reply read from the sync SDK: each chunk fetched from the background loop."""

    def __init__(self, reply: Reply, loop: asyncio.AbstractEventLoop) -> None:
        self.reply = reply
        self.loop = loop

    def __iter__(self) -> Iterator[bytes]:
        stream = self.reply.stream
        assert stream is not None
        iterator = stream.__aiter__()
        while True:
            future = asyncio.run_coroutine_threadsafe(_next(iterator), self.loop)
            chunk = future.result()
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        stream = self.reply.stream
        if stream is not None and hasattr(stream, "aclose"):
            if asyncio._get_running_loop() is self.loop:  # collected on the loop's own thread
                self.loop.create_task(stream.aclose())
            else:
                asyncio.run_coroutine_threadsafe(stream.aclose(), self.loop).result()
        _close(self.reply)


async def _next(iterator: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


class FerrymanTransport(httpx2.BaseTransport):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        loop = _loop.background_loop()

        async def run() -> tuple[Exchange, Reply]:
            exchange = exchange_from(request, body)
            return exchange, await self.pipeline(exchange)

        exchange, reply = asyncio.run_coroutine_threadsafe(run(), loop).result()
        redact_error(reply)
        headers = ferryman_headers(exchange, reply)
        if reply.is_stream:
            return httpx2.Response(reply.status, headers=headers, stream=_SyncStream(reply, loop), request=request)
        _close(reply)
        return httpx2.Response(reply.status, headers=headers, content=reply.body, request=request)

    def close(self) -> None:
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            asyncio.run_coroutine_threadsafe(close(), _loop.background_loop()).result()


__all__ = ["AsyncFerrymanTransport", "FerrymanTransport", "api_path"]
