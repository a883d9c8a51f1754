"""Running the gateway: uvicorn (uvloop + httptools) in the foreground, or on a thread for tests.

httptools runs with the header limits of :mod:`ferryman.gateway.edge` (``gateway.max_header_kb``,
``max_headers``, ``header_timeout_s``); a breach reaches the app as a refusal, answered and audited.

uvicorn's own graceful shutdown stops accepting connections and waits up to ``drain_s`` for
requests in progress (open streams included); the gateway's lifespan marks itself not ready
first. Its access log is off: the gateway writes its own, without secrets.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ferryman.gateway.app import Gateway
from ferryman.gateway.edge import protocol_for
from ferryman.mock.server import BackgroundServer, free_port


def uvicorn_config(gateway: Gateway, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "loop": "uvloop",
        "http": protocol_for(gateway.settings.gateway),  # httptools with header limits
        "timeout_graceful_shutdown": int(gateway.settings.gateway.drain_s),
        "timeout_keep_alive": 75,
        "backlog": 4096,
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(gateway, **options)


def app_from_env() -> Gateway:
    """The gateway of one worker process (``ferryman serve --workers N``).

    Its settings come from the environment the parent left: the file and ``FERRYMAN_*``, the
    command line's store, and the embedded mock's ``FERRYMAN_DEPLOYMENTS`` when the parent runs
    one, so every worker sends calls where the parent's banner said. Settings that would make the
    parent start the embedded mock (no deployments, no ``OPENAI_API_KEY``, no ``OPENAI_BASE_URL``)
    mean the mock was not passed on: refused, rather than calling OpenAI's API with no key."""
    import os

    from ferryman.config import load
    from ferryman.logs import configure_json_logging

    configure_json_logging("INFO")
    settings = load()
    keyless = not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
    if keyless and not settings.deployments_configured:
        raise RuntimeError(
            "ferryman gateway worker: no upstream (no deployments, OPENAI_API_KEY or OPENAI_BASE_URL), and no "
            "embedded mock passed on in FERRYMAN_DEPLOYMENTS: start workers with `ferryman serve --workers N`, "
            "or configure [[deployments]]"
        )
    return Gateway(settings)


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
