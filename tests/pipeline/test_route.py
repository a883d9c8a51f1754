"""The route stage: aliases, weighted deployments, fallback, circuit breakers, Azure requests.

The tests run the whole pipeline (retries off, so each candidate is tried once) against the
session mock and a second mock started for this module; breaker timing uses a hand-moved clock.
Breaker and route details with a fake upstream are in test_breaker.py.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ferryman.config import Settings
from ferryman.exchange import Exchange, Reply
from ferryman.mock.app import MockApp, key_id
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer, free_port
from ferryman.mock.settings import MockSettings
from ferryman.pipeline import build
from ferryman.pipeline.breaker import CLOSED, OPEN
from ferryman.pipeline.chain import Pipeline
from ferryman.pipeline.route import Route
from ferryman.store import open_store
from ferryman.transport import AsyncFerrymanTransport
from tests.pipeline.conftest import mock_deployment
from tests.pipeline.test_breaker import FakeClock, FirstPick

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
NO_RETRIES = {"max_attempts": 1}


@pytest.fixture(scope="module")
def spare_server() -> Iterator[BackgroundServer]:
    with BackgroundServer(MockApp(MockSettings())) as server:
        yield server


@pytest.fixture
def spare(spare_server: BackgroundServer) -> Iterator[MockControl]:
    """A second mock (the session mock's faults apply to every request to it)."""
    control = MockControl(spare_server.url, app=spare_server.app)
    control.reset()
    yield control
    control.close()


@pytest.fixture
async def routed(ferryman_pipeline: Callable[..., Pipeline]) -> AsyncIterator[Callable[..., tuple[Pipeline, Route]]]:
    """``routed(**settings)`` → (pipeline, its route stage on a fake clock, first-pick order); retries off."""
    made: list[Pipeline] = []

    def make(**overrides: Any) -> tuple[Pipeline, Route]:
        overrides.setdefault("retry", NO_RETRIES)
        pipeline = ferryman_pipeline(**overrides)
        made.append(pipeline)
        route = pipeline.stage(Route)
        assert isinstance(route, Route)
        route.clock = FakeClock()
        route.rng = FirstPick()
        return pipeline, route

    yield make
    for pipeline in made:
        await pipeline.terminal.aclose()


async def call(pipeline: Pipeline, model: str, **body: Any) -> tuple[Exchange, Reply]:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-caller"}
    headers.update(body.pop("headers", {}))
    payload = {"model": model, "messages": body.pop("messages", MESSAGES), **body}
    exchange = Exchange.build("POST", "/chat/completions", headers, orjson.dumps(payload))
    reply = await pipeline(exchange)
    await reply.aread()
    for callback in reply.on_close:
        callback()
    return exchange, reply


def sdk(pipeline: Pipeline) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=AsyncFerrymanTransport(pipeline))
    return openai.AsyncOpenAI(
        base_url="http://ferryman.invalid/v1", api_key="sk-caller", http_client=http, max_retries=0
    )


def outcomes(exchange: Exchange) -> list[tuple[str, str, str]]:
    return [(t["deployment"], t["model"], t["outcome"]) for t in exchange.notes["route"]]


def seen(mock: MockControl) -> list[tuple[str, int]]:
    return [(e["model"], e["status"]) for e in mock.requests()]


# -- fallback -----------------------------------------------------------------------------------


async def test_falls_back_to_a_healthy_deployment(routed, ferryman_mock, spare):
    spare.set_faults(["status=503"])
    pipeline, _ = routed(deployments=[mock_deployment(spare, "bad"), mock_deployment(ferryman_mock, "good")])
    exchange, reply = await call(pipeline, "gpt-4o-mini")
    assert reply.status == 200
    assert exchange.deployment is not None and exchange.deployment.name == "good"
    assert outcomes(exchange) == [("bad", "gpt-4o-mini", "fail"), ("good", "gpt-4o-mini", "ok")]
    assert exchange.notes["fallbacks"] == 1
    assert seen(spare) == [("gpt-4o-mini", 503)]
    assert seen(ferryman_mock) == [("gpt-4o-mini", 200)]


async def test_transport_errors_fall_back_and_reraise_only_when_nothing_answered(routed, ferryman_mock):
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_keys": ["env:NOPE_KEY"]}
    pipeline, _ = routed(deployments=[dead, mock_deployment(ferryman_mock, "good")])
    exchange, reply = await call(pipeline, "gpt-4o-mini")
    assert reply.status == 200
    assert outcomes(exchange) == [("dead", "gpt-4o-mini", "transport"), ("good", "gpt-4o-mini", "ok")]

    # An error reply beats a later connection error: the caller gets the reply, attributed to its sender.
    ferryman_mock.set_faults(["status=503"])
    reversed_order, _ = routed(deployments=[mock_deployment(ferryman_mock, "good"), dead])
    exchange, reply = await call(reversed_order, "gpt-4o-mini")
    assert reply.status == 503
    assert outcomes(exchange) == [("good", "gpt-4o-mini", "fail"), ("dead", "gpt-4o-mini", "transport")]
    assert exchange.deployment is not None and exchange.deployment.name == "good"

    alone, _ = routed(deployments=[dead])
    with pytest.raises(httpx2.ConnectError):
        await call(alone, "gpt-4o-mini")


