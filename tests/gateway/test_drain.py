"""SIGTERM drains: ``/readyz`` answers 503 for the whole drain, the stream in flight runs to its end,
and then the process exits 0.

A load balancer learns to stop sending from the 503; a gateway that refused connections the moment
the signal came (uvicorn's own shutdown) would look crashed instead, and cut nothing shorter. The
upstream here is the mock behind a gate that holds every chat stream after its first chunk until
the test opens it, so the stream is certainly in flight while ``/readyz`` is asked: no sleeps, only
events (the first chunk read, the 503 seen, the gate opened). A real ``ferryman serve`` subprocess,
in one process and with ``--workers 2`` (where each worker drains itself).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ferryman.mock.app import MockApp
from ferryman.mock.server import BackgroundServer
from tests.gateway.processes import GatewayProcess, gateway_env, start_gateway

HOLD_S = 60  # the gate's own limit, should a test fail before it opens it


class HeldStreams:
    """The mock, each chat stream held after its first body chunk until ``release`` is set."""

    def __init__(self) -> None:
        self.mock = MockApp()
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.mock(scope, receive, send)
            return
        chunks = 0

        async def held(message: dict[str, Any]) -> None:
            nonlocal chunks
            if message["type"] == "http.response.body" and message.get("body"):
                if chunks:
                    await asyncio.to_thread(self.release.wait, HOLD_S)
                chunks += 1
            await send(message)

        await self.mock(scope, receive, held)


@pytest.fixture
def held_upstream() -> Iterator[tuple[BackgroundServer, HeldStreams]]:
    app = HeldStreams()
    server = BackgroundServer(app).start()
    try:
        yield server, app
    finally:
        app.release.set()
        server.stop()


def readyz(process: GatewayProcess) -> httpx2.Response:
    """``/readyz`` on a new connection (as a load balancer's probe); a refused connection raises."""
    return httpx2.get(process.url + "/readyz", timeout=10)


def wait_until_draining(process: GatewayProcess, deadline_s: float = 20) -> list[int]:
    """Poll ``/readyz`` until 503 (the signal has been handled); every answer before it is 200."""
    statuses = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        reply = readyz(process)
        statuses.append(reply.status_code)
        if reply.status_code == 503:
            assert reply.json() == {"status": "draining"}
            return statuses
        assert reply.status_code == 200, reply.text
        time.sleep(0.02)  # polling with a deadline, not ordering
    raise AssertionError(f"/readyz did not turn 503 within {deadline_s}s: {statuses[-5:]}")


@pytest.mark.parametrize("workers", [1, 2])
def test_readyz_is_503_while_a_stream_drains_then_the_process_exits_0(
    held_upstream: tuple[BackgroundServer, HeldStreams], tmp_path: Path, workers: int
):
    upstream, gate = held_upstream
    env = gateway_env(upstream.base_url, tmp_path / "data")
    process = start_gateway(env, tmp_path / "work", "--workers", str(workers))
    try:
        process.wait_ready(180 if workers > 1 else 30)  # workers each import everything: slow on a busy machine
        key, _ = process.create_key("drain")
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with (
            httpx2.Client(timeout=HOLD_S) as http,
            http.stream(
                "POST", process.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
            ) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"]

            process.process.send_signal(signal.SIGTERM)
            wait_until_draining(process)
            # Still draining, still listening: the stream is held upstream, so it is in flight.
            assert readyz(process).status_code == 503
            assert httpx2.get(process.url + "/healthz", timeout=10).status_code == 200
            assert process.process.poll() is None

            gate.release.set()
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(line.removeprefix("data: ")) for line in rest[:-1]]
        assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in finish)
        assert process.process.wait(60) == 0, process.output()[-3000:]
        with pytest.raises(httpx2.TransportError):  # gone, once drained
            readyz(process)
        assert "draining" in process.output()
        process.assert_no_secrets_logged()
    finally:
        gate.release.set()
        process.stop()
