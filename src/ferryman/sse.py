"""Server-sent events seen on the wire: split a byte stream into events without changing it.

Stages that watch a stream (usage, cache recording, time to first token) feed the bytes they
forward into a :class:`SSEDecoder` and get whole events back, each with its exact bytes, so a
stage can pass an event through untouched, drop it, or rewrite it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson


class SSEEvent:
    """One event: ``raw`` the event as sent (its blank-line terminator included), ``event`` its
    ``event:`` field, ``data`` its ``data:`` lines joined with newlines."""

    __slots__ = ("data", "event", "raw")

    def __init__(self, raw: bytes, event: str | None, data: str) -> None:
        self.raw = raw
        self.event = event
        self.data = data

    def __repr__(self) -> str:
        return f"SSEEvent(raw={self.raw!r}, event={self.event!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.raw, self.event, self.data) == (other.raw, other.event, other.data)

    def __hash__(self) -> int:
        return hash((self.raw, self.event, self.data))

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
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" not in buffer:  # the usual wire format: events end with a blank line, "\n\n"
            blocks = buffer.split(b"\n\n")
            self._buffer = blocks.pop()
            events = []
            for block in blocks:
                if block.startswith(b"data: ") and b"\n" not in block:  # one data line: nothing to split
                    events.append(SSEEvent(block + b"\n\n", None, block[6:].decode("utf-8", errors="replace")))
                else:
                    events.append(_parse(block + b"\n\n"))
            return events
        events = []
        start = 0
        while True:
            cut, sep = _boundary(buffer, start)
            if cut < 0:
                self._buffer = buffer[start:]
                return events
            events.append(_parse(buffer[start : cut + sep]))
            start = cut + sep

    def flush(self) -> bytes:
        """Bytes left over that never formed a whole event (a cut stream)."""
        rest, self._buffer = self._buffer, b""
        return rest


def _boundary(buffer: bytes, start: int) -> tuple[int, int]:
    best = (-1, 0)
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(sep, start)
        if at >= 0 and (best[0] < 0 or at < best[0]):
            best = (at, len(sep))
    return best


_LINES = re.compile(r"\r\n|\r|\n")  # SSE's line ends (str.splitlines would also split on U+2028...)


def _parse(block: bytes) -> SSEEvent:
    # The usual shape, one "data: ..." line: no line splitting needed.
    if (
        block.startswith(b"data: ")
        and block.endswith(b"\n\n")
        and block.find(b"\n", 0, len(block) - 2) < 0
        and b"\r" not in block
    ):
        return SSEEvent(block, None, block[6:-2].decode("utf-8", errors="replace"))
    event = None
    data: list[str] = []
    for line in _LINES.split(block.decode("utf-8", errors="replace")):
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
                if event.data == "[DONE]" or event.event in TERMINAL_EVENTS:
                    finished = True
                sent = on_event(event)
                if sent:
                    out.append(sent)
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        rest = decoder.flush()
        if rest:
            yield rest
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
        if on_end is not None:
            on_end(finished)
