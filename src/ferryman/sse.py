"""Server-sent events seen on the wire: split a byte stream into events without changing it.

Stages that watch a stream (usage, cache recording, time to first token) feed the bytes they
forward into a :class:`SSEDecoder` and get whole events back, each with its exact bytes, so a
stage can pass an event through untouched, drop it, or rewrite it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class SSEEvent:
    raw: bytes  # the event as sent, including its blank-line terminator
    event: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON, or None (``[DONE]``, comments, malformed data)."""
        if not self.data or self.data == "[DONE]":
            return None
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"


class SSEDecoder:
    """Incremental: ``feed`` bytes as they arrive, get the events they complete."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            cut, sep = _boundary(self._buffer)
            if cut < 0:
                return events
            block = self._buffer[: cut + sep]
            self._buffer = self._buffer[cut + sep :]
            events.append(_parse(block))

    def flush(self) -> bytes:
        """Bytes left over that never formed a whole event (a cut stream)."""
        rest, self._buffer = self._buffer, b""
        return rest


def _boundary(buffer: bytes) -> tuple[int, int]:
    best = (-1, 0)
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(sep)
        if at >= 0 and (best[0] < 0 or at < best[0]):
            best = (at, len(sep))
    return best


def _parse(block: bytes) -> SSEEvent:
    event = None
    data: list[str] = []
    for line in block.decode("utf-8", errors="replace").splitlines():
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return SSEEvent(block, event, "\n".join(data))


# Events after which a stream has said all it will: the chat sentinel and the Responses API's ends.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


async def tap(
    stream: AsyncIterator[bytes],
    on_event: Callable[[SSEEvent], bytes | None],
    on_end: Callable[[bool], Any] | None = None,
) -> AsyncIterator[bytes]:
    """Forward ``stream`` event by event through ``on_event``, which returns the bytes to send
    (the event's ``raw`` to pass it on, other bytes to rewrite it, ``b""`` to drop it).

    ``on_end(completed)`` runs once, after the wrapped stream is closed: ``completed`` is true
    when the stream's terminal event (``[DONE]``, ``response.completed``…) went through, even if
    the consumer then stopped reading (the SDK closes a chat stream at ``[DONE]``), and false
    when the stream broke or was abandoned before it.
    """
    decoder = SSEDecoder()
    finished = False
    try:
        async for chunk in stream:
            out = []
            for event in decoder.feed(chunk):
                if event.is_done or event.event in TERMINAL_EVENTS:
                    finished = True
                out.append(on_event(event))
            data = b"".join(o for o in out if o)
            if data:
                yield data
        rest = decoder.flush()
        if rest:
            yield rest
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
        if on_end is not None:
            on_end(finished)
