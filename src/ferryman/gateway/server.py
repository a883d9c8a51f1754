"""Running the gateway: uvicorn (uvloop + httptools) in the foreground, or on a thread for tests.

uvicorn's own graceful shutdown stops accepting connections and waits up to ``drain_s`` for
requests in progress (open streams included); the gateway's lifespan marks itself not ready
first. Its access log is off: the gateway writes its own, without secrets.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ferryman.gateway.app import Gateway
from ferryman.mock.server import BackgroundServer, free_port


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


class BackgroundGateway(BackgroundServer):
    """A gateway on a free loopback port, on its own thread and event loop (for tests);
    ``call(coroutine)`` runs e.g. ``gateway.keys.create(...)`` on that loop."""

    name = "gateway"

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int | None = None) -> None:
        port = port or free_port(host)
        config = uvicorn_config(gateway, host, port, timeout_graceful_shutdown=5, loop="asyncio")
        super().__init__(gateway, host, port, config)
        self.gateway = gateway
