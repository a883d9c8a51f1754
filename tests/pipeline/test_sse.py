"""The SSE decoder: events split exactly as the wire has them, however the bytes are cut."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.sse import SSEDecoder

_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def reference(stream: bytes) -> tuple[list[tuple[bytes, str | None, str]], bytes]:
    """The plain reading of the format: an event ends at the first blank line (LF LF, CRLF CRLF or
    CR CR); lines end at CRLF, CR or LF; ``event:`` names it, ``data:`` lines join with LF."""
    events: list[tuple[bytes, str | None, str]] = []
    buffer = stream
    while True:
        ends = [(buffer.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r")]
        found = [(at, n) for at, n in ends if at >= 0]
        if not found:
            return events, buffer
        at, n = min(found)
        block, buffer = buffer[: at + n], buffer[at + n :]
        name, data = None, []
        for line in _LINE_ENDS.split(block.decode("utf-8", errors="replace")):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((block, name, "\n".join(data)))


# Field names, line ends of all three kinds, a comment, JSON, U+2028 in UTF-8, a byte that is not UTF-8.
PIECES = [b"data: ", b"data:", b"event: x", b"\n", b"\r", b"\r\n", b": note", b'{"a":1}', b"[DONE]"]
PIECES += [b"\xe2\x80\xa8", b"\xff"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40), st.lists(st.integers(0, 400), max_size=6))
def test_events_match_the_reference_however_the_stream_is_cut(pieces, cuts):
    stream = b"".join(pieces)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = SSEDecoder()
    events = [(e.raw, e.event, e.data) for chunk in chunks for e in decoder.feed(chunk)]
    expected, rest = reference(stream)
    assert events == expected
    assert decoder.flush() == rest


def test_a_line_separator_inside_json_data_is_not_a_line_end():
    decoder = SSEDecoder()
    raw = 'data: {"content":"a\u2028b"}\n\n'.encode()
    [event] = decoder.feed(raw)
    assert event.raw == raw and event.json() == {"content": "a\u2028b"}


def test_the_usual_events_and_a_terminal_one():
    decoder = SSEDecoder()
    events = decoder.feed(b'data: {"x":1}\n\nevent: response.completed\ndata: {"y":2}\n\ndata: [DO')
    assert [(e.event, e.json()) for e in events] == [(None, {"x": 1}), ("response.completed", {"y": 2})]
    [done] = decoder.feed(b"NE]\n\n")
    assert done.is_done and done.json() is None