async def test_returns_the_last_error_when_every_candidate_fails(routed, ferryman_mock, spare):
    spare.set_faults(["status=503"])
    ferryman_mock.set_faults(["status=502"])
    pipeline, _ = routed(deployments=[mock_deployment(spare, "a"), mock_deployment(ferryman_mock, "b")])
    exchange, reply = await call(pipeline, "gpt-4o-mini")
    assert reply.status == 502
    assert outcomes(exchange) == [("a", "gpt-4o-mini", "fail"), ("b", "gpt-4o-mini", "fail")]


async def test_alias_falls_back_to_the_next_model_on_a_rate_limit(routed, ferryman_mock):
    ferryman_mock.set_faults(["model=gpt-6-luna;status=429"])
    pipeline, _ = routed(routing={"aliases": {"fast": ["gpt-6-luna", "gpt-4o-mini"]}})
    exchange, reply = await call(pipeline, "fast")
    assert reply.status == 200
    assert reply.json()["model"].startswith("gpt-4o-mini")
    assert exchange.notes["requested_model"] == "fast"
    assert exchange.model == "gpt-4o-mini" and exchange.json["model"] == "gpt-4o-mini"
    # The upstream saw the resolved models, never the alias.
    assert seen(ferryman_mock) == [("gpt-6-luna", 429), ("gpt-4o-mini", 200)]


async def test_insufficient_quota_moves_to_another_deployment_only(routed, ferryman_mock, spare):
    spare.set_faults(["status=429;code=insufficient_quota"])
    pipeline, _ = routed(
        routing={"aliases": {"mix": ["gpt-4o-mini", "gpt-4o"]}},
        deployments=[
            mock_deployment(spare, "broke", models=["gpt-4o-mini", "gpt-4o"]),
            mock_deployment(ferryman_mock, "funded", models=["gpt-4o"]),
        ],
    )
    exchange, reply = await call(pipeline, "mix")
    assert reply.status == 200
    # gpt-4o on "broke" is skipped: same keys, same quota.
    assert outcomes(exchange) == [("broke", "gpt-4o-mini", "quota"), ("funded", "gpt-4o", "ok")]
    assert seen(spare) == [("gpt-4o-mini", 429)]


async def test_context_length_exceeded_falls_back_to_a_bigger_context(routed, ferryman_mock):
    long_prompt = [{"role": "user", "content": "word " * 20_000}]
    aliases = {"long": ["gpt-3.5-turbo-0125", "gpt-3.5-turbo", "gpt-4o-mini"]}
    pipeline, _ = routed(routing={"aliases": aliases})
    exchange, reply = await call(pipeline, "long", messages=long_prompt)
    assert reply.status == 200
    # gpt-3.5-turbo has the same 16k window, so it is not tried.
    assert seen(ferryman_mock) == [("gpt-3.5-turbo-0125", 400), ("gpt-4o-mini", 200)]
    assert outcomes(exchange)[0][2] == "context"


async def test_no_fallback_on_an_invalid_request(routed, ferryman_mock):
    pipeline, _ = routed(routing={"aliases": {"mix": ["gpt-4o-mini", "gpt-4o"]}})
    client = sdk(pipeline)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="mix", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=400;code=invalid_value"}
        )
    assert seen(ferryman_mock) == [("gpt-4o-mini", 400)]
    await client.close()


async def test_stream_falls_back_before_it_is_returned(routed, ferryman_mock, spare):
    spare.set_faults(["status=503"])
    pipeline, _ = routed(deployments=[mock_deployment(spare, "bad"), mock_deployment(ferryman_mock, "good")])
    client = sdk(pipeline)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert seen(spare) == [("gpt-4o-mini", 503)]
    assert [e["status"] for e in ferryman_mock.requests()] == [200]
    await client.close()


async def test_unserved_model_is_refused_without_a_call(routed, ferryman_mock):
    pipeline, _ = routed(deployments=[mock_deployment(ferryman_mock, models=["gpt-4o*"])])
    _, reply = await call(pipeline, "gpt-6-luna")
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    assert ferryman_mock.requests() == []


async def test_requests_without_a_model_pass_through(routed, ferryman_mock):
    pipeline, _ = routed()
    exchange = Exchange.build("GET", "/models", {"authorization": "Bearer sk-caller"}, b"")
    reply = await pipeline(exchange)
    assert reply.status == 200
    assert "route" not in exchange.notes
    assert ferryman_mock.requests()[-1]["path"] == "/v1/models"


# -- circuit breakers ---------------------------------------------------------------------------


