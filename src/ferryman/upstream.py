"""The upstreams: deployments that serve models, and the pipeline's terminal handler.

A :class:`Deployment` is one place to send a call (OpenAI, Azure OpenAI with its deployment
paths and ``api-version``, or any OpenAI-compatible base URL), with its keys (taken in turn)
and its connection pools. :class:`Upstream` sends an exchange to the deployment the routing
stage chose and returns the reply, streamed when the upstream streams.

Calls go through an ``aiohttp`` client session: asyncio-native with a C HTTP parser, it costs
about a quarter of the CPU per request of ``httpx2.AsyncClient`` on anyio (which rebuilds and
validates URL and header models and wraps every read in a cancel scope), and the upstream call
is the largest single cost of a call through the pipeline. A deployment reached through a proxy
(``HTTPS_PROXY`` and friends), or given an httpx2 transport (tests), goes through an
``httpx2.AsyncClient`` instead. Either way, failures are httpx2's exceptions
(``httpx2.ConnectError``, ``httpx2.ReadTimeout``...), which the stages know.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx2
import yarl

from ferryman.apipath import encode, segment_ok
from ferryman.config import DeploymentSettings, Settings
from ferryman.errors import invalid_request
from ferryman.exchange import Exchange, Reply, merged_headers
from ferryman.secrets import Secret, resolve_optional

MAX_CONNECTIONS = 1000  # per deployment (and event loop)
KEEPALIVE_S = 30.0
_LIMITS = httpx2.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=200, keepalive_expiry=KEEPALIVE_S)
# httpx2 clients (proxies only) come as several small pools used in turn: httpcore's pool looks at
# every one of its connections whenever a request starts or ends, so one big pool costs
# O(connections) per request at high concurrency.
POOL_SHARDS = 8
_SHARD_LIMITS = httpx2.Limits(max_connections=125, max_keepalive_connections=25, keepalive_expiry=KEEPALIVE_S)


class Answer(Protocol):
    """An upstream's answer as the terminal handler needs it."""

    status: int
    headers: dict[str, str]  # lower-case names

    def chunks(self) -> AsyncIterator[bytes]: ...  # the decoded body, as it arrives

    async def read(self) -> bytes: ...  # the decoded body, whole

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
        self._serves: dict[str, bool] = {}
        self.sender: Sender
        if transport is None and not _proxied(settings.base_url):
            self.sender = SessionSender(settings)
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

    def url(self, exchange: Exchange) -> str:
        """The upstream URL: the base URL, then the exchange's canonical path quoted segment by
        segment (:func:`ferryman.apipath.encode`), so it never leaves the base path."""
        s = self.settings
        path = encode(exchange.path)
        if s.kind == "azure":
            model = exchange.model or ""
            name = s.azure_deployments.get(model, model)
            if not segment_ok(name):
                raise invalid_request(f"The model `{name[:200]}` cannot name an Azure deployment.", "model")
            query = f"api-version={s.api_version or '2024-10-21'}"
            if exchange.query:
                query = f"{exchange.query}&{query}"
            return f"{s.base_url}/openai/deployments/{encode(name)}{path}?{query}"
        url = s.base_url + path  # no trailing slash: DeploymentSettings strips it
        return f"{url}?{exchange.query}" if exchange.query else url

    def headers(self, exchange: Exchange) -> dict[str, str]:
        headers = dict(exchange.headers)
        if exchange.upload is not None:
            headers["content-length"] = str(exchange.upload.size)
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
    parts = urlsplit(url)
    if parts.scheme.lower() not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


# -- aiohttp ------------------------------------------------------------------------------------


def _httpx2_error(error: BaseException) -> httpx2.HTTPError | None:
    """aiohttp's failure as the httpx2 exception the stages know (None: not a transport failure)."""
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message)
    if isinstance(error, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return httpx2.ReadTimeout(message)
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message)
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx2.RemoteProtocolError(message)
    if isinstance(error, aiohttp.ClientError):
        return httpx2.ReadError(message)
    return None


@contextlib.contextmanager
def _as_httpx2() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        mapped = _httpx2_error(error)
        if mapped is None:
            raise
        raise mapped from error


class SessionAnswer:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.headers = merged_headers(response.raw_headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body (decompressed) as it arrives, one piece per HTTP chunk the upstream sent (a
        stream's events as the upstream grouped them, however the network batched the bytes)."""
        with _as_httpx2():
            async for data, _end_of_chunk in self.response.content.iter_chunks():
                if data:
                    yield data

    async def read(self) -> bytes:
        with _as_httpx2():
            return await self.response.read()

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()  # the connection goes back to the pool
        else:
            self.response.close()  # a body left unread (an abandoned stream): the upstream stops


async def _closed_with_the_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


class SessionSender:
    """Requests through an ``aiohttp.ClientSession``: asyncio-native, with a C HTTP parser (about a
    quarter of httpx2's CPU per request here, see ``benchmarks/README.md``). One session per event
    loop that uses the deployment (a session belongs to the loop it was made on)."""

    def __init__(self, settings: DeploymentSettings) -> None:
        self.settings = settings
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.timeout_s,  # waiting for a free connection, and connecting
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.timeout_s,  # between two reads, as httpx2's read timeout
        )
        # Each loop's session, with the async generator that closes it when the loop shuts down.
        self._sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]] = {}

    async def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        known = self._sessions.get(loop)
        if known is not None and not known[0].closed:
            return known[0]
        for gone in [other for other in self._sessions if other.is_closed()]:
            del self._sessions[gone]
        tls = httpx2.create_ssl_context() if self.settings.base_url.lower().startswith("https") else None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_S, ssl=tls or True
            ),
            timeout=self.timeout,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's upstream cookies to another
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),  # the caller's own, or none
        )
        # An application that never closes its client still gets the session closed when its loop
        # shuts down (asyncio.run closes every open async generator of the loop), rather than
        # aiohttp's "Unclosed client session" at exit.
        closer = _closed_with_the_loop(session)
        await anext(closer)
        self._sessions[loop] = (session, closer)
        return session

    async def send(self, exchange: Exchange, deployment: Deployment) -> SessionAnswer:
        with _as_httpx2():
            upload = exchange.upload
            response = await (await self.session()).request(
                exchange.method,
                yarl.URL(deployment.url(exchange), encoded=True),  # quoted already: sent as it is
                data=upload.chunks() if upload is not None else exchange.body if exchange.body else None,
                headers=deployment.headers(exchange),
                allow_redirects=False,
            )
        return SessionAnswer(response)

    async def aclose(self) -> None:
        known = self._sessions.pop(asyncio.get_running_loop(), None)
        if known is not None:
            await known[1].aclose()  # closes the session


# -- httpx2 clients (proxies, injected transports) ----------------------------------------------


class ClientAnswer:
    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes():
            yield chunk

    async def read(self) -> bytes:
        return await self.response.aread()

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
        upload = exchange.upload
        request = client.build_request(
            exchange.method,
            deployment.url(exchange),
            headers=deployment.headers(exchange),
            content=upload.chunks() if upload is not None else exchange.body,
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
            body = await answer.read()
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
