"""Shared helpers for the benchmarks in this folder.

- ``ServerProcess``: run a server in its own subprocess on a free loopback port and wait until it
  answers HTTP (so the load generator never shares the server's CPU core in-process).
- ``hello_json_app`` / ``hello_stream_app``: raw ASGI baselines, served with exactly the uvicorn
  options the mock uses (``ferryman.mock.server.uvicorn_config``). Run one with
  ``python benchmarks/_common.py hello --port N [--body-bytes B --chunks K --chunk-bytes C]``.
- ``run_load``: a closed-loop async load generator (N workers, warm-up, measured window) that
  reports requests/s, latency percentiles, errors and the CPU the client and server used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx2

HOST = "127.0.0.1"
T = TypeVar("T")

# -- servers in subprocesses --------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``argv`` (which must listen on ``port``) in a subprocess; ready once it answers HTTP."""

    def __init__(self, name: str, argv: Sequence[str], port: int, host: str = HOST) -> None:
        self.name = name
        self.argv = list(argv)
        self.host = host
        self.port = port
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in __exit__
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.output()}")
            try:
                httpx2.get(self.url + "/", timeout=1.0)  # any HTTP answer (even a 404) means it is up
                return self
            except httpx2.TransportError:
                time.sleep(0.05)  # polling a subprocess's readiness, not ordering
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used so far (Linux only)."""
        return process_cpu_seconds(self.pid)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()


def process_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU time all CPUs spent busy (not idle or waiting for I/O) since boot (Linux only)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def hello_server(port: int, body_bytes: int = 600, chunks: int = 20, chunk_bytes: int = 260) -> ServerProcess:
    here = os.path.abspath(__file__)
    argv = [sys.executable, here, "hello", "--port", str(port), "--body-bytes", str(body_bytes),
            "--chunks", str(chunks), "--chunk-bytes", str(chunk_bytes)]
    return ServerProcess("hello-world server", argv, port)


# -- baseline ASGI apps ---------------------------------------------------------------------------


def padded_json(size: int) -> bytes:
    """A chat-completion-shaped JSON body of (at least) ``size`` bytes."""
    head = b'{"id":"chatcmpl-hello","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"'  # noqa: E501
    tail = b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":32,"total_tokens":46}}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def sse_chunk(size: int) -> bytes:
    """One ``data: {json}\\n\\n`` event of (at least) ``size`` bytes."""
    head, tail = b'data: {"choices":[{"delta":{"content":"', b'"}}]}\n\n'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def hello_app(body_bytes: int = 600, chunks: int = 20, chunk_bytes: int = 260) -> ASGIApp:
    """A raw ASGI app: any request answers a fixed JSON body, or, when the request body has
    ``"stream":true``, ``chunks`` SSE events of ``chunk_bytes`` each (one ``send`` per event, as the
    mock does) then ``data: [DONE]``."""
    json_body = padded_json(body_bytes)
    json_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(json_body)).encode())]
    sse_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    event = sse_chunk(chunk_bytes)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream":true' not in body:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": json_body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    return app


def serve_hello(argv: Sequence[str]) -> None:
    import uvicorn

    from ferryman.mock.server import uvicorn_config

    parser = argparse.ArgumentParser(prog="_common.py hello")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-bytes", type=int, default=600)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-bytes", type=int, default=260)
    args = parser.parse_args(argv)
    app = hello_app(args.body_bytes, args.chunks, args.chunk_bytes)
    # The very options the mock is served with (loop, http implementation, backlog, ...).
    uvicorn.Server(uvicorn_config(app, HOST, args.port)).run()


# -- load generation ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    name: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_pct: float
    server_cpu_pct: float | None
    server_cpu_us_per_request: float | None
    server_bound_rps: float | None  # 1 s / server CPU per request: req/s if the server had a whole core
    other_cpu_pct: float | None  # CPU the rest of the machine used meanwhile (other processes, kernel softirq)
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def make_client(concurrency: int, timeout: float = 30.0) -> httpx2.AsyncClient:
    """The one client configuration every benchmark run uses, so comparisons are like for like."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx2.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


async def run_load(
    name: str,
    request: Callable[[], Awaitable[None]],
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pid: int | None = None,
) -> LoadResult:
    """Keep ``concurrency`` calls of ``request`` in flight; measure the ``seconds`` after ``warmup``.

    ``request`` raises on failure (counted as an error). Requests completing inside the window
    count; their latencies give the percentiles.
    """
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    recording = False
    stop = False

    async def worker() -> None:
        nonlocal errors, first_error
        while not stop:
            start = time.perf_counter()
            try:
                await request()
            except Exception as exc:
                if recording:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            if recording:
                latencies.append(time.perf_counter() - start)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    server_cpu0 = process_cpu_seconds(server_pid) if server_pid else None
    machine0 = machine_busy_seconds()
    client_cpu0, t0 = time.process_time(), time.perf_counter()
    recording = True
    await asyncio.sleep(seconds)
    recording = False
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - client_cpu0
    server_cpu1 = process_cpu_seconds(server_pid) if server_pid else None
    machine1 = machine_busy_seconds()
    stop = True
    await asyncio.gather(*workers, return_exceptions=True)

    latencies.sort()
    n = len(latencies)
    server_cpu = server_cpu1 - server_cpu0 if server_cpu0 is not None and server_cpu1 is not None else None
    other = None
    if machine0 is not None and machine1 is not None:
        other = max(0.0, machine1 - machine0 - client_cpu - (server_cpu or 0.0))
    return LoadResult(
        name=name,
        requests=n,
        errors=errors,
        seconds=round(elapsed, 3),
        rps=round(n / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        client_cpu_pct=round(100 * client_cpu / elapsed, 1),
        server_cpu_pct=None if server_cpu is None else round(100 * server_cpu / elapsed, 1),
        server_cpu_us_per_request=None if server_cpu is None or not n else round(1e6 * server_cpu / n, 1),
        server_bound_rps=None if not server_cpu or not n else round(n / server_cpu),
        other_cpu_pct=None if other is None else round(100 * other / elapsed, 1),
        first_error=first_error,
    )


def run(main: Awaitable[T], use_uvloop: bool = True) -> tuple[T, str]:
    """Run the load generator's coroutine, on uvloop when available (a faster client raises its
    ceiling). Returns its result and the event loop's name."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main), "uvloop"  # type: ignore[arg-type]
    return asyncio.run(main), "asyncio"  # type: ignore[arg-type]


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for i, row in enumerate(cells):
        padded = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("  ".join(padded))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "hello":
        serve_hello(sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/_common.py hello --port N [--body-bytes B] [--chunks K] [--chunk-bytes C]")
