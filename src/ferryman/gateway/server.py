"""Running the gateway: uvicorn (uvloop + httptools) in the foreground, or on a thread for tests.

uvicorn's own graceful shutdown stops accepting connections and waits up to ``drain_s`` for
requests in progress (open streams included); the gateway's lifespan marks itself not ready
first. Its access log is off: the gateway writes its own, without secrets.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn

from ferryman.gateway.app import Gateway
from ferryman.mock.server import free_port


def uvicorn_config(gateway: Gateway, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "loop": "uvloop",
        "http": "httptools",
        "timeout_graceful_shutdown": int(gateway.settings.gateway.drain_s),
        "timeout_keep_alive": 75,
        "backlog": 4096,
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(gateway, **options)


def app_from_env() -> Gateway:
    """The gateway of one worker process (``ferryman serve --workers N``)."""
    from ferryman.config import load
    from ferryman.logs import configure_json_logging

    configure_json_logging("INFO")
    return Gateway(load())


def serve(gateway: Gateway, host: str, port: int, **overrides: Any) -> None:
    uvicorn.Server(uvicorn_config(gateway, host, port, **overrides)).run()


class BackgroundGateway:
    """A gateway on a free loopback port, on its own thread and event loop (for tests)."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn_config(gateway, self.host, self.port, timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._run, name=f"ferryman-gateway-{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.loop.run_until_complete(self._server.serve())

    def start(self) -> BackgroundGateway:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the gateway failed to start")
            self._thread.join(0.01)
        return self

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop (e.g. ``gateway.keys.create(...)``) and wait."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> BackgroundGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
