"""The ``/v1/…`` proxy: every OpenAI API path, through the pipeline, as a raw ASGI handler.

For each request the proxy builds one exchange: the path made canonical from the bytes the
caller sent (``raw_path``: :mod:`ferryman.apipath`; one with no canonical form, or a request the
HTTP edge refused for its headers, carries its refusal), only the request headers the API
defines (:data:`FORWARDED`: never the caller's credentials, cookies, ``x-ferryman-*`` or
hop-by-hop headers, whatever ``Connection:`` names), the presented key and the unread body.
Everything else happens in the pipeline, where refusals are audited like calls: the guard
answers a refused path, :class:`~ferryman.gateway.auth.Authenticate` the key,
:class:`~ferryman.gateway.intake.Intake` reads and checks the body.

Replies go back with ``x-ferryman-*`` headers. A streamed reply is forwarded chunk by chunk as it
arrives, never buffered; if the caller leaves, the upstream stream is closed; if the upstream
breaks or ends a chat or responses stream before its last event, the caller gets an error event
in OpenAI's shape (``data: {"error": …}``, which the SDKs raise) instead of a silent end. Errors
of the upstream connection become 502/504 in OpenAI's shape: never a hung connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx2
import orjson

from ferryman import redact
from ferryman.errors import OpenAIError, invalid_url
from ferryman.exchange import ANONYMOUS, SOURCE_GATEWAY, Exchange, Reply, merged_headers
from ferryman.gateway.access_log import AccessLog
from ferryman.gateway.auth import CREDENTIAL_NOTE, Authenticate, presented_key
from ferryman.gateway.intake import BODY_NOTE, AsgiBody, declared_length
from ferryman.pipeline.chain import Pipeline
from ferryman.store.faults import describe, infrastructure_failure
from ferryman.transport import ferryman_headers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("ferryman.gateway")

# The request headers that go upstream (besides ``content-type``, which the intake sets): what
# the API and its SDKs define. Anything else (credentials, cookies, ``x-ferryman-*``, proxies'
# and hop-by-hop headers, a caller's invented ones) stays at the gateway.
FORWARDED = frozenset(
    {"accept", "content-type", "user-agent", "openai-beta", "idempotency-key", "x-client-request-id"}
)
FORWARDED_PREFIXES = ("x-stainless-",)  # the official SDKs' own
# Reply headers that would tell the caller about the server's account, or set its cookies.
SERVER_ONLY = frozenset({"openai-organization", "openai-project", "set-cookie", "content-length", "date", "server"})
STREAMED_PATHS = ("/chat/completions", "/completions", "/responses")
_ENDINGS = (b"[DONE]", b"response.completed", b"response.incomplete", b"response.failed")


def error_reply(error: OpenAIError) -> Reply:
    return Reply.of_json(error.status, error.body(), dict(error.headers))


def forwarded_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers that may go upstream, and Ferryman's own ``ferryman-*`` ones (which
    ``Exchange.build`` takes off)."""
    named = {n.strip().lower() for n in headers.get("connection", "").split(",")}
    return {
        k: v
        for k, v in headers.items()
        if k not in named
        and (k in FORWARDED or k.startswith(FORWARDED_PREFIXES) or (k.startswith("ferryman-") and len(v) <= 4096))
    }


def _edge_refusal(scope: Scope) -> OpenAIError | None:
    refused = scope.get("ferryman.refusal")
    if not refused:
        return None
    return OpenAIError(
        int(refused["status"]), str(refused["message"]), "invalid_request_error", None, str(refused["code"])
    )


def upstream_failure(error: BaseException) -> OpenAIError:
    if isinstance(error, httpx2.TimeoutException):
        return OpenAIError(
            504, "The upstream did not answer in time. Please try again.", "timeout", None, "upstream_timeout"
        )
    if isinstance(error, httpx2.TransportError):
        return OpenAIError(
            502,
            "The gateway could not reach the upstream. Please try again.",
            "server_error",
            None,
            "upstream_unreachable",
        )
    return infrastructure_failure(error) or OpenAIError(
        500, "The gateway had an error while processing your request.", "server_error", None, "server_error"
    )


def mid_stream_failure(error: BaseException) -> OpenAIError:
    if isinstance(error, httpx2.TimeoutException):
        message = "The upstream stopped sending in the middle of the stream. Please try again."
        return OpenAIError(504, message, "timeout", None, "upstream_timeout")
    if isinstance(error, httpx2.TransportError):
        message = "The upstream connection broke in the middle of the stream. Please try again."
        return OpenAIError(502, message, "server_error", None, "stream_interrupted")
    return upstream_failure(error)


def _raw_headers(headers: dict[str, str], length: int | None) -> list[tuple[bytes, bytes]]:
    raw = [
        (name.encode("latin-1"), value.encode("latin-1", errors="replace"))
        for name, value in headers.items()
        if name not in SERVER_ONLY and name != "transfer-encoding"
    ]
    if length is not None:
        raw.append((b"content-length", str(length).encode("ascii")))
    return raw


