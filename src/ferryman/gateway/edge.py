"""Header limits at the gateway's HTTP edge: uvicorn's httptools protocol, bounded.

httptools sets no limits of its own: a 155 MB header is buffered whole before the app sees the
request, 20,000 headers are accepted and headers that never finish hold the connection forever.
:class:`LimitedHttpTools` caps, per request, the bytes of the request line and headers
(``gateway.max_header_kb``, counted as they arrive, so memory stays bounded whatever is sent), the
number of headers (``gateway.max_headers``) and the time from the request's first byte (or from
the connection, for its first request) to its complete headers (``gateway.header_timeout_s``); a
keep-alive connection idle between requests keeps uvicorn's keep-alive timeout.

A breach is not answered here: parsing and reading stop, and a minimal request (method and path
as far as they were parsed, no headers: they are untrusted) carrying
``scope["ferryman.refusal"] = {"status", "code", "message"}`` goes to the app like any other, so
the pipeline answers and audits it; the connection closes after that reply and anything the
caller sent after the breach is discarded.

Bytes are attributed to a request's head exactly (a head ends at its blank line, a body with a
``Content-Length`` is fed up to its end), except for a head pipelined right after a chunked body,
which is over-counted by the chunk framing fed with its first bytes (bodies are fed in slices no
longer than a head may be, so that a head can never begin and end unseen inside one).
"""

from __future__ import annotations

import asyncio
import functools
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn._types import HTTPScope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ferryman.config import GatewaySettings

HEAD_END = b"\r\n\r\n"
NOT_CRLF = re.compile(rb"[^\r\n]")
BYTES, COUNT, TIMEOUT = "request_headers_too_large", "too_many_headers", "request_header_timeout"
REFUSALS = {
    BYTES: (431, "Request headers too large: this gateway accepts at most {kb:g} KiB of headers"),
    COUNT: (431, "Too many request headers: this gateway accepts at most {n} headers"),
    TIMEOUT: (408, "Request headers timed out: this gateway waits at most {s:g} s for a request's headers"),
}
SETTING = {BYTES: "max_header_kb", COUNT: "max_headers", TIMEOUT: "header_timeout_s"}


@dataclass(frozen=True)
class HeaderLimits:
    max_header_kb: float = 64.0
    max_headers: int = 100
    header_timeout_s: float = 10.0

    @classmethod
    def of(cls, gateway: GatewaySettings) -> HeaderLimits:
        return cls(gateway.max_header_kb, gateway.max_headers, gateway.header_timeout_s)

    @property
    def max_header_bytes(self) -> int:
        return int(self.max_header_kb * 1024)

    def refusal(self, code: str) -> dict[str, Any]:
        """``scope["ferryman.refusal"]`` for a breach of one limit."""
        status, text = REFUSALS[code]
        message = text.format(kb=self.max_header_kb, n=self.max_headers, s=self.header_timeout_s)
        return {"status": status, "code": code, "message": f"{message} (gateway.{SETTING[code]})."}


@functools.cache
def _settings_limits() -> HeaderLimits:
    from ferryman.config import load

    return HeaderLimits.of(load().gateway)


