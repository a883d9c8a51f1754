"""The ``/v1/…`` proxy: every OpenAI API path, through the pipeline, as a raw ASGI handler.

For each request: read the body (capped: JSON bodies at ``gateway.max_body_mb``, multipart
uploads at ``gateway.max_upload_mb``, counted while it arrives), authenticate the virtual key,
check the model against the key's allowlist, turn a malformed JSON body into OpenAI's 400, and
run the exchange through the pipeline. Unknown paths and fields pass through untouched; the
caller's own credentials and organisation headers never reach the upstream (its keys live on
the server only).

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
from ferryman.errors import OpenAIError, unparsable_json
from ferryman.exchange import Exchange, Principal, Reply, merged_headers
from ferryman.gateway.access_log import AccessLog
from ferryman.gateway.auth import Authenticator, model_allowed, model_refused, models_in_upload
from ferryman.pipeline.chain import Pipeline
from ferryman.transport import ferryman_headers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("ferryman.gateway")

# The caller's credentials and account headers: the upstream gets the server's own.
CALLER_ONLY = frozenset({"authorization", "api-key", "openai-organization", "openai-project", "cookie"})
# Reply headers that would tell the caller about the server's account, or set its cookies.
SERVER_ONLY = frozenset({"openai-organization", "openai-project", "set-cookie", "content-length", "date", "server"})
STREAMED_PATHS = ("/chat/completions", "/completions", "/responses")
_ENDINGS = (b"[DONE]", b"response.completed", b"response.incomplete", b"response.failed")


class BodyTooLarge(Exception):
    pass


def error_reply(error: OpenAIError) -> Reply:
    return Reply.of_json(error.status, error.body(), dict(error.headers))


def _headers(scope: Scope) -> dict[str, str]:
    return merged_headers(scope["headers"])


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the caller left while sending its request")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"Request body too large: this gateway accepts at most {limit / (1024 * 1024):g} MiB for this kind of request.",
        "invalid_request_error",
        None,
        "request_too_large",
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
    return OpenAIError(
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
    def __init__(
        self,
        pipeline: Pipeline,
        auth: Authenticator,
        access: AccessLog,
        max_body: int,
        max_upload: int,
    ) -> None:
        self.pipeline = pipeline
        self.auth = auth
        self.access = access
        self.max_body = max_body
        self.max_upload = max_upload
        self.open_streams = 0
        self.streams_idle = asyncio.Event()
        self.streams_idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = _headers(scope)
        method: str = scope["method"]
        path: str = scope["path"][3:]  # below /v1
        key_id = "-"
        exchange: Exchange | None = None
        try:
            principal, key = await self.auth.principal(headers)
            key_id = principal.id
            multipart = headers.get("content-type", "").startswith("multipart/")
            limit = self.max_upload if multipart else self.max_body
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge:
                raise _too_large(limit) from None
            exchange = self._exchange(method, path, scope, headers, body, principal)
            if exchange.model is not None and not model_allowed(key, exchange.model):
                raise model_refused(exchange.model)
            if key.models is not None and multipart and path == "/files":  # a batch runs its lines' models
                for model in sorted(models_in_upload(body)):
                    if not model_allowed(key, model):
                        raise model_refused(model)
        except OpenAIError as error:
            refusal = error_reply(error)
            refusal.body = redact.secrets_bytes(refusal.body)  # it may quote the caller's input (a model name)
            await self._send_plain(send, refusal, None)
            self.access.write(method, path, error.status, started, key_id, None, scope)
            return
        except ConnectionResetError:
            return
        try:
            reply = await self.pipeline(exchange)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failure = upstream_failure(error)
            if failure.status == 500:
                log.error("gateway: %s %s failed: %s", method, path, redact.secrets(repr(error)))
            exchange.error = exchange.error or type(error).__name__
            reply = error_reply(failure)
        if reply.status >= 400 and not reply.is_stream and reply.body:
            reply.body = redact.secrets_bytes(reply.body)
        if reply.is_stream:
            status = await self._send_stream(send, receive, exchange, reply)
        else:
            status = reply.status
            await self._send_plain(send, reply, exchange)
        self.access.write(method, path, status, started, key_id, exchange, scope)

    @staticmethod
    def _exchange(
        method: str, path: str, scope: Scope, headers: dict[str, str], body: bytes, principal: Principal
    ) -> Exchange:
        forwarded = {k: v for k, v in headers.items() if k not in CALLER_ONLY}
        query = scope.get("query_string", b"").decode("latin-1")
        exchange = Exchange.build(method, path, forwarded, body, query=query, principal=principal)
        if body and exchange.json is None and "json" in headers.get("content-type", "application/json"):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                raise unparsable_json() from None
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
