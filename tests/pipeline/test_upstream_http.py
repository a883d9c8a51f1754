"""The upstream's own HTTP path: an aiohttp session per deployment (``ferryman.upstream``).

Real servers on loopback: the mock over TLS (a self-signed certificate trusted through
``SSL_CERT_FILE``, as a user would for a private CA), a small ASGI app that answers in gzip and
deflate, large bodies that make the reader pause, and ports nobody listens on. The SDK is the
client wherever the SDK's view is what matters.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ferryman.config import DeploymentSettings
from ferryman.exchange import Exchange
from ferryman.gateway.intake import AsgiBody
from ferryman.mock.app import MockApp
from ferryman.mock.server import BackgroundServer, free_port, uvicorn_config
from ferryman.upstream import ClientSender, Deployment, SessionSender, Upstream

from .conftest import UPSTREAM_KEY

MODEL = "gpt-4o-mini"


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferryman-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    port = free_port()
    config = uvicorn_config(MockApp(), "127.0.0.1", port, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with BackgroundServer(config=config, port=port):
        yield f"https://127.0.0.1:{port}/v1", cert


def through(ferryman_client: Callable[..., openai.OpenAI], base_url: str, **extra: Any) -> openai.OpenAI:
    deployment = {"name": "up", "base_url": base_url, "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"], **extra}
    return ferryman_client(deployments=[deployment], retry={"max_attempts": 1})


def test_tls_upstream_plain_and_streamed(
    ferryman_client: Callable[..., openai.OpenAI], tls_mock: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, cert = tls_mock
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    client = through(ferryman_client, base_url)
    assert isinstance(client._client._transport.pipeline.terminal.deployments[0].sender, SessionSender)  # type: ignore[attr-defined]

    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # About 4 MB over TLS.
    embedded = client.embeddings.create(model="text-embedding-3-large", input=[f"line {i}" for i in range(64)])
    assert len(embedded.data) == 64 and all(len(item.embedding) == 3072 for item in embedded.data)


def test_tls_upstream_with_an_untrusted_certificate_is_a_connection_error(
    ferryman_client: Callable[..., openai.OpenAI], tls_mock: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, _cert = tls_mock
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client = through(ferryman_client, base_url)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


# -- compressed replies -------------------------------------------------------------------------

CHAT = {
    "id": "chatcmpl-z",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "squeezed " * 2000}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4000, "total_tokens": 4003},
}


def _compressor(encoding: str) -> Any:
    return zlib.compressobj(wbits=zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)


class CompressingApp:
    """Chat completions answered in the encoding the path names (``/gzip/v1/...``), as a CDN
    in front of an upstream might; streams are compressed event by event."""

    def __init__(self) -> None:
        self.accept_encodings: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        encoding = scope["path"].split("/")[1]
        self.accept_encodings.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode())
        body = await AsgiBody(receive, None).read(1 << 20)
        compressor = _compressor(encoding)
        if json.loads(body).get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"content-encoding", encoding.encode())]})  # fmt: skip
            for word in ("river", "ferry", "bank"):
                event = {**CHAT, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip
                event.pop("usage")
                data = b"data: " + json.dumps(event).encode() + b"\n\n"
                piece = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            tail = compressor.compress(b"data: [DONE]\n\n") + compressor.flush()
            await send({"type": "http.response.body", "body": tail})
            return
        data = compressor.compress(json.dumps(CHAT).encode()) + compressor.flush()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-encoding", encoding.encode()),
            (b"content-length", str(len(data)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def compressing() -> Iterator[tuple[str, CompressingApp]]:
    app = CompressingApp()
    with BackgroundServer(app) as server:
        yield server.url, app


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_replies_reach_the_sdk_decoded(
    ferryman_client: Callable[..., openai.OpenAI], compressing: tuple[str, CompressingApp], encoding: str
) -> None:
    url, app = compressing
    client = through(ferryman_client, f"{url}/{encoding}/v1")
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "content-encoding" not in raw.headers
    assert raw.parse().choices[0].message.content == CHAT["choices"][0]["message"]["content"]  # type: ignore[index]
    assert "gzip" in app.accept_encodings[-1]

    words = [
        c.choices[0].delta.content
        for c in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
        if c.choices
    ]
    assert words == ["river", "ferry", "bank"]


# -- large bodies, refused connections, proxies -------------------------------------------------


def test_a_large_reply_is_read_whole(ferryman_client: Callable[..., openai.OpenAI]) -> None:
    """About 4 MB of embeddings, read whole."""
    client = ferryman_client()
    reply = client.embeddings.create(model="text-embedding-3-large", input=[f"line {i}" for i in range(64)])
    assert len(reply.data) == 64
    assert all(len(item.embedding) == 3072 for item in reply.data)


async def test_a_refused_connection_is_httpx2s_connect_error(upstream_key: str) -> None:
    port = free_port()  # nobody listens there
    deployment = Deployment(DeploymentSettings(name="gone", base_url=f"http://127.0.0.1:{port}/v1", api_keys=[]))
    upstream = Upstream([deployment])
    exchange = Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, b'{"model":"x"}')
    with pytest.raises(httpx2.ConnectError):
        await upstream(exchange)
    await upstream.aclose()


async def test_a_read_timeout_is_httpx2s_read_timeout(ferryman_mock: Any) -> None:
    settings = DeploymentSettings(name="slow", base_url=ferryman_mock.base_url, api_keys=[], timeout_s=0.2)
    upstream = Upstream([Deployment(settings)])
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {UPSTREAM_KEY}",
        "x-ferryman-fault": "delay_ms=2000",
    }
    with pytest.raises(httpx2.ReadTimeout):
        await upstream(Exchange.build("POST", "/chat/completions", headers, body))
    await upstream.aclose()


def test_a_proxied_deployment_goes_through_httpx2s_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "internal.example")
    proxied = Deployment(DeploymentSettings(name="a", base_url="https://api.openai.com/v1", api_keys=[]))
    bypassed = Deployment(DeploymentSettings(name="b", base_url="https://internal.example/v1", api_keys=[]))
    plain_http = Deployment(DeploymentSettings(name="c", base_url="http://127.0.0.1:9/v1", api_keys=[]))
    assert isinstance(proxied.sender, ClientSender)
    assert isinstance(bypassed.sender, SessionSender)
    assert isinstance(plain_http.sender, SessionSender)  # the proxy is for https only


def test_azure_urls_keep_the_base_path_and_api_version() -> None:
    settings = DeploymentSettings(
        name="az",
        kind="azure",
        base_url="https://example.openai.azure.com/",
        api_version="2025-01-01",
        azure_deployments={MODEL: "mini-prod"},
        api_keys=[],
    )
    deployment = Deployment(settings)
    exchange = Exchange.build("POST", "/chat/completions", {}, json.dumps({"model": MODEL}).encode(), query="x=1")
    assert deployment.url(exchange) == (
        "https://example.openai.azure.com/openai/deployments/mini-prod/chat/completions?x=1&api-version=2025-01-01"
    )


# -- sessions: cookies, and clients their owners never close --------------------------------------


class CookieApp:
    """Sets a cookie on every reply (as a CDN in front of an upstream does) and notes the cookies
    each request brought."""

    def __init__(self) -> None:
        self.cookies: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        cookie = dict(scope["headers"]).get(b"cookie")
        self.cookies.append(cookie.decode() if cookie else None)
        data = json.dumps(CHAT).encode()
        headers = [(b"content-type", b"application/json"), (b"set-cookie", b"__cf_bm=caller-a; Path=/; HttpOnly")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


async def test_upstream_cookies_are_never_sent_back() -> None:
    """The upstream client keeps no cookies: one caller's upstream cookie must not ride along with
    the next call, which at a gateway is another caller's. (A caller's own SDK may keep the cookie
    it was sent and send it again, as it would without Ferryman.)"""
    app = CookieApp()
    with BackgroundServer(app) as server:
        settings = DeploymentSettings(name="cdn", base_url=f"{server.url}/v1", api_keys=[])
        upstream = Upstream([Deployment(settings)])
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"content-type": "application/json"}
        for _ in range(3):
            reply = await upstream(Exchange.build("POST", "/chat/completions", headers, body))
            assert reply.status == 200 and "__cf_bm" in reply.headers["set-cookie"]
        await upstream.aclose()
    assert app.cookies == [None, None, None]


LEFT_OPEN = """
import asyncio, os, sys
import ferryman
from ferryman.config import Settings

def settings(name):
    return Settings(
        deployments=[{"name": "mock", "base_url": sys.argv[1], "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"]}],
        store={"url": "sqlite:///" + os.path.join(sys.argv[2], name)},
    )

sync = ferryman.OpenAI(ferryman={"settings": settings("sync.db")}, api_key="sk-caller-side-placeholder")
sync.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

async def main():
    client = ferryman.AsyncOpenAI(ferryman={"settings": settings("async.db")}, api_key="sk-caller-side-placeholder")
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

asyncio.run(main())
import gc; gc.collect()
print("finished")
"""


def test_clients_left_open_end_quietly(ferryman_mock: Any, upstream_key: str, tmp_path: Path) -> None:
    """Applications rarely close their SDK clients: the upstream's sessions close with their loop
    (``asyncio.run``) or at exit (the sync client's background loop), without warnings."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FERRYMAN_DATA_DIR": str(tmp_path / "data"), "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN, ferryman_mock.base_url, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
