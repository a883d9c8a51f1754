"""The upstreams: deployments that serve models, and the pipeline's terminal handler.

A :class:`Deployment` is one place to send a call (OpenAI, Azure OpenAI with its deployment
paths and ``api-version``, or any OpenAI-compatible base URL), with its keys (taken in turn)
and a pooled ``httpx2.AsyncClient``. :class:`Upstream` sends an exchange to the deployment the
routing stage chose and returns the reply, streamed when the upstream streams.
"""

from __future__ import annotations

import fnmatch
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from ferryman.config import DeploymentSettings, Settings
from ferryman.exchange import Exchange, Reply
from ferryman.secrets import Secret, resolve_optional

_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
POOL_SHARDS = 8
_SHARD_LIMITS = httpx2.Limits(max_connections=125, max_keepalive_connections=25, keepalive_expiry=30)


class Deployment:
    def __init__(self, settings: DeploymentSettings, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.keys: list[Secret] = [s for s in (resolve_optional(ref) for ref in settings.api_keys) if s]
        self._next_key = itertools.cycle(range(len(self.keys))) if self.keys else None
        # Several small connection pools, used in turn: httpcore's pool looks at every one of its
        # connections whenever a request starts or ends, so one big pool costs O(connections)
        # per request at high concurrency (a fifth of the gateway's CPU at 64 in flight).
        shards = 1 if transport is not None else POOL_SHARDS
        self.clients = [
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
                limits=_LIMITS if shards == 1 else _SHARD_LIMITS,
                transport=transport,
                follow_redirects=False,
            )
            for _ in range(shards)
        ]
        self._next_client = itertools.cycle(self.clients)

    @property
    def client(self) -> httpx2.AsyncClient:
        """The next of the deployment's pooled clients."""
        return next(self._next_client)

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, {self.settings.base_url!r})"

    def serves(self, model: str | None) -> bool:
        if model is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.settings.models)

    def url(self, exchange: Exchange) -> str:
        s = self.settings
        if s.kind == "azure":
            model = exchange.model or ""
            name = s.azure_deployments.get(model, model)
            query = f"api-version={s.api_version or '2024-10-21'}"
            if exchange.query:
                query = f"{exchange.query}&{query}"
            return f"{s.base_url}/openai/deployments/{name}{exchange.path}?{query}"
        url = s.base_url + exchange.path
        return f"{url}?{exchange.query}" if exchange.query else url

    def headers(self, exchange: Exchange) -> dict[str, str]:
        headers = dict(exchange.headers)
        if self._next_key is not None:
            key = self.keys[next(self._next_key)].reveal()
            headers.pop("authorization", None)
            if self.settings.kind == "azure":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        return headers

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class Upstream:
    """The terminal handler: send the exchange to its deployment."""

    def __init__(self, deployments: list[Deployment]) -> None:
        if not deployments:
            raise ValueError("at least one deployment is needed")
        self.deployments = deployments
        self.by_name = {d.name: d for d in deployments}

    @classmethod
    def from_settings(cls, settings: Settings, transport: httpx2.AsyncBaseTransport | None = None) -> Upstream:
        return cls([Deployment(d, transport) for d in settings.deployments])

    async def __call__(self, exchange: Exchange) -> Reply:
        deployment = exchange.deployment or self.deployments[0]
        exchange.deployment = deployment
        client = deployment.client
        request = client.build_request(
            exchange.method, deployment.url(exchange), headers=deployment.headers(exchange), content=exchange.body
        )
        started = time.perf_counter()
        response = await client.send(request, stream=True)
        headers = {k.lower(): v for k, v in response.headers.items()}
        exchange.request_id = headers.get("x-request-id", exchange.request_id)
        if headers.get("content-type", "").startswith("text/event-stream") and response.status_code < 400:
            exchange.first_byte_at = exchange.first_byte_at or time.perf_counter()
            _note_upstream(exchange, started)
            return Reply(response.status_code, _forwardable(headers), stream=_body(response, exchange, started))
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        _note_upstream(exchange, started)
        return Reply(response.status_code, _forwardable(headers), body)

    async def aclose(self) -> None:
        for deployment in self.deployments:
            await deployment.aclose()


def _note_upstream(exchange: Exchange, started: float) -> None:
    exchange.notes["upstream_ms"] = exchange.notes.get("upstream_ms", 0.0) + (time.perf_counter() - started) * 1000


def _forwardable(headers: dict[str, str]) -> dict[str, str]:
    drop = ("content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding")
    return {k: v for k, v in headers.items() if k not in drop}


async def _body(response: httpx2.Response, exchange: Exchange, started: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    finally:
        await response.aclose()
        exchange.notes["stream_ms"] = (time.perf_counter() - started) * 1000


def describe(deployment: Any) -> str:
    return getattr(deployment, "name", "unknown")
