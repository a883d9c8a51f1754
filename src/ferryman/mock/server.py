"""Running the mock: in the foreground for the CLI, or on a background thread for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn

from ferryman.mock.app import MockApp


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_config(app: MockApp, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 2,
        "backlog": 4096,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(app: MockApp, host: str = "127.0.0.1", port: int = 8000, **overrides: Any) -> None:
    uvicorn.Server(uvicorn_config(app, host, port, **overrides)).run()


class BackgroundServer:
    """The mock on a free loopback port, on its own thread and event loop."""

    def __init__(self, app: MockApp | None = None, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.app = app or MockApp()
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port))
        self._thread = threading.Thread(target=self._run, name=f"ferryman-mock-{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self) -> BackgroundServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the mock server failed to start")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
