"""Running the gateway: uvicorn (uvloop + httptools) in the foreground, in worker processes, or on
a thread for tests, all from the one configuration here (:func:`uvicorn_config`).

httptools runs with the header limits of :mod:`ferryman.gateway.edge` (``gateway.max_header_kb``,
``max_headers``, ``header_timeout_s``); a breach reaches the app as a refusal, answered and audited.

The socket is bound first (:func:`bind`), so that ``ferryman serve`` prints its address only once
it holds it, and a busy port is one clear error rather than uvicorn's log line and exit 3.

Drain: uvicorn alone closes its listening socket the moment SIGTERM comes, so a load balancer
polling ``/readyz`` sees connections refused instead of the 503 that tells it to stop sending.
:class:`DrainingServer` (in the foreground and in every worker) first marks the gateway draining and
keeps listening and serving until nothing is in flight or ``gateway.drain_s`` has passed, then
shuts down as uvicorn does. Its access log is off: the gateway writes its own, without secrets.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from ferryman.config import GatewaySettings
from ferryman.gateway.app import Gateway
from ferryman.gateway.edge import protocol_for
from ferryman.mock.server import BackgroundServer, free_port

log = logging.getLogger("ferryman.gateway")

APP_FROM_ENV = "ferryman.gateway.server:app_from_env"  # what each worker process serves
WORKER_HEALTHCHECK_S = 60  # --workers: seconds a worker may take to answer uvicorn's health check


def uvicorn_config(
    app: Gateway | str,
    host: str,
    port: int,
    *,
    settings: GatewaySettings | None = None,
    workers: int = 1,
    **overrides: Any,
) -> uvicorn.Config:
    """uvicorn's configuration for ``app``: a :class:`Gateway`, or :data:`APP_FROM_ENV` for worker
    processes (each builds its own gateway from the environment; ``settings`` are then the parent's
    ``[gateway]`` settings, for the drain time)."""
    if isinstance(app, Gateway):
        settings = app.settings.gateway
        http: Any = protocol_for(settings)  # httptools with these settings' header limits
    else:
        settings = settings or GatewaySettings()
        http = "ferryman.gateway.edge:LimitedHttpTools"  # by name: each worker reads its own limits
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "loop": "uvloop",
        "http": http,
        "timeout_graceful_shutdown": int(settings.drain_s),
        "timeout_keep_alive": 75,
        "backlog": 4096,
        "server_header": False,
    }
    if isinstance(app, str):
        # uvicorn kills a worker that does not answer its health check within this, and a new
        # worker answers only once it has imported Ferryman: uvicorn's 5 s would kill and
        # respawn every worker forever on a busy machine. A hung worker is replaced after it.
        options.update(factory=True, workers=workers, timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)
    options.update(overrides)
    return uvicorn.Config(app, **options)


def app_from_env() -> Gateway:
    """The gateway of one worker process (``ferryman serve --workers N``).

    Its settings come from the environment the parent left: the file and ``FERRYMAN_*``, the
    command line's store, the admin key's reference, and the embedded mock's
    ``FERRYMAN_DEPLOYMENTS`` when the parent runs one, so every worker sends calls where the
    parent's banner said. Settings that would make the parent start the embedded mock (no
    deployments, no ``OPENAI_API_KEY``, no ``OPENAI_BASE_URL``) mean the mock was not passed on:
    refused, rather than calling OpenAI's API with no key."""
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


# -- binding --------------------------------------------------------------------------------------


class BindError(Exception):
    """The address cannot be listened on; the message says why in one line, and what to change."""


class _BindFailure(logging.Filter):
    """Keeps the error uvicorn's ``bind_socket`` logs (and then exits on) off the log, for :func:`bind`."""

    def __init__(self) -> None:
        super().__init__()
        self.error: OSError | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, OSError):
            self.error = record.msg
            return False
        return True


def bind(config: uvicorn.Config) -> socket.socket:
    """The listening socket of ``config`` (``Config.bind_socket``), or :class:`BindError`. It listens
    at once: a client that connects as soon as the banner is printed waits in the backlog until the
    server accepts, rather than being refused."""
    failure = _BindFailure()
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(failure)
    try:
        sock = config.bind_socket()
        sock.listen(config.backlog)
        return sock
    except SystemExit:  # uvicorn logs the OSError (caught by the filter) and exits 3
        raise BindError(_bind_message(config.host, config.port, failure.error)) from None
    finally:
        logger.removeFilter(failure)


