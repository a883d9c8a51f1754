"""The gateway as one ASGI app: ``/v1/…`` (the proxy), ``/admin/…``, ``/ui``, ``/metrics``,
``/healthz`` and ``/readyz``.

``/v1/…`` goes straight to :class:`~ferryman.gateway.proxy.Proxy` (a raw ASGI handler: the hot
path pays for no routing or request objects); everything else is a small Starlette app. The
pipeline is the in-SDK one (:func:`ferryman.pipeline.build`) with callers' own limits and budgets
on, and the gateway's front stages (authentication, intake, ownership) inside the guard.

It keeps the upstreams' model shutdown dates fresh (``lifecycle.refresh_s``, daily by default:
:func:`ferryman.lifecycle_store.keep_fresh`) for the lifecycle stage.

Shutdown drains: on SIGTERM ``/readyz`` turns 503 at once while the server keeps listening (so a
load balancer, still able to ask, stops sending: :class:`~ferryman.gateway.server.DrainingServer`),
and open streams get ``gateway.drain_s`` to finish before the upstream connections close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ferryman.catalogue import UpstreamDate
from ferryman.config import Settings
from ferryman.gateway.access_log import AccessLog
from ferryman.gateway.admin import AdminAPI
from ferryman.gateway.auth import Authenticate
from ferryman.gateway.intake import Intake
from ferryman.gateway.keys import KeyCache, KeyStore
from ferryman.gateway.ownership import Ownership
from ferryman.gateway.proxy import Proxy, Receive, Send
from ferryman.lifecycle_store import keep_fresh
from ferryman.pipeline import Stage, build
from ferryman.pipeline.lifecycle import ModelLifecycle
from ferryman.pipeline.telemetry import REGISTRY
from ferryman.secrets import resolve_optional
from ferryman.store import Store, open_store

log = logging.getLogger("ferryman.gateway")
UI = Path(__file__).parent / "ui"
READY_MIN_FREE = 1024 * 1024  # bytes free beside an SQLite database below which /readyz says the disk is full

GATEWAY_REGISTRY = CollectorRegistry(auto_describe=True)
OPEN_STREAMS = Gauge(
    "ferryman_gateway_open_streams", "Streams the gateway is forwarding now.", registry=GATEWAY_REGISTRY
)


def warm_up() -> None:
    """Load the tokenizers before the first call needs them (they take a few hundred ms)."""
    from ferryman.tokens import count_request_prompt_tokens

    for model in ("gpt-4o-mini", "gpt-4"):
        count_request_prompt_tokens(
            "/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self._refresher: asyncio.Task[None] | None = None
        self.dates_refreshed = asyncio.Event()  # set after each refresh of the shutdown dates (for tests)
        self.store = store or open_store(settings)
        self.keys = KeyStore(self.store)
        self.key_cache = KeyCache(self.keys, settings.gateway.key_cache_s)
        self.ownership = Ownership(self.store, settings.gateway.pass_through)
        auth = Authenticate(self.key_cache)
        front: list[Stage] = [auth, Intake.from_settings(settings), self.ownership]
        self.pipeline = build(settings, store=self.store, transport=transport, principals=True, front=front)
        self.proxy = Proxy(self.pipeline, AccessLog(settings.gateway.access_log), auth)
        OPEN_STREAMS.set_function(lambda: self.proxy.open_streams)
        self.draining = False
        self.admin = AdminAPI(self)
        self.admin_secret()  # resolved once now, so redaction knows it before any request quotes it
        self.router = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics),
                Route("/ui", self.ui),
                Route("/ui/{file:path}", self.ui_file),
                Route("/", lambda _: RedirectResponse("/ui")),
                *self.admin.routes(),
            ],
        )

    def admin_secret(self) -> str | None:
        secret = resolve_optional(self.settings.gateway.admin_key)
        return secret.reveal() if secret is not None else None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith("/v1/"):
            await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.to_thread(warm_up)
                self._start_refresher()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_refresher(self) -> None:
        """Keep the upstreams' shutdown dates fresh (``lifecycle.refresh_s``) for the lifecycle stage."""
        every = self.settings.lifecycle.refresh_s
        stage = self.pipeline.stage(ModelLifecycle)
        if every <= 0 or not isinstance(stage, ModelLifecycle) or self._refresher is not None:
            return
        def use(dates: dict[str, UpstreamDate]) -> None:
            stage.use_upstream_dates(dates)
            self.dates_refreshed.set()

        refresher = keep_fresh(self.settings, self.store, every, use, self.transport)
        self._refresher = asyncio.get_running_loop().create_task(refresher, name="ferryman-lifecycle-refresh")

    def start_draining(self) -> None:
        """Stop being ready: ``/readyz`` answers 503 ``draining`` from now on, while requests are
        still served. Only sets a flag, so a signal handler may call it."""
        self.draining = True

    async def shutdown(self) -> None:
        """Stop being ready, let open streams finish (up to ``drain_s``), close the upstreams."""
        self.start_draining()
        if self._refresher is not None:
            self._refresher.cancel()
        try:
            await asyncio.wait_for(self.proxy.streams_idle.wait(), self.settings.gateway.drain_s)
        except TimeoutError:
            log.warning(
                "gateway: %d streams still open after %gs; closing",
                self.proxy.open_streams,
                self.settings.gateway.drain_s,
            )
        close = getattr(self.pipeline.terminal, "aclose", None)
        if close is not None:
            await close()

    # -- operations -----------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.draining:
            return JSONResponse({"status": "draining"}, 503)
        checks: dict[str, str] = {}

        def ping_db() -> None:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(self.store.run(ping_db), 2.0)
            checks["database"] = "ok"
        except Exception as error:
            checks["database"] = f"failing: {type(error).__name__}"
        free = self.store.disk_free()
        if free is not None:  # a full disk fails every write while reads (the ping) still work
            checks["disk"] = "ok" if free >= READY_MIN_FREE else f"failing: disk full ({free // 1024} KiB free)"
        redis = self.store.redis()
        if redis is not None:
            try:
                await asyncio.wait_for(redis.ping(), 2.0)
                checks["redis"] = "ok"
            except Exception as error:
                checks["redis"] = f"failing: {type(error).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        body = generate_latest(REGISTRY) + generate_latest(GATEWAY_REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def ui(self, request: Request) -> Response:
        index = UI / "index.html"
        if not index.exists():
            return PlainTextResponse("The dashboard is not installed.", 404)
        return FileResponse(index, headers={"cache-control": "no-store"})

    async def ui_file(self, request: Request) -> Response:
        name = request.path_params["file"]
        path = (UI / name).resolve()
        if not path.is_file() or UI.resolve() not in path.parents:
            return PlainTextResponse("Not found", 404)
        return FileResponse(path)
