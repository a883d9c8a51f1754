"""Calls go where the caller meant: the SDK's ``base_url`` with Ferryman in between.

Real parts: the official SDK, real HTTP over loopback, and two of the project's mocks: the
session's (``ferryman_mock``, the one a test aims at) and ``elsewhere`` (what ``OPENAI_BASE_URL``
names, the implicit upstream a bug would send the call to). ``OPENAI_BASE_URL`` is always a
loopback address here, so no bug can reach the internet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import ferryman
from ferryman.config import Settings
from ferryman.mock.app import key_id
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer
from ferryman.transport import MisdirectedRequest, base_url_key
from tests.pipeline.conftest import UPSTREAM_KEY, mock_deployment

MESSAGES = [{"role": "user", "content": "hi"}]
CALLER_KEY = "caller-side-key-0001"  # the SDK's own key: what reaches an upstream with no keys of its own


@pytest.fixture(scope="module")
def elsewhere_server() -> Iterator[BackgroundServer]:
    with BackgroundServer() as server:
        yield server


@pytest.fixture
def elsewhere(elsewhere_server: BackgroundServer) -> Iterator[MockControl]:
    control = MockControl(elsewhere_server.url, app=elsewhere_server.app)
    control.reset()
    try:
        yield control
    finally:
        control.close()


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, elsewhere: MockControl) -> None:
    """No ferryman.toml, no stray FERRYMAN_*/OPENAI_* settings; OPENAI_BASE_URL at ``elsewhere``."""
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.delenv("FERRYMAN_DEPLOYMENTS", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.base_url)
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Clients to close after the test, with their pipelines' stores."""
    clients: list[Any] = []
    yield clients
    for client in clients:
        transport = getattr(client._client, "_transport", None)
        if isinstance(client, openai.OpenAI):
            client.close()
        store = getattr(getattr(transport, "pipeline", None), "store", None)
        if store is not None:
            store.close()


def only_request(mock: MockControl) -> dict[str, Any]:
    entries = mock.requests()
    assert len(entries) == 1, entries
    return entries[0]


def test_openai_with_base_url_calls_that_base_url(ferryman_mock, elsewhere, closing):
    client = ferryman.OpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY)
    closing.append(client)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content
    entry = only_request(ferryman_mock)
    assert entry["path"] == "/v1/chat/completions"
    assert entry["key_id"] == key_id(CALLER_KEY)  # no keys of Ferryman's own: the SDK's reached it
    assert elsewhere.requests() == []
    assert str(client.base_url).rstrip("/") == ferryman_mock.base_url  # the SDK got it too


async def test_async_openai_with_base_url_calls_that_base_url(ferryman_mock, elsewhere, closing):
    client = ferryman.AsyncOpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY)
    closing.append(client)
    try:
        chunks = [
            c async for c in await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        ]
        assert chunks
    finally:
        await client.close()
    assert only_request(ferryman_mock)["key_id"] == key_id(CALLER_KEY)
    assert elsewhere.requests() == []


def test_sdk_with_ferryman_http_client_base_url(ferryman_mock, elsewhere, closing):
    http = ferryman.http_client(base_url=ferryman_mock.base_url)
    client = openai.OpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY, http_client=http, max_retries=0)
    closing.append(client)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert only_request(ferryman_mock)["path"] == "/v1/embeddings"
    assert elsewhere.requests() == []


async def test_async_sdk_with_ferryman_async_http_client_base_url(ferryman_mock, elsewhere, closing):
    http = ferryman.async_http_client(base_url=ferryman_mock.base_url + "/")
    client = openai.AsyncOpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY, http_client=http, max_retries=0)
    closing.append(client)
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        await client.close()
    assert only_request(ferryman_mock)["path"] == "/v1/chat/completions"
    assert elsewhere.requests() == []


def test_openai_base_url_env_is_still_the_implicit_upstream(ferryman_mock, elsewhere, closing, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", ferryman_mock.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", CALLER_KEY)
    client = openai.OpenAI(http_client=ferryman.http_client(), max_retries=0)
    closing.append(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert only_request(ferryman_mock)["key_id"] == key_id(CALLER_KEY)  # env:OPENAI_API_KEY, as before
    closing.append(ferryman.OpenAI())
    closing[-1].chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(ferryman_mock.requests()) == 2
    assert elsewhere.requests() == []


def test_base_url_outside_the_configured_deployments_is_refused(ferryman_mock, elsewhere):
    deployments = [mock_deployment(elsewhere, name="openai")]
    with pytest.raises(ValueError) as caught:
        ferryman.OpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY, ferryman={"deployments": deployments})
    message = str(caught.value)
    assert f"base_url {ferryman_mock.base_url} is not one of the configured deployments" in message
    assert f"openai: {elsewhere.base_url}" in message
    assert "[[deployments]]" in message
    with pytest.raises(ValueError, match="not one of the configured deployments"):
        ferryman.async_http_client(base_url=ferryman_mock.base_url, deployments=deployments)
    settings = Settings(deployments=deployments)
    with pytest.raises(ValueError, match="not one of the configured deployments"):
        ferryman.http_client(base_url=ferryman_mock.base_url, settings=settings)
    assert ferryman_mock.requests() == [] and elsewhere.requests() == []


