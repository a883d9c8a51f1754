"""Raw HTTP/1.1 over a socket, for requests an HTTP client would normalise (``..``, ``%2e``,
backslashes, odd bytes in the request target): the bytes go out exactly as given, and the reply
is read by hand (status line, headers, a ``Content-Length`` or chunked body, or up to the close).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawReply:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; repeats joined by ", "
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def _read_line(stream: Any) -> bytes:
    line = stream.readline(65537)
    if not line:
        raise ConnectionError("the server closed the connection before a full reply")
    return line.rstrip(b"\r\n")


def read_reply(stream: Any) -> RawReply:
    status_line = _read_line(stream).decode("latin-1")
    version, _, rest = status_line.partition(" ")
    assert version.startswith("HTTP/1."), f"not an HTTP/1.x status line: {status_line!r}"
    code, _, reason = rest.partition(" ")
    headers: dict[str, str] = {}
    while line := _read_line(stream):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = b""
    if int(code) in (204, 304) or 100 <= int(code) < 200:
        pass
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int(_read_line(stream).split(b";")[0].strip(), 16)
            if size == 0:
                while _read_line(stream):  # trailers, up to the blank line
                    pass
                break
            parts.append(stream.read(size))
            stream.read(2)  # the CRLF after each chunk
        body = b"".join(parts)
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    else:
        body = stream.read()
    return RawReply(int(code), reason, headers, body)


def send_raw(base_url: str, data: bytes, timeout: float = 30) -> RawReply:
    """Send ``data`` (a whole request, as bytes) to the host of ``base_url``; the reply."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout) as sock:
        sock.sendall(data)
        with sock.makefile("rb") as stream:
            return read_reply(stream)


def request(
    base_url: str,
    method: str,
    target: str | bytes,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30,
) -> RawReply:
    """``method target HTTP/1.1`` with ``Host``, ``Connection: close`` and ``Content-Length`` (when
    there is a body) added; ``target`` is sent byte for byte (a str as latin-1)."""
    parts = urlsplit(base_url)
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + raw_target + b" HTTP/1.1", f"Host: {parts.netloc}".encode()]
    given = {k.lower(): v for k, v in (headers or {}).items()}
    lines += [f"{k}: {v}".encode("latin-1") for k, v in given.items()]
    if body and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}".encode())
    if "connection" not in given:
        lines.append(b"Connection: close")
    return send_raw(base_url, b"\r\n".join(lines) + b"\r\n\r\n" + body, timeout)
