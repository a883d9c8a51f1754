"""The account stage: usage → cost for plain and streamed replies; usage asked for and hidden."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman import pricing
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.account import FINISH_NOTE, Account, without_null_usage
from ferryman.pipeline.chain import Handler, Pipeline
from ferryman.pricing import PriceTable
from ferryman.sse import SSEDecoder
from ferryman.transport import AsyncFerrymanTransport

MESSAGES = [{"role": "user", "content": "Tell me about ferries."}]


# -- helpers ------------------------------------------------------------------------------------


class Recorder:
    """An outermost stage that keeps every exchange, so a test can read what the stages learned."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        self.exchanges.append(exchange)
        return await call_next(exchange)


def recording_client(pipeline: Pipeline) -> tuple[openai.AsyncOpenAI, Recorder]:
    recorder = Recorder()
    recorded = Pipeline([recorder, *pipeline.stages], pipeline.terminal)
    http = httpx2.AsyncClient(transport=AsyncFerrymanTransport(recorded))
    return openai.AsyncOpenAI(http_client=http, api_key="sk-caller", max_retries=0), recorder


def chat_request(stream: bool, include_usage: bool | None = None, **extra: Any) -> Exchange:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, orjson.dumps(body))


async def drive(account: Account, exchange: Exchange, reply: Reply, seen: list[Exchange] | None = None) -> bytes:
    """Run the stage over a canned reply; the bytes the caller would read."""

    async def upstream(ex: Exchange) -> Reply:
        if seen is not None:
            seen.append(Exchange.build(ex.method, ex.path, ex.headers, ex.body))
        return reply

    out = await account.handle(exchange, upstream)
    if out.stream is None:
        return out.body
    return b"".join([chunk async for chunk in out.stream])


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def sse(events: list[dict[str, Any]], responses: bool = False) -> list[bytes]:
    if responses:
        return [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events]
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def chat_stream(model: str, usage: dict[str, Any] | None, tier: str, with_null: bool) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "service_tier": tier}
    out = []
    for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": "Hi"}, None), ({}, "stop")):
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if with_null:
            chunk["usage"] = None
        out.append(chunk)
    if usage is not None:
        out.append({**base, "choices": [], "usage": usage})
    return out


def normalise(raw: bytes) -> bytes:
    raw = re.sub(rb'"id":"chatcmpl-[A-Za-z0-9]+"', b'"id":"X"', raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


# -- plain replies through the SDK --------------------------------------------------------------


async def test_plain_replies_carry_their_cost(ferryman_pipeline, ferryman_mock):
    client, recorder = recording_client(ferryman_pipeline())
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    usage = ferryman_mock.requests()[-1]["usage"]
    expected = pricing.cost_usd("gpt-4o-mini", usage)
    assert expected is not None and expected > 0
    assert Decimal(raw.headers["x-ferryman-cost-usd"]) == expected == recorder.exchanges[-1].cost_usd
    assert recorder.exchanges[-1].usage == usage

    raw = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a b c"] * 3)
    usage = raw.parse().usage.model_dump()
    assert Decimal(raw.headers["x-ferryman-cost-usd"]) == pricing.cost_usd("text-embedding-3-small", usage)

    raw = await client.responses.with_raw_response.create(model="gpt-6-sol", input="hi", service_tier="flex")
    usage = raw.parse().usage.model_dump()
    flex = pricing.cost_usd("gpt-6-sol", usage, tier="flex")
    assert flex is not None and flex < pricing.cost_usd("gpt-6-sol", usage)  # type: ignore[operator]
    assert Decimal(raw.headers["x-ferryman-cost-usd"]) == flex

    raw = await client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    usage = raw.parse().usage.model_dump()
    assert Decimal(raw.headers["x-ferryman-cost-usd"]) == pricing.cost_usd("gpt-3.5-turbo-instruct", usage)
    await client.close()


async def test_errors_cost_nothing(ferryman_pipeline):
    client, recorder = recording_client(ferryman_pipeline(retry={"max_attempts": 1}))
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=500"}
        )
    assert recorder.exchanges[-1].cost_usd == 0
    await client.close()


# -- streams --------------------------------------------------------------------------------------


