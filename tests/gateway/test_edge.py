"""Header limits at the HTTP edge (ferryman.gateway.edge), over raw sockets: no HTTP client would
send these requests. A tiny ASGI app stands in for the gateway: it answers a request carrying
``scope["ferryman.refusal"]`` with that status and an OpenAI-shaped error, any other with 200, and
echoes the scope's method, path and header count in ``x-scope-*`` headers."""

from __future__ import annotations

import json
import select
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from ferryman.config import GatewaySettings
from ferryman.gateway import edge
from ferryman.gateway.edge import protocol_for
from ferryman.mock.server import BackgroundServer, free_port

KIB = 1024
LIMIT = 64 * KIB  # the default gateway.max_header_kb


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    assert scope["type"] == "http"
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    refusal = scope.get("ferryman.refusal")
    if refusal:
        status = refusal["status"]
        error = {"message": refusal["message"], "type": "invalid_request_error", "param": None}
        payload = json.dumps({"error": {**error, "code": refusal["code"]}}).encode()
    else:
        status, payload = 200, json.dumps({"ok": True, "body_bytes": len(body)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-scope-method", scope["method"].encode()),
        (b"x-scope-path", scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")),
        (b"x-scope-headers", str(len(scope["headers"])).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def start(http: Any = None, **limits: Any) -> BackgroundServer:
    host, port = "127.0.0.1", free_port()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http or protocol_for(GatewaySettings(**limits)),
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    return BackgroundServer(app, host, port, config).start()


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    running = start()  # the defaults: 64 KiB, 100 headers, 10 s
    yield running
    running.stop()


@pytest.fixture(scope="module")
def wide() -> Iterator[BackgroundServer]:
    """Headers without a count limit, so that many headers meet the byte limit."""
    running = start(max_headers=10**6)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def slow() -> Iterator[BackgroundServer]:
    running = start(header_timeout_s=0.5)
    yield running
    running.stop()


# A raw HTTP/1.1 client: sends while the socket takes bytes, reads whatever comes back.


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it was complete

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Talk:
    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    sent: int = 0


def parse(buffer: bytearray, into: list[Response]) -> None:
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        into.append(Response(int(lines[0].split()[1]), headers, body, time.monotonic()))


def talk(
    port: int,
    chunks: Iterable[bytes],
    responses: int = 1,
    until_closed: bool = True,
    timeout: float = 10.0,
    on_sent: Callable[[int], None] = lambda sent: None,
) -> Talk:
    """Send ``chunks`` (lazily, as the socket accepts them) until ``responses`` responses have come
    back; then, with ``until_closed``, read on until the server closes the connection."""
    result, buffer, pending, source = Talk(), bytearray(), memoryview(b""), iter(chunks)
    sending = True
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            done = len(result.responses) >= responses
            if result.closed or (done and not until_closed):
                break
            sending = sending and not done
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if sending else 0))
            for _, mask in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    except ConnectionResetError:  # closed with our unread bytes in its buffer
                        data = b""
                    if data == b"":
                        result.closed = True
                    elif data:
                        buffer += data
                        parse(buffer, result.responses)
                if mask & selectors.EVENT_WRITE and sending:
                    if not pending:
                        chunk = next(source, None)
                        if chunk is None:
                            sending = False
                            continue
                        pending = memoryview(chunk)
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        sending = False
                        continue
                    pending = pending[n:]
                    result.sent += n
                    on_sent(result.sent)
    return result


def vmrss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


def request(headers: Iterable[str] = (), target: str = "/v1/models", body: bytes = b"", method: str = "GET") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: gateway.test", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def refused(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["param"] is None
    assert response.headers["x-scope-headers"] == "0"  # the untrusted headers are dropped
    return error


# 64 MB of headers: refused at the limit, memory bounded, the rest never read.

MB64 = 64 * 1024 * KIB


def one_huge_header() -> Iterator[bytes]:
    yield b"GET /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gateway.test\r\nX-Huge: "
    for _ in range(MB64 // (64 * KIB)):
        yield b"a" * (64 * KIB)
    yield b"\r\n\r\n"


def many_headers() -> Iterator[bytes]:
    yield b"GET /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gateway.test\r\n"
    line = b"X-Many: " + b"m" * 246 + b"\r\n"  # 256 bytes
    block = line * 256  # 64 KiB
    for _ in range(MB64 // len(block)):
        yield block
    yield b"\r\n"


@pytest.mark.parametrize(
    ("which", "source", "code"),
    [
        ("server", one_huge_header, "request_headers_too_large"),
        ("server", many_headers, "too_many_headers"),
        ("wide", many_headers, "request_headers_too_large"),
    ],
)
def test_64_mb_of_headers_is_refused_at_the_limit_with_bounded_memory(
    which: str, source: Callable[[], Iterator[bytes]], code: str, request: pytest.FixtureRequest
) -> None:
    running: BackgroundServer = request.getfixturevalue(which)
    before = vmrss()
    peak = before
    breach_at: list[float] = []

    def sent(total: int) -> None:
        nonlocal peak
        if total > LIMIT and not breach_at:
            breach_at.append(time.monotonic())
        if total % (1024 * KIB) < 64 * KIB:
            peak = max(peak, vmrss())

    result = talk(running.port, source(), on_sent=sent)
    peak = max(peak, vmrss())
    (response,) = result.responses
    error = refused(response, 431, code)
    assert ("gateway.max_header_kb" if code == "request_headers_too_large" else "gateway.max_headers") in error[
        "message"
    ]
    assert response.at - breach_at[0] < 1.0
    assert result.closed
    assert result.sent < MB64  # the server stopped reading: the rest was never taken
    assert peak - before < 32 * 1024 * KIB
    # the request line was complete: its method and path reach the app, never its headers
    assert response.headers["x-scope-method"] == "GET"
    assert response.headers["x-scope-path"] == "/v1/chat/completions?x=1"


def test_a_request_line_that_overflows_is_refused_with_path_slash(server: BackgroundServer) -> None:
    result = talk(server.port, [b"GET /v1/" + b"p" * (LIMIT + 10)])
    (response,) = result.responses
    refused(response, 431, "request_headers_too_large")
    assert (response.headers["x-scope-method"], response.headers["x-scope-path"]) == ("GET", "/")
    assert result.closed


def test_20000_small_headers_are_too_many(server: BackgroundServer) -> None:
    result = talk(server.port, [request(f"h{i}: v" for i in range(20_000))])
    (response,) = result.responses
    error = refused(response, 431, "too_many_headers")
    assert "at most 100 headers (gateway.max_headers)" in error["message"]
    assert result.closed


def test_100_headers_pass_101_are_too_many(server: BackgroundServer) -> None:
    (ok,) = talk(server.port, [request(f"h{i}: v" for i in range(99))], until_closed=False).responses
    assert ok.status == 200 and ok.headers["x-scope-headers"] == "100"
    result = talk(server.port, [request(f"h{i}: v" for i in range(100))])
    refused(result.responses[0], 431, "too_many_headers")
    assert result.closed


def test_headers_at_the_limit_pass_one_byte_more_is_refused(server: BackgroundServer) -> None:
    base = len(request(["X-Pad: "]))
    at_limit = request(["X-Pad: " + "p" * (LIMIT - base)])
    assert len(at_limit) == LIMIT
    (ok,) = talk(server.port, [at_limit], until_closed=False).responses
    assert ok.status == 200 and ok.headers["x-scope-headers"] == "2"
    # the same, arriving a few bytes at a time (the blank line split across reads)
    pieces = [at_limit[i : i + 1000] for i in range(0, len(at_limit), 1000)]
    (ok,) = talk(server.port, pieces, until_closed=False).responses
    assert ok.status == 200
    result = talk(server.port, [request(["X-Pad: " + "p" * (LIMIT - base + 1)])])
    refused(result.responses[0], 431, "request_headers_too_large")
    assert result.closed


def test_keep_alive_and_large_bodies_are_unaffected(server: BackgroundServer) -> None:
    body = b"b" * (4 * 1024 * KIB)  # bodies are not headers
    first = request(["X-Pad: " + "p" * (LIMIT - 200)], method="POST", body=body)
    result = talk(server.port, [first, request()], responses=2, until_closed=False)
    assert [r.status for r in result.responses] == [200, 200]
    assert result.responses[0].json()["body_bytes"] == len(body)
    assert not result.closed and "connection" not in result.responses[1].headers


def next_response(sock: socket.socket, buffer: bytearray) -> Response:
    responses: list[Response] = []
    parse(buffer, responses)
    while not responses:
        data = sock.recv(1 << 16)
        assert data, "the connection closed"
        buffer += data
        parse(buffer, responses)
    return responses[0]


def test_keep_alive_two_requests_in_turn(server: BackgroundServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        buffer = bytearray()
        for _ in range(2):
            sock.sendall(request())
            response = next_response(sock, buffer)
            assert response.status == 200 and "connection" not in response.headers


def test_pipelined_oversized_request_after_good_ones(server: BackgroundServer) -> None:
    good = request(method="POST", body=b'{"hello": "world"}')
    oversized = request(["X-Huge: " + "h" * LIMIT], target="/v1/embeddings")
    after = request(target="/never-parsed")
    result = talk(server.port, [good + request() + oversized + after], responses=3)
    statuses = [r.status for r in result.responses]
    assert statuses == [200, 200, 431]
    refused(result.responses[2], 431, "request_headers_too_large")
    assert result.responses[2].headers["x-scope-path"] == "/v1/embeddings"
    assert result.responses[2].headers["connection"] == "close"
    assert result.closed


def test_pipelined_oversized_request_after_a_chunked_body(server: BackgroundServer) -> None:
    chunked = request(["Transfer-Encoding: chunked"], method="POST") + b"5\r\nhello\r\n0\r\n\r\n"
    oversized = request(["X-Huge: " + "h" * LIMIT])
    result = talk(server.port, [chunked + oversized], responses=2)
    assert [r.status for r in result.responses] == [200, 431]
    assert result.responses[0].json()["body_bytes"] == 5
    assert result.closed


def test_headers_that_never_finish_time_out(slow: BackgroundServer) -> None:
    started = time.monotonic()
    result = talk(slow.port, [b"POST /v1/responses HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: still com"])
    (response,) = result.responses
    error = refused(response, 408, "request_header_timeout")
    assert "gateway.header_timeout_s" in error["message"]
    assert 0.5 <= response.at - started < 3.0
    assert (response.headers["x-scope-method"], response.headers["x-scope-path"]) == ("POST", "/v1/responses")
    assert result.closed


def test_a_connection_that_sends_nothing_times_out(slow: BackgroundServer) -> None:
    started = time.monotonic()
    result = talk(slow.port, [])
    (response,) = result.responses
    refused(response, 408, "request_header_timeout")
    assert (response.headers["x-scope-method"], response.headers["x-scope-path"]) == ("GET", "/")
    assert 0.5 <= response.at - started < 3.0 and result.closed


def test_idle_keep_alive_is_not_a_header_timeout_and_each_request_has_its_own_clock(slow: BackgroundServer) -> None:
    with socket.create_connection(("127.0.0.1", slow.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(request())
        assert next_response(sock, buffer).status == 200
        # idle between requests for twice header_timeout_s: uvicorn's keep-alive timeout governs
        readable, _, _ = select.select([sock], [], [], 1.0)
        assert not readable, "the server answered or closed an idle keep-alive connection"
        sock.sendall(request())
        assert next_response(sock, buffer).status == 200
        started = time.monotonic()  # the next request's clock starts with its first byte
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x")
        response = next_response(sock, buffer)
        refused(response, 408, "request_header_timeout")
        assert 0.5 <= response.at - started < 3.0
        assert sock.recv(1 << 16) == b""  # closed


def test_by_name_the_class_reads_its_limits_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ferryman serve --workers N`` names the class (``http="ferryman.gateway.edge:LimitedHttpTools"``):
    each worker process reads the limits from its settings, as it builds its gateway."""
    monkeypatch.setenv("FERRYMAN_GATEWAY__MAX_HEADER_KB", "1")
    edge._settings_limits.cache_clear()
    running = start(http="ferryman.gateway.edge:LimitedHttpTools")
    try:
        (ok,) = talk(running.port, [request(["X-Pad: " + "p" * 900])], until_closed=False).responses
        assert ok.status == 200
        result = talk(running.port, [request(["X-Pad: " + "p" * 1024])])
        error = refused(result.responses[0], 431, "request_headers_too_large")
        assert "at most 1 KiB of headers (gateway.max_header_kb)" in error["message"]
    finally:
        running.stop()
        edge._settings_limits.cache_clear()