async def test_breaker_opens_probes_after_cooldown_reopens_and_recovers(routed, ferryman_mock, spare):
    spare.set_faults(["status=503"])
    pipeline, route = routed(
        routing={"breaker_failures": 3, "breaker_window_s": 30, "breaker_cooldown_s": 10},
        deployments=[mock_deployment(spare, "bad"), mock_deployment(ferryman_mock, "good")],
    )
    clock = route.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        _, reply = await call(pipeline, "gpt-4o-mini")
        assert reply.status == 200
    assert route.breakers == {"bad": OPEN, "good": CLOSED}
    assert len(spare.requests()) == 3

    # Open: calls go straight to the healthy deployment.
    for _ in range(2):
        exchange, _ = await call(pipeline, "gpt-4o-mini")
        assert outcomes(exchange) == [("good", "gpt-4o-mini", "ok")]
    assert len(spare.requests()) == 3

    # After the cooldown one probe goes through; it fails, so the breaker re-opens.
    clock.advance(10)
    exchange, _ = await call(pipeline, "gpt-4o-mini")
    assert exchange.notes["route"][0]["permit"] == "probe"
    assert len(spare.requests()) == 4
    assert route.breakers["bad"] == OPEN
    clock.advance(9)
    await call(pipeline, "gpt-4o-mini")
    assert len(spare.requests()) == 4  # another full cooldown from the failed probe

    # The deployment heals: the next probe succeeds and closes the breaker.
    spare.set_faults([])
    clock.advance(1)
    exchange, reply = await call(pipeline, "gpt-4o-mini")
    assert reply.status == 200 and outcomes(exchange) == [("bad", "gpt-4o-mini", "ok")]
    assert route.breakers["bad"] == CLOSED
    exchange, _ = await call(pipeline, "gpt-4o-mini")
    assert outcomes(exchange) == [("bad", "gpt-4o-mini", "ok")]
    assert [e["status"] for e in spare.requests()] == [503, 503, 503, 503, 200, 200]


# -- weights and keys ---------------------------------------------------------------------------


async def test_weights_split_calls_about_three_to_one(routed, ferryman_mock, monkeypatch):
    monkeypatch.setenv("KEY_HEAVY", "sk-heavy-0000000000")
    monkeypatch.setenv("KEY_LIGHT", "sk-light-0000000000")
    base = {"base_url": ferryman_mock.base_url}
    pipeline, route = routed(
        deployments=[
            {"name": "heavy", "api_keys": ["env:KEY_HEAVY"], "weight": 3, **base},
            {"name": "light", "api_keys": ["env:KEY_LIGHT"], "weight": 1, **base},
        ]
    )
    route.rng = random.Random(20261124)
    for _ in range(400):
        await call(pipeline, "gpt-4o-mini")
    keys = [e["key_id"] for e in ferryman_mock.requests()]
    heavy = keys.count(key_id("sk-heavy-0000000000"))
    assert len(keys) == 400 and keys.count(key_id("sk-light-0000000000")) == 400 - heavy
    assert 260 <= heavy <= 340  # 3:1 is 300; about 4.6 standard deviations either side


async def test_two_keys_of_a_deployment_alternate(routed, ferryman_mock, monkeypatch):
    monkeypatch.setenv("KEY_ONE", "sk-one-00000000000")
    monkeypatch.setenv("KEY_TWO", "sk-two-00000000000")
    pipeline, _ = routed(deployments=[mock_deployment(ferryman_mock, api_keys=["env:KEY_ONE", "env:KEY_TWO"])])
    for _ in range(4):
        await call(pipeline, "gpt-4o-mini")
    one, two = key_id("sk-one-00000000000"), key_id("sk-two-00000000000")
    assert [e["key_id"] for e in ferryman_mock.requests()] == [one, two, one, two]


# -- Azure OpenAI -------------------------------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop", "logprobs": None}
    ],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


async def test_azure_request_building(ferryman_settings: Callable[..., Settings], monkeypatch):
    monkeypatch.setenv("AZURE_KEY", "azure-secret-key-123")
    received: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        received.append(request)
        return httpx2.Response(200, json=COMPLETION, headers={"x-request-id": "req_azure"})

    settings = ferryman_settings(
        retry=NO_RETRIES,
        routing={"aliases": {"fast": ["gpt-4o-mini"]}},
        deployments=[
            {
                "name": "azure",
                "kind": "azure",
                "base_url": "https://example-resource.openai.azure.com/",
                "api_version": "2024-10-21",
                "azure_deployments": {"gpt-4o-mini": "mini-prod"},
                "api_keys": ["env:AZURE_KEY"],
            }
        ],
    )
    store = open_store(settings)
    pipeline = build(settings, store=store, transport=httpx2.MockTransport(handler))
    client = sdk(pipeline)
    try:
        reply = await client.chat.completions.create(model="fast", messages=MESSAGES)
    finally:
        await client.close()
        await pipeline.terminal.aclose()
        store.close()
    assert reply.choices[0].message.content == "hello"
    (request,) = received
    assert request.url.host == "example-resource.openai.azure.com"
    assert request.url.path == "/openai/deployments/mini-prod/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "azure-secret-key-123"
    assert "authorization" not in request.headers
    assert orjson.loads(request.content)["model"] == "gpt-4o-mini"
