"""Server-sent event streams in OpenAI's two framings, with stream faults applied.

Chat Completions and legacy Completions send ``data: {json}`` lines and end with
``data: [DONE]``; the Responses API sends ``event: <type>`` + ``data: {json}`` pairs, numbers
them with ``sequence_number`` and has no sentinel. The handler yields plain dicts; this module
frames them and applies ``ttft_ms``, ``chunk_delay_ms``, ``cut_after`` and ``error_after``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal

import orjson
from starlette.types import Receive, Scope, Send

from ferryman.mock.faults import Fault

log = logging.getLogger("ferryman.mock")

Style = Literal["chat", "responses"]
COALESCE_EVENTS = 16
COALESCE_BYTES = 8192


class ConnectionCut(Exception):
    """Raised to drop the connection mid-stream (the app resets it)."""


def frame(event: dict[str, Any], style: Style) -> bytes:
    data = orjson.dumps(event)
    if style == "responses":
        return b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


def _error_event(style: Style) -> dict[str, Any]:
    message = "The server had an error while processing your request. Sorry about that! (injected)"
    if style == "responses":
        return {"type": "error", "code": "server_error", "message": message, "param": None}
    return {"error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}}


class EventStream:
    """An ASGI response that streams events; ``on_complete`` runs after a clean end."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[dict[str, Any]] | Iterable[dict[str, Any]],
        style: Style,
        fault: Fault | None = None,
        on_complete: Callable[[], None] | None = None,
        first_sequence: int = 0,
    ) -> None:
        self.events = events
        self.style = style
        self.fault = fault or Fault()
        self.on_complete = on_complete
        self.status_code = 200
        self.headers: dict[str, str] = {}
        self.sent = 0
        self.first_sequence = first_sequence
        self.observer: Callable[[dict[str, Any]], None] | None = None

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        if isinstance(self.events, AsyncIterator):
            async for event in self.events:
                yield event
        else:
            for event in self.events:
                yield event

    async def _guarded(self) -> AsyncIterator[dict[str, Any]]:
        """The events; a bug while making one ends the stream with an error event, not a drop."""
        try:
            async for event in self._iterate():
                yield event
        except (ConnectionCut, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("mock stream failed")
            yield {"__error__": True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"connection", b"keep-alive"),
        ]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        fault = self.fault
        sequence = self.first_sequence
        # Events a handler has ready at once go out in a few writes, not one each: a write per
        # event is most of a stream's cost. Timing faults and live sources keep one per event.
        timed = bool(fault.ttft_ms or fault.chunk_delay_ms) or fault.cut_after is not None
        coalesce = not timed and fault.error_after is None and not isinstance(self.events, AsyncIterator)
        pending: list[bytes] = []
        pending_bytes = 0
        async for event in self._guarded():
            if self.sent == 0 and fault.ttft_ms:
                await asyncio.sleep(fault.ttft_ms / 1000)
            elif self.sent and fault.chunk_delay_ms:
                await asyncio.sleep(fault.chunk_delay_ms / 1000)
            if fault.cut_after is not None and self.sent >= fault.cut_after:
                raise ConnectionCut
            if event.get("__error__") or (fault.error_after is not None and self.sent >= fault.error_after):
                error = _error_event(self.style)
                if self.style == "responses":
                    error["sequence_number"] = sequence
                if self.observer is not None:
                    self.observer(error)
                body = b"".join([*pending, frame(error, self.style)])
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if self.style == "responses":
                event["sequence_number"] = sequence
                sequence += 1
            if self.observer is not None:
                self.observer(event)
            data = frame(event, self.style)
            self.sent += 1
            if not coalesce:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                continue
            pending.append(data)
            pending_bytes += len(data)
            if len(pending) >= COALESCE_EVENTS or pending_bytes >= COALESCE_BYTES:
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending, pending_bytes = [], 0
        if pending:
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
        if fault.cut_after is not None and self.sent >= fault.cut_after:
            raise ConnectionCut
        tail = b"data: [DONE]\n\n" if self.style == "chat" else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        if self.on_complete is not None:
            self.on_complete()