def test_base_url_of_a_configured_deployment_is_accepted(ferryman_mock, elsewhere, closing):
    """Compared normalised (trailing slash, the scheme's default port); routing then decides, with
    the deployment's own key."""
    deployments = [mock_deployment(elsewhere, name="other", models=["gpt-4.1"]), mock_deployment(ferryman_mock)]
    client = ferryman.OpenAI(
        base_url=ferryman_mock.base_url + "/", api_key=CALLER_KEY, ferryman={"deployments": deployments}
    )
    closing.append(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert only_request(ferryman_mock)["key_id"] == key_id(UPSTREAM_KEY)
    assert elsewhere.requests() == []


def test_configured_deployments_route_whatever_the_sdk_base_url(ferryman_mock, closing):
    http = ferryman.http_client(deployments=[mock_deployment(ferryman_mock)])
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key=CALLER_KEY, http_client=http, max_retries=0)
    closing.append(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert only_request(ferryman_mock)["key_id"] == key_id(UPSTREAM_KEY)


def test_sdk_base_url_elsewhere_than_the_implicit_upstream_is_refused(ferryman_mock, elsewhere, closing):
    # The SDK's default retries on: a refusal is a configuration error, passed on at once.
    client = openai.OpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY, http_client=ferryman.http_client())
    closing.append(client)
    started = time.monotonic()
    with pytest.raises(MisdirectedRequest) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert time.monotonic() - started < 0.4  # not retried (the SDK's first retry waits ≥ 0.5 s)
    error = caught.value
    assert isinstance(error, openai.OpenAIError) and isinstance(error, ValueError)
    message = str(error)
    assert f"{ferryman_mock.base_url}/chat/completions" in message
    assert elsewhere.base_url in message
    assert "ferryman.http_client(base_url=" in message and "[[deployments]]" in message
    assert ferryman_mock.requests() == [] and elsewhere.requests() == []  # sent nowhere


async def test_async_sdk_base_url_elsewhere_than_the_implicit_upstream_is_refused(ferryman_mock, elsewhere, closing):
    client = openai.AsyncOpenAI(
        base_url=ferryman_mock.base_url, api_key=CALLER_KEY, http_client=ferryman.async_http_client()
    )
    closing.append(client)
    try:
        with pytest.raises(MisdirectedRequest, match=r"ferryman\.async_http_client\(base_url="):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        await client.close()
    assert ferryman_mock.requests() == [] and elsewhere.requests() == []


def test_sdk_base_url_other_than_the_one_given_to_ferryman_is_refused(ferryman_mock, elsewhere, closing):
    http = ferryman.http_client(base_url=elsewhere.base_url)
    client = openai.OpenAI(base_url=ferryman_mock.base_url, api_key=CALLER_KEY, http_client=http, max_retries=0)
    closing.append(client)
    with pytest.raises(MisdirectedRequest):
        client.models.list()
    assert ferryman_mock.requests() == [] and elsewhere.requests() == []


def test_without_the_sdk_the_refusal_is_a_value_error(ferryman_mock, elsewhere):
    with ferryman.http_client() as http:
        with pytest.raises(MisdirectedRequest) as caught:
            http.get(ferryman_mock.base_url + "/models", headers={"authorization": f"Bearer {CALLER_KEY}"})
        assert isinstance(caught.value, ValueError)
        assert not isinstance(caught.value, httpx2.TransportError)  # nothing to retry
        store = getattr(http._transport, "pipeline").store  # noqa: B009
        store.close()
    assert ferryman_mock.requests() == [] and elsewhere.requests() == []


def test_settings_know_implicit_deployments(elsewhere, tmp_path):
    implicit = Settings()
    assert not implicit.deployments_configured
    assert [(d.name, d.base_url) for d in implicit.deployments] == [("default", elsewhere.base_url)]
    assert not implicit.model_copy().deployments_configured
    assert Settings(deployments=[{"name": "default", "base_url": elsewhere.base_url}]).deployments_configured
    (tmp_path / "ferryman.toml").write_text(f'[[deployments]]\nname = "x"\nbase_url = "{elsewhere.base_url}"\n')
    assert Settings().deployments_configured


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/", True),
        ("https://api.openai.com/v1", "https://API.openai.com:443/v1", True),
        ("http://example.test/v1", "http://example.test:80/v1", True),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1", False),
        ("http://127.0.0.1:8000/v1", "https://127.0.0.1:8000/v1", False),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v2", False),
    ],
)
def test_base_url_comparison(a, b, same):
    assert (base_url_key(a) == base_url_key(b)) is same