def _stream_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class Proxy:
    def __init__(self, pipeline: Pipeline, access: AccessLog, auth: Authenticate | None = None) -> None:
        self.pipeline = pipeline
        self.access = access
        self.auth = auth  # to name who sent a request the guard will refuse (for the record only)
        self.open_streams = 0
        self.streams_idle = asyncio.Event()
        self.streams_idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = merged_headers(scope["headers"])
        method: str = scope["method"]
        exchange = self._exchange(method, scope, headers, receive)
        if exchange.refusal is not None and self.auth is not None:
            # The guard refuses it before authentication; the record still names a valid key.
            with contextlib.suppress(OpenAIError):
                exchange.principal = await self.auth.principal(exchange.notes.get(CREDENTIAL_NOTE))
        try:
            reply = await self.pipeline(exchange)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:  # the caller left while sending its body
            self.access.write(method, exchange.path, 499, started, exchange.principal.id, exchange, scope)
            return
        except OpenAIError as error:  # a refusal raised from inside (an Azure deployment a model cannot name)
            reply = error_reply(error)
        except Exception as error:
            failure = upstream_failure(error)
            if failure.status == 500:
                log.error("gateway: %s %s failed: %s", method, exchange.path, redact.secrets(repr(error)))
            elif failure.status == 503:  # the database, Redis or the disk: named, once per call
                log.error("gateway: %s %s failed (%s): %s", method, exchange.path, failure.code, describe(error))
            exchange.error = exchange.error or type(error).__name__
            reply = error_reply(failure)
        if reply.status >= 400 and not reply.is_stream and reply.body:
            reply.body = redact.secrets_bytes(reply.body)  # it may quote the caller's input (a model name)
        if reply.is_stream:
            status = await self._send_stream(send, receive, exchange, reply)
        else:
            status = reply.status
            await self._send_plain(send, reply, exchange)
        self.access.write(method, exchange.path, status, started, exchange.principal.id, exchange, scope)

    @staticmethod
    def _exchange(method: str, scope: Scope, headers: dict[str, str], receive: Receive) -> Exchange:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw.partition(b"?")[0]
        query = scope.get("query_string", b"").decode("latin-1")
        if raw.startswith(b"/v1/"):
            exchange = Exchange.build(method, raw[3:].decode("latin-1"), forwarded_headers(headers), b"", query)
        else:  # "/v1%2F…": the router saw "/v1/" only once it was decoded
            exchange = Exchange.build(method, "/", forwarded_headers(headers), b"", query)
            exchange.path = raw.decode("latin-1")[:256]
            exchange.refusal = invalid_url(method, exchange.path)
        exchange.principal = ANONYMOUS
        exchange.source = SOURCE_GATEWAY
        exchange.refusal = _edge_refusal(scope) or exchange.refusal
        exchange.notes[BODY_NOTE] = AsgiBody(receive, declared_length(headers))
        exchange.notes[CREDENTIAL_NOTE] = presented_key(headers)
        return exchange

    async def _send_plain(self, send: Send, reply: Reply, exchange: Exchange | None) -> None:
        headers = ferryman_headers(exchange, reply) if exchange is not None else reply.headers
        for callback in reply.on_close:
            callback()
        reply.on_close.clear()
        body = reply.body
        await send({"type": "http.response.start", "status": reply.status, "headers": _raw_headers(headers, len(body))})
        await send({"type": "http.response.body", "body": body})

    async def _send_stream(self, send: Send, receive: Receive, exchange: Exchange, reply: Reply) -> int:
        """Forward the stream as it comes; stop (and close the upstream) if the caller leaves."""
        self.open_streams += 1
        self.streams_idle.clear()
        forward = asyncio.ensure_future(self._forward(send, exchange, reply))
        watcher = asyncio.ensure_future(_caller_leaves(receive))
        try:
            await asyncio.wait((forward, watcher), return_when=asyncio.FIRST_COMPLETED)
            left = not forward.done()
            if left:
                forward.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await forward
            return 499 if left else reply.status
        finally:
            watcher.cancel()
            if not forward.done():
                forward.cancel()
            stream = reply.stream
            close = getattr(stream, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.debug("closing an upstream stream failed", exc_info=True)
            for callback in reply.on_close:
                try:
                    callback()
                except Exception:
                    log.exception("a stream's close callback failed")
            reply.on_close.clear()
            self.open_streams -= 1
            if self.open_streams == 0:
                self.streams_idle.set()

    @staticmethod
    async def _forward(send: Send, exchange: Exchange, reply: Reply) -> None:
        assert reply.stream is not None
        watch_end = exchange.path in STREAMED_PATHS
        ended = False
        headers = _raw_headers(ferryman_headers(exchange, reply), None)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        tail = b""
        try:
            async for chunk in reply.stream:
                if b'"error"' in chunk:  # an upstream error event may quote a key
                    chunk = redact.secrets_bytes(chunk)
                if watch_end and not ended:
                    ended = any(end in tail + chunk for end in _ENDINGS)
                    tail = chunk[-32:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if watch_end and not ended:
                exchange.error = exchange.error or "stream_incomplete"
                message = "The upstream ended the stream before it was complete."
                await send(
                    {
                        "type": "http.response.body",
                        "body": _stream_error(message, "stream_incomplete"),
                        "more_body": True,
                    }
                )
        except (asyncio.CancelledError, OSError):
            raise
        except Exception as error:  # the upstream broke mid-stream: say so in the stream
            failure = mid_stream_failure(error)
            exchange.error = exchange.error or type(error).__name__
            await send(
                {
                    "type": "http.response.body",
                    "body": _stream_error(failure.message, failure.code or "server_error"),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _caller_leaves(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