class _TooManyHeaders(Exception):
    pass


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits. Used by name
    (``http="ferryman.gateway.edge:LimitedHttpTools"``, as worker processes need) it reads the
    limits from the settings (``ferryman.config.load()``) once per process; :func:`protocol_for`
    binds them from given settings instead."""

    limits: ClassVar[HeaderLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = type(self).limits or _settings_limits()
        self._refused = False
        self._head_pending = True  # between a message's end (or the connection's start) and its headers
        self._head_tail = b""  # the head's last bytes, for a blank line split across reads
        self._line_state = 0  # 0: nothing but CRLF yet, 1: in the request line, 2: request line done
        self._head_bytes = self._header_count = self._heads_done = self._begun = self._body_bytes = 0
        self._body_left: int | None = None  # a Content-Length body's bytes still to feed
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting: RequestResponseCycle | None = None  # a cycle the refusal queued behind

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        waiting = self._waiting
        if waiting is not None and not waiting.response_complete:
            waiting.disconnected = True
            waiting.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end and not self._refused:
            if self._head_pending:
                stop = self._head_end(data, pos)
                room = self._limits.max_header_bytes - self._head_bytes
                cut = min(stop, pos + room)
                if cut <= pos:
                    self._refuse(BYTES)
                    break
                self._note_head(data, pos, cut)
                self._arm_head_timer()  # from the request's first byte (a stray CRLF included)
                heads_done = self._heads_done
                if not self._feed(view[pos:cut]):
                    return
                if cut < stop and heads_done == self._heads_done and self._head_pending:
                    self._refuse(BYTES)
                pos = cut
            else:
                # a body, in slices no longer than a head may be: a pipelined head that begins and
                # ends inside one slice is within the limit; one that goes on is counted below
                cut = min(end, pos + self._limits.max_header_bytes)
                if self._body_left:
                    cut = min(cut, pos + self._body_left)
                begun, body = self._begun, self._body_bytes
                if not self._feed(view[pos:cut]):
                    return
                if self._head_pending and self._begun > self._heads_done and self._begun != begun:
                    # a head began after a chunked body: its bytes, over-counted by that slice's framing
                    self._head_bytes = (cut - pos) - (self._body_bytes - body)
                    self._head_tail = data[max(pos, cut - 3) : cut]
                    self._line_state = 2 if self.headers else 1
                    if self._head_bytes > self._limits.max_header_bytes:
                        self._refuse(BYTES)
                pos = cut
        if self._refused:
            self.flow.pause_reading()  # what follows the breach is never read, let alone parsed

    def _feed(self, chunk: memoryview) -> bool:
        """Feed the parser as uvicorn does; False once the connection is no longer ours to parse."""
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _TooManyHeaders):  # raised by on_header
                self._refuse(COUNT)
                return True
            self.logger.warning("Invalid HTTP request received.")
            self._cancel_head_timer()
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            self._cancel_head_timer()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _head_end(self, data: bytes, pos: int) -> int:
        """Offset just past the blank line ending the head in ``data[pos:]``, else ``len(data)``."""
        if pos == 0 and self._head_tail:
            joined = self._head_tail + data[:3]
            found = joined.find(HEAD_END)
            if found >= 0:
                return found + 4 - len(self._head_tail)
        found = data.find(HEAD_END, pos)
        return len(data) if found < 0 else found + 4

    def _note_head(self, data: bytes, pos: int, cut: int) -> None:
        self._head_bytes += cut - pos
        self._head_tail = (self._head_tail + data[max(pos, cut - 3) : cut])[-3:]
        if self._line_state == 0:
            first = NOT_CRLF.search(data, pos, cut)
            if first is None:
                return
            self._line_state, pos = 1, first.start()
        if self._line_state == 1 and data.find(b"\n", pos, cut) >= 0:
            self._line_state = 2

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun += 1
        self._header_count = 0
        self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._heads_done += 1
        self._head_pending, self._head_bytes, self._head_tail, self._line_state = False, 0, b"", 0
        self._body_left = _content_length(self.headers)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_left:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._head_pending, self._head_tail, self._body_left = True, b"", None
        super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self._refused:
            self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # still answering an earlier request: not the caller's delay
            return
        self._refuse(TIMEOUT)

    def _refuse(self, code: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        self.flow.pause_reading()
        cycle = RequestResponseCycle(
            self._refusal_scope(code), self.transport, self.flow, self.logger, self.access_logger,
            self.access_log, self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=False, on_response=self.on_response_complete,
        )  # fmt: skip
        cycle.more_body = False  # an empty, complete body, ready to receive
        cycle.message_event.set()
        existing, self.cycle = self.cycle, cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # answered in order, after the requests before it
            self._waiting = existing
            self.pipeline.appendleft((cycle, self.app))

    def _refusal_scope(self, code: str) -> HTTPScope:
        method, raw_path, query = "GET", b"/", b""
        url: bytes = getattr(self, "url", b"")
        if self._line_state == 2 and url:
            method = self.parser.get_method().decode("ascii", "replace")
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                parsed = None
            if parsed is not None and parsed.path:
                raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope: dict[str, Any] = {  # as uvicorn builds it, with no headers: they are untrusted
            "type": "http", "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1", "server": self.server, "client": self.client, "scheme": self.scheme,
            "root_path": self.root_path, "method": method, "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + raw_path, "query_string": query,
            "headers": [], "state": self.app_state.copy(), "ferryman.refusal": self._limits.refusal(code),
        }  # fmt: skip
        return cast(HTTPScope, scope)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body length a head declares, when it is a plain Content-Length (not chunked)."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value) if value.strip().isdigit() else None
    return length


def protocol_for(gateway: GatewaySettings) -> type[LimitedHttpTools]:
    """The protocol class for ``uvicorn.Config(http=…)`` with these settings' limits bound."""
    limits = HeaderLimits.of(gateway)
    return type("LimitedHttpTools", (LimitedHttpTools,), {"limits": limits, "__module__": __name__})
