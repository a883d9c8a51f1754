"""The upstreams: deployments that serve models, and the pipeline's terminal handler.

A :class:`Deployment` is one place to send a call (OpenAI, Azure OpenAI with its deployment
paths and ``api-version``, or any OpenAI-compatible base URL), with its keys (taken in turn)
and its connection pools. :class:`Upstream` sends an exchange to the deployment the routing
stage chose and returns the reply, streamed when the upstream streams.

Calls go straight to httpcore2 connection pools (the engine under httpx2) on the asyncio
backend of :mod:`ferryman.netio`: the pipeline already holds the method, headers and body that
httpx2's client would rebuild and validate, which cost as much CPU as the rest of a call's
stages. A deployment reached through a proxy (``HTTPS_PROXY`` and friends), or given an httpx2
transport (tests), goes through an ``httpx2.AsyncClient`` instead. Either way, failures are
httpx2's exceptions (``httpx2.ConnectError``, ``httpx2.ReadTimeout``...).
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import time
import urllib.request
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httpcore2
import httpx2

from ferryman.config import DeploymentSettings, Settings
from ferryman.exchange import Exchange, Reply
from ferryman.netio import AsyncioBackend
from ferryman.secrets import Secret, resolve_optional

_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
# Several small connection pools, used in turn: httpcore's pool looks at every one of its
# connections whenever a request starts or ends, so one big pool costs O(connections) per
# request at high concurrency (a fifth of the gateway's CPU at 64 in flight).
POOL_SHARDS = 8
_SHARD_LIMITS = httpx2.Limits(max_connections=125, max_keepalive_connections=25, keepalive_expiry=30)
ACCEPT_ENCODING = b"gzip, deflate"


class Answer(Protocol):
    """An upstream's answer as the terminal handler needs it."""

    status: int
    headers: dict[str, str]  # lower-case names

    def chunks(self) -> AsyncIterator[bytes]: ...  # the decoded body

    async def aclose(self) -> None: ...


class Sender(Protocol):
    async def send(self, exchange: Exchange, deployment: Deployment) -> Answer: ...

    async def aclose(self) -> None: ...


class Deployment:
    def __init__(self, settings: DeploymentSettings, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.keys: list[Secret] = [s for s in (resolve_optional(ref) for ref in settings.api_keys) if s]
        self._next_key = itertools.cycle(range(len(self.keys))) if self.keys else None
        parts = urlsplit(settings.base_url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.base_path = parts.path.rstrip("/")
        self._serves: dict[str, bool] = {}
        self.sender: Sender
        if transport is None and self.scheme in ("http", "https") and not _proxied(settings.base_url):
            self.sender = PooledSender(settings)
        else:
            self.sender = ClientSender(settings, transport)

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, {self.settings.base_url!r})"

    def serves(self, model: str | None) -> bool:
        if model is None:
            return True
        known = self._serves.get(model)
        if known is None:
            known = any(fnmatch.fnmatchcase(model, pattern) for pattern in self.settings.models)
            if len(self._serves) >= 4096:  # model names come from callers: keep the memory bounded
                self._serves.clear()
            self._serves[model] = known
        return known

    def target(self, exchange: Exchange) -> str:
        """The path and query to request, below the host."""
        s = self.settings
        if s.kind == "azure":
            model = exchange.model or ""
            name = s.azure_deployments.get(model, model)
            query = f"api-version={s.api_version or '2024-10-21'}"
            if exchange.query:
                query = f"{exchange.query}&{query}"
            return f"{self.base_path}/openai/deployments/{name}{exchange.path}?{query}"
        path = self.base_path + exchange.path
        return f"{path}?{exchange.query}" if exchange.query else path

    def url(self, exchange: Exchange) -> str:
        return f"{self.scheme}://{self.host_header}{self.target(exchange)}"

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
        await self.sender.aclose()


def _proxied(url: str) -> bool:
    """True when the environment sends requests for ``url`` through a proxy."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return False
    scheme, host = urlsplit(url).scheme.lower(), urlsplit(url).hostname or ""
    if scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(host)


# -- httpcore2 pools ----------------------------------------------------------------------------

# httpcore2's exceptions become httpx2's of the same name, which the stages know.
_ERRORS: dict[type[Exception], type[httpx2.HTTPError]] = {
    httpcore2.ConnectTimeout: httpx2.ConnectTimeout,
    httpcore2.ReadTimeout: httpx2.ReadTimeout,
    httpcore2.WriteTimeout: httpx2.WriteTimeout,
    httpcore2.PoolTimeout: httpx2.PoolTimeout,
    httpcore2.TimeoutException: httpx2.TimeoutException,
    httpcore2.ConnectError: httpx2.ConnectError,
    httpcore2.ReadError: httpx2.ReadError,
    httpcore2.WriteError: httpx2.WriteError,
    httpcore2.NetworkError: httpx2.NetworkError,
    httpcore2.RemoteProtocolError: httpx2.RemoteProtocolError,
    httpcore2.LocalProtocolError: httpx2.LocalProtocolError,
    httpcore2.ProtocolError: httpx2.ProtocolError,
    httpcore2.ProxyError: httpx2.ProxyError,
    httpcore2.UnsupportedProtocol: httpx2.UnsupportedProtocol,
}


@contextlib.contextmanager
def _as_httpx2() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for kind in type(error).__mro__:
            mapped = _ERRORS.get(kind)
            if mapped is not None:
                raise mapped(str(error)) from error
        raise


class _Decoder:
    """``content-encoding: gzip`` or ``deflate``, decoded chunk by chunk."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding == "gzip"
        self.inflate = zlib.decompressobj(zlib.MAX_WBITS | 16 if self.gzip else zlib.MAX_WBITS)
        self.started = False

    def __call__(self, data: bytes) -> bytes:
        try:
            out = self.inflate.decompress(data)
        except zlib.error as error:
            if self.gzip or self.started:
                kind = "gzip" if self.gzip else "deflate"
                raise httpx2.DecodingError(f"the upstream sent a broken {kind} body") from error
            self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate without the zlib header
            out = self.inflate.decompress(data)
        self.started = True
        return out

    def flush(self) -> bytes:
        return self.inflate.flush()


class PooledAnswer:
    def __init__(self, response: httpcore2.Response) -> None:
        self.response = response
        self.status = response.status
        headers: dict[str, str] = {}
        for raw_name, raw_value in response.headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        encoding = headers.get("content-encoding", "").strip().lower()
        self.decoder = _Decoder(encoding) if encoding in ("gzip", "deflate") else None

    async def chunks(self) -> AsyncIterator[bytes]:
        stream = cast(AsyncIterable[bytes], self.response.stream)
        decoder = self.decoder
        with _as_httpx2():
            async for chunk in stream:
                if decoder is not None:
                    chunk = decoder(chunk)
                if chunk:
                    yield chunk
            if decoder is not None and (rest := decoder.flush()):
                yield rest

    async def aclose(self) -> None:
        with _as_httpx2():
            await self.response.aclose()


class PooledSender:
    """Requests straight to httpcore2 connection pools on asyncio sockets."""

    def __init__(self, settings: DeploymentSettings) -> None:
        ssl_context = httpx2.create_ssl_context() if settings.base_url.lower().startswith("https") else None
        self.pools = [
            httpcore2.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=_SHARD_LIMITS.max_connections,
                max_keepalive_connections=_SHARD_LIMITS.max_keepalive_connections,
                keepalive_expiry=_SHARD_LIMITS.keepalive_expiry,
                network_backend=AsyncioBackend(),
            )
            for _ in range(POOL_SHARDS)
        ]
        self._next_pool = itertools.cycle(self.pools)
        self.timeout = {
            "connect": settings.connect_timeout_s,
            "read": settings.timeout_s,
            "write": settings.timeout_s,
            "pool": settings.timeout_s,
        }

    async def send(self, exchange: Exchange, deployment: Deployment) -> PooledAnswer:
        body = exchange.body
        headers = [(b"host", deployment.host_header.encode("ascii"))]
        for name, value in deployment.headers(exchange).items():
            headers.append((name.encode("latin-1"), value.encode("utf-8")))
        headers.append((b"accept-encoding", ACCEPT_ENCODING))
        if body or exchange.method in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        request = httpcore2.Request(
            exchange.method.encode("ascii"),
            httpcore2.URL(
                scheme=deployment.scheme.encode("ascii"),
                host=deployment.host.encode("idna"),
                port=deployment.port,
                target=deployment.target(exchange).encode("utf-8"),
            ),
            headers=headers,
            content=body,
            extensions={"timeout": self.timeout},
        )
        with _as_httpx2():
            response = await next(self._next_pool).handle_async_request(request)
        return PooledAnswer(response)

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


