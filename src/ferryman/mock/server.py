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
    """An ASGI app (by default the mock) on a free loopback port, on its own thread and event loop."""

    name = "mock"

    def __init__(
        self,
        app: Any = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        config: Any = None,
    ) -> None:
        self.app = app or MockApp()
        self.host = host
        self.port = port or free_port(host)
        config = config or uvicorn_config(self.app, self.host, self.port)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"ferryman-{self.name}-{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._server.serve()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> BackgroundServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the {self.name} server failed to start")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