async def test_hidden_usage_leaves_the_callers_stream_byte_for_byte(ferryman_pipeline, ferryman_mock):
    client, recorder = recording_client(ferryman_pipeline())
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "seed": 7, "n": 2}
    async with ferryman_mock.async_client.chat.completions.with_streaming_response.create(**request) as direct:
        expected = b"".join([c async for c in direct.iter_bytes()])
    async with client.chat.completions.with_streaming_response.create(**request) as through:
        got = b"".join([c async for c in through.iter_bytes()])
    assert b'"usage"' not in expected
    assert normalise(got) == normalise(expected)
    upstream = ferryman_mock.requests()[-1]
    assert upstream["body"]["stream_options"] == {"include_usage": True}  # asked upstream, hidden from the caller
    exchange = recorder.exchanges[-1]
    assert exchange.usage == upstream["usage"]
    assert exchange.cost_usd == pricing.cost_usd("gpt-4o-mini", upstream["usage"]) > 0
    assert "stream_options" not in exchange.json  # stages further out see the caller's request
    await client.close()


async def test_usage_the_caller_asked_for_passes_through(ferryman_pipeline, ferryman_mock):
    client, recorder = recording_client(ferryman_pipeline())
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    got = [c async for c in stream]
    assert got[-1].choices == [] and got[-1].usage is not None
    assert recorder.exchanges[-1].cost_usd == pricing.cost_usd("gpt-4o-mini", got[-1].usage.model_dump())
    await client.close()


@pytest.mark.parametrize("kind", ["chat", "responses", "completions"])
async def test_streamed_and_plain_cost_the_same_through_the_sdk(ferryman_pipeline, ferryman_mock, kind):
    client, recorder = recording_client(ferryman_pipeline())
    ferryman_mock.set_fixtures([{"match": "Tell me more", "content": "Ferries carry people across water."}])

    async def call(stream: bool) -> None:
        if kind == "chat":
            reply = await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, seed=3, stream=stream)
        elif kind == "responses":
            reply = await client.responses.create(model="gpt-6-sol", input="Tell me more.", stream=stream)
        else:
            reply = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", seed=3, stream=stream)
        if stream:
            [_ async for _ in reply]  # type: ignore[union-attr]

    await call(False)
    await call(True)
    plain, streamed = recorder.exchanges[-2:]
    assert plain.usage == streamed.usage
    assert plain.cost_usd == streamed.cost_usd
    assert plain.cost_usd is not None and plain.cost_usd > 0
    await client.close()


async def test_abandoned_stream_is_estimated():
    account = Account(PriceTable.default())
    exchange = chat_request(stream=True)
    events = sse(chat_stream("gpt-4o-mini", {"prompt_tokens": 1, "completion_tokens": 1}, "default", True))

    async def upstream(ex: Exchange) -> Reply:
        return Reply(200, {"content-type": "text/event-stream"}, stream=chunks(events))

    reply = await account.handle(exchange, upstream)
    assert reply.stream is not None
    first = await reply.stream.__anext__()
    assert b'"usage"' not in first
    for callback in reply.on_close:  # the caller closed the stream after one chunk
        callback()
    estimate = exchange.notes["usage_estimated"]
    assert estimate["completion_tokens"] == 1 and estimate["prompt_tokens"] == exchange.prompt_tokens > 0
    assert exchange.cost_usd == pricing.cost_usd("gpt-4o-mini", estimate)
    assert exchange.notes[FINISH_NOTE] is not None
    await reply.stream.aclose()  # type: ignore[attr-defined]


async def test_cache_hits_and_unknown_models():
    account = Account(PriceTable.default())
    hit = chat_request(stream=False)
    hit.notes["cache_hit"] = True
    body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    await drive(account, hit, Reply.of_json(200, body))
    assert hit.cost_usd == 0

    unknown = chat_request(stream=False, model="my-own-model")
    await drive(account, unknown, Reply.of_json(200, {**body, "model": "my-own-model"}))
    assert unknown.usage == body["usage"] and unknown.cost_usd is None