# -- httpx2 clients (proxies, injected transports) ----------------------------------------------


class ClientAnswer:
    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes():
            yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()


class ClientSender:
    """Requests through ``httpx2.AsyncClient`` (environment proxies, an injected transport)."""

    def __init__(self, settings: DeploymentSettings, transport: httpx2.AsyncBaseTransport | None) -> None:
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

    async def send(self, exchange: Exchange, deployment: Deployment) -> ClientAnswer:
        client = next(self._next_client)
        request = client.build_request(
            exchange.method, deployment.url(exchange), headers=deployment.headers(exchange), content=exchange.body
        )
        return ClientAnswer(await client.send(request, stream=True))

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
        started = time.perf_counter()
        answer = await deployment.sender.send(exchange, deployment)
        headers = answer.headers
        exchange.request_id = headers.get("x-request-id", exchange.request_id)
        if headers.get("content-type", "").startswith("text/event-stream") and answer.status < 400:
            exchange.first_byte_at = exchange.first_byte_at or time.perf_counter()
            _note_upstream(exchange, started)
            return Reply(answer.status, _forwardable(headers), stream=_body(answer, exchange, started))
        try:
            body = b"".join([chunk async for chunk in answer.chunks()])
        finally:
            await answer.aclose()
        _note_upstream(exchange, started)
        return Reply(answer.status, _forwardable(headers), body)

    async def aclose(self) -> None:
        for deployment in self.deployments:
            await deployment.aclose()


def _note_upstream(exchange: Exchange, started: float) -> None:
    exchange.notes["upstream_ms"] = exchange.notes.get("upstream_ms", 0.0) + (time.perf_counter() - started) * 1000


def _forwardable(headers: dict[str, str]) -> dict[str, str]:
    drop = ("content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding")
    return {k: v for k, v in headers.items() if k not in drop}


async def _body(answer: Answer, exchange: Exchange, started: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.chunks():
            yield chunk
    finally:
        await answer.aclose()
        exchange.notes["stream_ms"] = (time.perf_counter() - started) * 1000


def describe(deployment: Any) -> str:
    return getattr(deployment, "name", "unknown")