def _bind_message(host: str, port: int, error: OSError | None) -> str:
    code = error.errno if error is not None else None
    if code == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (choose another with --port)"
    if code == errno.EACCES:
        return f"port {port} on {host} needs privileges this user lacks (choose one above 1023 with --port)"
    if code == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine (choose another with --host)"
    reason = (error.strerror or str(error)) if error is not None else "unknown error"
    return f"cannot listen on port {port} on {host}: {reason}"


# -- serving and draining -------------------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on the first SIGTERM or SIGINT before it shuts down.

    The signal marks the gateway draining (``/readyz`` answers 503 ``draining``) and nothing else:
    the socket stays open and requests are served, so a load balancer sees the 503 and stops
    sending while open streams run on. Once no request or stream is in flight, or ``drain_s`` has
    passed, uvicorn's own shutdown runs (stop listening, finish, lifespan shutdown) with what is
    left of ``drain_s``. While draining a SIGTERM changes nothing; a SIGINT (Ctrl+C again) stops
    waiting, and one more forces the exit, as in uvicorn. The signal is not raised again at the end
    (uvicorn does): a drained gateway exits with status 0."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drain_until: float | None = None  # monotonic deadline, once a signal came
        self._announced = False

    def gateway(self) -> Gateway | None:
        """The served gateway, under uvicorn's middleware (None before the app is loaded)."""
        app = getattr(self.config, "loaded_app", None)
        for _ in range(8):
            if isinstance(app, Gateway):
                return app
            app = getattr(app, "app", None)
        return None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler, run between two bytecodes of the event loop: it only sets flags.
        if self.started and self.drain_until is None and not self.should_exit:
            gateway = self.gateway()
            drain_s = gateway.settings.gateway.drain_s if gateway is not None else 0.0
            self.drain_until = time.monotonic() + drain_s
            if gateway is not None:
                gateway.start_draining()
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        elif sig == signal.SIGINT or not self.started:
            self.should_exit = True

    def in_flight(self) -> int:
        """Requests being answered (a stream is one until its last byte) and streams still open."""
        gateway = self.gateway()
        return max(len(self.server_state.tasks), gateway.proxy.open_streams if gateway is not None else 0)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and not self.should_exit:
            busy = self.in_flight()
            left = self.drain_until - time.monotonic()
            if not self._announced:
                self._announced = True
                log.info("gateway: draining: /readyz answers 503; %d requests in flight, %.0fs to finish", busy, left)
            if not busy or left <= 0:
                self.should_exit = True
                # uvicorn's shutdown waits this long for what is still running: the drain's rest.
                self.config.timeout_graceful_shutdown = max(1, math.ceil(left))
        return await super().on_tick(counter)


class _DrainingWorker(multiprocess.Process):
    """A worker process of uvicorn's supervisor that serves with :class:`DrainingServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


@contextlib.contextmanager
def _draining_workers() -> Iterator[None]:
    """uvicorn's supervisor names its worker class at every start (first, replacing a dead or
    hung one, SIGHUP, SIGTTIN) and has no option for it: it is swapped for the supervisor's run."""
    original = multiprocess.Process
    setattr(multiprocess, "Process", _DrainingWorker)  # noqa: B010  (a class, not a variable, to mypy)
    try:
        yield
    finally:
        setattr(multiprocess, "Process", original)  # noqa: B010


def serve(gateway: Gateway, host: str, port: int, sock: socket.socket | None = None, **overrides: Any) -> None:
    """Serve ``gateway`` in this process until a signal and its drain, on ``sock`` if bound already."""
    server = DrainingServer(uvicorn_config(gateway, host, port, **overrides))
    server.run(sockets=[sock] if sock is not None else None)


def serve_workers(config: uvicorn.Config, sock: socket.socket) -> None:
    """``config.workers`` processes serving :data:`APP_FROM_ENV` on ``sock``, under uvicorn's
    supervisor (health checks, replacement); on SIGTERM it signals each, and each drains itself."""
    with _draining_workers():
        multiprocess.Multiprocess(config, sockets=[sock]).run()


class BackgroundGateway(BackgroundServer):
    """A gateway on a free loopback port, on its own thread and event loop (for tests);
    ``call(coroutine)`` runs e.g. ``gateway.keys.create(...)`` on that loop."""

    name = "gateway"

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int | None = None) -> None:
        port = port or free_port(host)
        config = uvicorn_config(gateway, host, port, timeout_graceful_shutdown=5, loop="asyncio")
        super().__init__(gateway, host, port, config)
        self.gateway = gateway