async def test_reply_model_and_tier_price_the_call(tmp_path: Path):
    overrides = tmp_path / "prices.json"
    overrides.write_text(json.dumps({"models": {"my-own-model": {"input_usd_per_1m": 1, "output_usd_per_1m": 2}}}))
    account = Account(PriceTable.default().with_overrides(overrides))
    exchange = chat_request(stream=False, model="alias")
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    await drive(account, exchange, Reply.of_json(200, {"model": "my-own-model", "usage": usage}))
    assert exchange.cost_usd == Decimal("0.002")  # 1000 x $1/1M + 500 x $2/1M
    exchange = chat_request(stream=False)
    await drive(
        account, exchange, Reply.of_json(200, {"model": "gpt-4o-mini", "usage": usage, "service_tier": "priority"})
    )
    assert exchange.cost_usd == Decimal("0.00075")  # 1000 x $0.25/1M + 500 x $1.00/1M


def test_null_usage_is_cut_wherever_it_sits():
    decoder = SSEDecoder()
    events = decoder.feed(
        b'data: {"id":"a","choices":[],"usage":null}\n\n'
        b'data: {"usage": null, "id":"a","choices":[]}\n\n'
        b'data: {"id":"a","usage" : null ,"choices":[{"delta":{"content":"\\"usage\\":null"}}]}\n\n'
        b'data: {"id":"a","choices":[]}\n\n'
    )
    cut = [without_null_usage(e) for e in events]
    assert cut[0] == b'data: {"id":"a","choices":[]}\n\n'
    assert orjson.loads(cut[1][6:]) == {"id": "a", "choices": []}  # type: ignore[index]
    assert orjson.loads(cut[2][6:]) == {"id": "a", "choices": [{"delta": {"content": '"usage":null'}}]}  # type: ignore[index]
    assert cut[3] is None


# -- property: streamed and plain cost the same, for any usage ----------------------------------

PRICED_MODELS = sorted(
    m for m in ("gpt-6-sol", "gpt-6-astra", "gpt-5.5", "gpt-5.4", "gpt-4o-mini", "gpt-5-nano", "o3", "gpt-4.1")
)


@st.composite
def usages(draw: Callable[..., Any]) -> tuple[dict[str, int], dict[str, int]]:
    prompt = draw(st.integers(0, 1_200_000))
    cached = draw(st.integers(0, prompt))
    written = draw(st.integers(0, prompt - cached))
    output = draw(st.integers(0, 200_000))
    reasoning = draw(st.integers(0, output))
    chat = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    responses = {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }
    return chat, responses


@settings(max_examples=60, deadline=None)
@given(
    usage=usages(),
    model=st.sampled_from(PRICED_MODELS),
    tier=st.sampled_from(["default", "flex", "priority"]),
    asked=st.booleans(),
)
def test_property_streamed_and_plain_cost_the_same(usage, model, tier, asked):
    chat_usage, responses_usage = usage
    expected = pricing.cost_usd(model, chat_usage, tier=tier)
    assert expected == pricing.cost_usd(model, responses_usage, tier=tier)
    account = Account(PriceTable.default())

    async def run() -> list[Decimal | None]:
        costs = []
        plain = chat_request(stream=False, model=model)
        body = {"model": model, "usage": chat_usage, "service_tier": tier}
        await drive(account, plain, Reply.of_json(200, body))
        costs.append(plain.cost_usd)

        streamed = chat_request(stream=True, include_usage=True if asked else None, model=model)
        seen: list[Exchange] = []
        events = sse(chat_stream(model, chat_usage, tier, with_null=True))
        caller = await drive(account, streamed, Reply(200, stream=chunks(events)), seen)
        assert seen[0].json["stream_options"] == {"include_usage": True}
        assert (b'"usage"' in caller) is asked  # hidden unless asked for
        costs.append(streamed.cost_usd)

        plain = Exchange.build("POST", "/responses", {}, orjson.dumps({"model": model, "input": "x"}))
        response = {"object": "response", "model": model, "service_tier": tier, "usage": responses_usage}
        await drive(account, plain, Reply.of_json(200, response))
        costs.append(plain.cost_usd)

        streamed = Exchange.build(
            "POST", "/responses", {}, orjson.dumps({"model": model, "input": "x", "stream": True})
        )
        events = sse(
            [
                {"type": "response.created", "response": {**response, "usage": None}},
                {"type": "response.output_text.delta", "delta": "Hi"},
                {"type": "response.completed", "response": response},
            ],
            responses=True,
        )
        await drive(account, streamed, Reply(200, stream=chunks(events)))
        costs.append(streamed.cost_usd)
        return costs

    assert asyncio.run(run()) == [expected] * 4
