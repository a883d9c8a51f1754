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
import functools
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

# The benchmarks call gpt-4o-mini, which shuts down on 2027-01-14: every mock they start (each a
# subprocess of this one) acts on a date before that, so a benchmark measures speed, not a refusal.
os.environ.setdefault("FERRYMAN_MOCK_TODAY", "2026-06-01")

# -- servers in subprocesses --------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``argv`` (which must listen on ``port``) in a subprocess; ready once it answers HTTP."""

    def __init__(
        self, name: str, argv: Sequence[str], port: int, host: str = HOST, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env  # None: this process's environment
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
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
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
            "--chunks", str(chunks), "--chunk-bytes", str(chunk_bytes)]  # fmt: skip
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
    server_cpu_fn: Callable[[], float | None] | None = None,
) -> LoadResult:
    """Keep ``concurrency`` calls of ``request`` in flight; measure the ``seconds`` after ``warmup``.

    ``request`` raises on failure (counted as an error). Requests completing inside the window
    count; their latencies give the percentiles. The server's CPU is ``server_cpu_fn()`` when given
    (e.g. a process tree's), else that of ``server_pid``.
    """
    read_cpu = server_cpu_fn
    if read_cpu is None and server_pid:
        read_cpu = functools.partial(process_cpu_seconds, server_pid)

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
    server_cpu0 = read_cpu() if read_cpu else None
    machine0 = machine_busy_seconds()
    client_cpu0, t0 = time.process_time(), time.perf_counter()
    recording = True
    await asyncio.sleep(seconds)
    recording = False
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - client_cpu0
    server_cpu1 = read_cpu() if read_cpu else None
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


# -- an OpenAI-shaped fixed-reply upstream (for the gateway benchmarks) ---------------------------

CHAT_MODEL = "gpt-4o-mini"
_CHUNK_HEAD = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":['  # noqa: E501


def _chunk_events(usage_null: bool) -> tuple[bytes, bytes, bytes]:
    """The role event, one content event and the finish event of a chat stream, as OpenAI sends
    them (with ``"usage":null`` on each when the caller asked for usage)."""
    tail = b',"usage":null}\n\n' if usage_null else b"}\n\n"

    def event(choice: bytes) -> bytes:
        return b"data: " + _CHUNK_HEAD + choice + b"]" + tail

    return (
        event(
            b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}'
        ),
        event(b'{"index":0,"delta":{"content":"tok "},"logprobs":null,"finish_reason":null}'),
        event(b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}'),
    )


def openai_app(chunks: int = 20, gap_ms: float = 0.0, prompt_tokens: int = 14) -> ASGIApp:
    """A raw ASGI app that answers every POST like ``/v1/chat/completions`` would, at no cost of
    its own: a fixed ``chat.completion`` with ``usage``, or, when the request body has
    ``"stream": true``, a ``chat.completion.chunk`` stream: a role event, N content events
    (N = the request's ``max_tokens``, else ``chunks``), a finish event, a usage event when
    ``stream_options.include_usage`` is set, then ``data: [DONE]``; one ASGI ``send`` per event,
    ``gap_ms`` apart (so each event is its own TCP segment, as real token streams are)."""
    import orjson

    role_u, content_u, finish_u = _chunk_events(usage_null=True)
    role, content, finish = _chunk_events(usage_null=False)
    json_headers = [(b"content-type", b"application/json")]
    sse_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    gap = gap_ms / 1000

    def usage(completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}  # fmt: skip

    def plain(completion: int) -> bytes:
        return orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 1700000000,
                "model": CHAT_MODEL,
                "system_fingerprint": "fp_bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * completion, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage(completion),
            }
        )

    plain_default = plain(chunks)

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
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        n = body.get("max_tokens") or body.get("max_completion_tokens") or chunks
        n = max(1, min(int(n), 4096))
        if not body.get("stream"):
            reply = plain_default if n == chunks else plain(n)
            headers = [*json_headers, (b"content-length", str(len(reply)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": reply})
            return
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True
        first, middle, last = (role_u, content_u, finish_u) if with_usage else (role, content, finish)
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": middle, "more_body": True})
        await send({"type": "http.response.body", "body": last, "more_body": True})
        if with_usage:
            tail = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[],"usage":'  # noqa: E501
            event = b"data: " + tail + orjson.dumps(usage(n)) + b"}\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    return app


def serve_openai(argv: Sequence[str]) -> None:
    import uvicorn

    from ferryman.mock.server import uvicorn_config

    parser = argparse.ArgumentParser(prog="_common.py openai")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    uvicorn.Server(uvicorn_config(openai_app(args.chunks, args.gap_ms), HOST, args.port)).run()


def openai_server(port: int, chunks: int = 20, gap_ms: float = 0.0) -> ServerProcess:
    """:func:`openai_app` in its own subprocess (uvloop + httptools, the mock's uvicorn options)."""
    here = os.path.abspath(__file__)
    argv = [sys.executable, here, "openai", "--port", str(port), "--chunks", str(chunks), "--gap-ms", str(gap_ms)]
    return ServerProcess("OpenAI-shaped upstream", argv, port)


# -- a process and its children: CPU and memory -----------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (Linux only; a server with worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` and its living descendants (Linux only)."""
    total = [process_cpu_seconds(p) for p in process_tree(pid)]
    known = [t for t in total if t is not None]
    return sum(known) if known else None


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """Resident memory of ``pid`` and its descendants in MiB (``VmHWM``: the peak; Linux only)."""
    total = 0
    found = False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        found = True
        except OSError:
            continue
    return round(total / 1024, 1) if found else None


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "hello":
        serve_hello(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "openai":
        serve_openai(sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/_common.py hello --port N [--body-bytes B] [--chunks K] [--chunk-bytes C]")
