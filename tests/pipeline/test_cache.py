"""The cache stage: exact-match hits through the official SDK, streams replayed, the per-call
header, deterministic mode, TTL and size limits, isolation between principals, both backends."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from ferryman.config import Settings
from ferryman.exchange import Exchange, Principal, Reply
from ferryman.mock.control_client import MockControl
from ferryman.pipeline.cache import Cache, request_key
from ferryman.pipeline.cache_backends import RedisBackend
from ferryman.pipeline.chain import Pipeline

MESSAGES = [{"role": "user", "content": "Tell me about ferries."}]
CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cache_of(client: openai.OpenAI) -> Cache:
    pipeline: Pipeline = client._client._transport.pipeline  # type: ignore[attr-defined]
    stage = pipeline.stage(Cache)
    assert isinstance(stage, Cache)
    return stage


def upstream_calls(mock: MockControl, path: str = CHAT) -> int:
    return sum(1 for entry in mock.requests() if entry["path"] == path)


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    extra.setdefault("messages", MESSAGES)
    return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", **extra)


def exchange(principal: str = "process", path: str = "/chat/completions", **body: Any) -> Exchange:
    if path == "/chat/completions":
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    headers = {"content-type": "application/json", "authorization": "Bearer caller"}
    return Exchange.build("POST", path, headers, orjson.dumps(body), principal=Principal(id=principal))


async def body_of(reply: Reply) -> bytes:
    return await reply.aread()


async def close(pipeline: Pipeline) -> None:
    await pipeline.terminal.aclose()  # type: ignore[attr-defined]


# Hits through the SDK.


def test_second_identical_call_is_a_hit(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    first = chat(client)
    second = chat(client)
    assert first.headers["x-ferryman-cache"] == "miss"
    assert second.headers["x-ferryman-cache"] == "hit"
    assert second.http_response.content == first.http_response.content
    assert second.status_code == first.status_code == 200
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers.get("x-ferryman-cost-usd", "0") == "0"
    assert second.headers["x-ferryman-attempts"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert upstream_calls(ferryman_mock) == 1


def test_per_call_rate_limit_headers_are_not_replayed(ferryman_client):
    client = ferryman_client(cache={"mode": "all"})
    first = chat(client)
    assert "x-ratelimit-remaining-requests" in first.headers
    hit = chat(client)
    assert "x-ratelimit-remaining-requests" not in hit.headers
    assert "openai-processing-ms" not in hit.headers
    assert hit.headers["x-request-id"] == first.headers["x-request-id"]  # which call made this reply


async def test_a_hit_reports_the_cached_usage_at_no_cost(ferryman_pipeline, ferryman_mock):
    pipeline = ferryman_pipeline(cache={"mode": "all"})
    miss = exchange()
    first = await body_of(await pipeline(miss))
    hit = exchange()
    reply = await pipeline(hit)
    assert await body_of(reply) == first
    assert (hit.cache, miss.cache) == ("hit", "miss")
    assert hit.cost_usd == Decimal(0)
    assert hit.notes["cache_hit"] is True
    assert "cache_hit" not in miss.notes
    assert hit.usage == orjson.loads(first)["usage"]
    assert hit.usage is not None and hit.usage["prompt_tokens"] > 0
    assert hit.attempts == 0 and hit.deployment is None  # never reached the upstream
    assert upstream_calls(ferryman_mock) == 1
    await close(pipeline)


# The per-call header.


def test_no_store_neither_reads_nor_writes(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    no_store = {"ferryman-cache": "no-store"}
    assert chat(client, extra_headers=no_store).headers["x-ferryman-cache"] == "bypass"
    assert chat(client).headers["x-ferryman-cache"] == "miss"  # the no-store reply was not kept
    assert chat(client, extra_headers=no_store).headers["x-ferryman-cache"] == "bypass"  # nor read
    assert upstream_calls(ferryman_mock) == 3


def test_refresh_calls_the_upstream_and_replaces_the_entry(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    old = chat(client)
    fresh = chat(client, extra_headers={"ferryman-cache": "refresh"})
    assert fresh.headers["x-ferryman-cache"] == "refresh"
    assert upstream_calls(ferryman_mock) == 2
    assert fresh.parse().id != old.parse().id
    hit = chat(client)
    assert hit.headers["x-ferryman-cache"] == "hit"
    assert hit.http_response.content == fresh.http_response.content
    assert upstream_calls(ferryman_mock) == 2


# Modes.


def test_off_mode_has_no_stage(ferryman_settings):
    assert Cache.from_settings(ferryman_settings(), store=object()) is None
    assert ferryman_settings().cache.mode == "off"


def test_deterministic_mode_caches_temperature_zero_and_seeded_calls_only(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "deterministic"})
    assert chat(client).headers["x-ferryman-cache"] == "bypass"
    assert chat(client).headers["x-ferryman-cache"] == "bypass"
    assert upstream_calls(ferryman_mock) == 2
    assert chat(client, temperature=0).headers["x-ferryman-cache"] == "miss"
    assert chat(client, temperature=0).headers["x-ferryman-cache"] == "hit"
    assert chat(client, temperature=0.7).headers["x-ferryman-cache"] == "bypass"
    assert chat(client, temperature=1, seed=7).headers["x-ferryman-cache"] == "miss"
    assert chat(client, temperature=1, seed=7).headers["x-ferryman-cache"] == "hit"
    assert upstream_calls(ferryman_mock) == 5


def test_embeddings_and_moderations_are_cached_in_deterministic_mode(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "deterministic"})
    first = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="ferry")
    second = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="ferry")
    assert (first.headers["x-ferryman-cache"], second.headers["x-ferryman-cache"]) == ("miss", "hit")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert upstream_calls(ferryman_mock, "/v1/embeddings") == 1
    other = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="boat")
    assert other.headers["x-ferryman-cache"] == "miss"
    client.moderations.create(model="omni-moderation-latest", input="hello")
    again = client.moderations.with_raw_response.create(model="omni-moderation-latest", input="hello")
    assert again.headers["x-ferryman-cache"] == "hit"
    assert upstream_calls(ferryman_mock, "/v1/moderations") == 1


def test_what_is_not_cacheable_passes_by(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    for _ in range(2):
        uploaded = client.files.with_raw_response.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch")
        assert uploaded.headers["x-ferryman-cache"] == "bypass"  # multipart
        assert client.models.with_raw_response.list().headers["x-ferryman-cache"] == "bypass"  # GET
    assert upstream_calls(ferryman_mock, "/v1/files") == 2
    assert upstream_calls(ferryman_mock, "/v1/models") == 2


def test_errors_are_not_cached(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"}, retry={"max_attempts": 1})
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert upstream_calls(ferryman_mock) == 2
    # A 5xx from a fault is not kept either: the next identical call reaches the upstream.
    fault = {"x-ferryman-fault": "status=503"}
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=fault)
    assert chat(client).headers["x-ferryman-cache"] == "miss"
    assert upstream_calls(ferryman_mock) == 4


# Streams.


def test_a_stream_is_replayed_as_the_same_stream(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    runs = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = [chunk.model_dump() for chunk in raw.parse()]
        runs.append((raw.headers["x-ferryman-cache"], raw.headers["content-type"], chunks))
    (state1, type1, chunks1), (state2, type2, chunks2) = runs
    assert (state1, state2) == ("miss", "hit")
    assert type2 == type1 and type2.startswith("text/event-stream")
    assert chunks2 == chunks1 and len(chunks1) > 2
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks2 if c["choices"])
    assert text
    assert upstream_calls(ferryman_mock) == 1
    # A plain request with the same body otherwise is a different entry.
    assert chat(client).headers["x-ferryman-cache"] == "miss"


async def test_a_replayed_stream_has_the_same_bytes_split_into_events(ferryman_pipeline):
    pipeline = ferryman_pipeline(cache={"mode": "all"})
    miss = exchange(stream=True)
    first = await body_of(await pipeline(miss))
    hit = exchange(stream=True)
    reply = await pipeline(hit)
    assert reply.is_stream and hit.cache == "hit"
    assert reply.stream is not None
    events = [chunk async for chunk in reply.stream]
    assert b"".join(events) == first
    assert len(events) == first.count(b"\n\n") and all(e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    # The usage the inner stages learned from the stream (the caller did not ask for it) is kept.
    assert b'"usage":{' not in first
    assert hit.usage is not None and hit.usage == miss.usage and hit.cost_usd == 0
    await close(pipeline)


def test_a_cut_stream_is_not_stored(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"}, retry={"max_attempts": 1})
    cut = {"x-ferryman-fault": "cut_after=3"}
    with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the broken connection as it can
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=cut):
            pass
    errored = {"x-ferryman-fault": "error_after=2"}
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=errored
        ):
            pass
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert raw.headers["x-ferryman-cache"] == "miss"
    list(raw.parse())
    assert upstream_calls(ferryman_mock) == 3


def test_a_stream_the_caller_abandons_is_not_stored(ferryman_client, ferryman_mock):
    # A long reply: the mock writes 16 events at a time, so the first read cannot hold [DONE].
    ferryman_mock.set_fixtures([{"match": "ferries", "content": "All about ferries. " * 100}])
    client = ferryman_client(cache={"mode": "all"})
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert raw.headers["x-ferryman-cache"] == "miss"
    assert len(list(raw.parse())) > 32
    assert upstream_calls(ferryman_mock) == 2


def test_responses_plain_and_streamed_are_replayed(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    plain = [client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi") for _ in range(2)]
    assert [r.headers["x-ferryman-cache"] for r in plain] == ["miss", "hit"]
    assert plain[1].parse().output_text == plain[0].parse().output_text
    runs = []
    for _ in range(2):
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", stream=True)
        runs.append((raw.headers["x-ferryman-cache"], [event.model_dump() for event in raw.parse()]))
    assert [state for state, _ in runs] == ["miss", "hit"]
    assert runs[1][1] == runs[0][1] and runs[0][1][-1]["type"] == "response.completed"
    assert upstream_calls(ferryman_mock, "/v1/responses") == 2


# Time and size.


def test_entries_expire_after_the_ttl(ferryman_client, ferryman_mock):
    # A message of this test's own, counted by its body: a late request another test left behind
    # on the shared mock (it is reset between tests, not drained) cannot be taken for this one's.
    messages = [{"role": "user", "content": f"ttl {uuid.uuid4().hex}"}]
    client = ferryman_client(cache={"mode": "all", "ttl_s": 60})
    clock = Clock()
    cache_of(client).clock = clock
    chat(client, messages=messages)
    clock.now += 59
    hit = chat(client, messages=messages)
    assert hit.headers["x-ferryman-cache"] == "hit"
    assert hit.headers["age"] == "59"
    clock.now += 2
    assert chat(client, messages=messages).headers["x-ferryman-cache"] == "miss"
    ours = [e for e in ferryman_mock.requests() if (e.get("body") or {}).get("messages") == messages]
    sent = [e for e in ours if e["path"] == CHAT]
    assert len(sent) == 2


def test_max_entries_evicts_the_oldest(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all", "max_entries": 2})
    clock = Clock()
    cache_of(client).clock = clock
    for word in ("one", "two", "three"):
        clock.now += 1
        chat(client, messages=[{"role": "user", "content": word}])
    states = [
        chat(client, messages=[{"role": "user", "content": word}]).headers["x-ferryman-cache"]
        for word in ("three", "two", "one")
    ]
    assert states == ["hit", "hit", "miss"]
    assert upstream_calls(ferryman_mock) == 4


# Keys.


async def test_principals_do_not_share_entries(ferryman_pipeline, ferryman_mock):
    pipeline = ferryman_pipeline(cache={"mode": "all"})
    states = []
    for who in ("key-a", "key-b", "key-a", "key-b"):
        ex = exchange(who)
        await body_of(await pipeline(ex))
        states.append(ex.cache)
    assert states == ["miss", "miss", "hit", "hit"]
    assert upstream_calls(ferryman_mock) == 2
    await close(pipeline)


def key_of(path: str = "/chat/completions", headers: dict[str, str] | None = None, **body: Any) -> str:
    ex = exchange(path=path, **body)
    ex.headers.update(headers or {})
    return request_key(ex)


def test_the_key_is_the_normalised_request():
    base = key_of(temperature=0)
    raw = b'{ "temperature" : 0.0,\n "messages": ' + orjson.dumps(MESSAGES) + b', "model": "gpt-4o-mini"}'
    spaced = Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, raw)
    assert request_key(spaced) == base  # key order, whitespace, 0.0 vs 0
    # Fields that do not change a chat reply are left out...
    ignored = key_of(temperature=0, user="u1", metadata={"a": "b"}, store=True, safety_identifier="s")
    assert ignored == base
    assert key_of(temperature=0, stream_options={"include_obfuscation": False}) == base
    assert key_of(temperature=0, headers={"x-ferryman-fault": "cut_after=3"}) == base
    # ...everything else is in.
    assert key_of(temperature=0.5) != base
    assert key_of(temperature=0, stream=True) != base
    assert key_of(temperature=0, stream_options={"include_usage": True}) != base
    assert key_of(temperature=0, headers={"openai-project": "proj_1"}) != base
    # The Responses API echoes metadata and user in its reply, so there they are part of the key.
    responses: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hi"}
    assert key_of("/responses", **responses) != key_of("/responses", **responses, metadata={"a": "b"})
    assert key_of("/responses", **responses) != key_of("/responses", **responses, user="u1")


def test_background_and_conversation_responses_are_not_cacheable(ferryman_settings):
    settings = ferryman_settings(cache={"mode": "all"})
    stage = Cache(settings.cache, backend=None)  # type: ignore[arg-type]
    assert stage.key(exchange(path="/responses", model="m", input="hi")) is not None
    assert stage.key(exchange(path="/responses", model="m", input="hi", background=True)) is None
    assert stage.key(exchange(path="/responses", model="m", input="hi", conversation="conv_1")) is None


# Backends.


class _Broken:
    async def get(self, key: str, now: float) -> None:
        raise ConnectionError("down")

    async def put(self, *args: Any) -> None:
        raise ConnectionError("down")

    async def delete(self, key: str) -> None:
        raise ConnectionError("down")


def test_a_failing_backend_fails_open(ferryman_client, ferryman_mock):
    client = ferryman_client(cache={"mode": "all"})
    cache_of(client).backend = _Broken()
    for _ in range(2):
        reply = chat(client)
        assert reply.status_code == 200 and reply.headers["x-ferryman-cache"] == "miss"
    assert upstream_calls(ferryman_mock) == 2


async def test_postgres_backend(ferryman_pipeline, ferryman_mock, postgres_url):
    pipeline = ferryman_pipeline(cache={"mode": "all"}, store={"url": postgres_url})
    principal = f"pg-{uuid.uuid4().hex}"
    states = []
    for stream in (False, False, True, True):
        ex = exchange(principal, stream=stream)
        await body_of(await pipeline(ex))
        states.append(ex.cache)
    assert states == ["miss", "hit", "miss", "hit"]
    assert upstream_calls(ferryman_mock) == 2
    await close(pipeline)


def redis_pipeline(
    make: Callable[..., Pipeline], redis_url: str, db: Path, prefix: str, clock: Clock, **cache: Any
) -> Pipeline:
    pipeline = make(cache={"mode": "all", **cache}, store={"url": f"sqlite:///{db}", "redis_url": redis_url})
    stage = pipeline.stage(Cache)
    assert isinstance(stage, Cache) and isinstance(stage.backend, RedisBackend)
    stage.backend = RedisBackend(pipeline.store.redis(), prefix=prefix)  # type: ignore[attr-defined]
    stage.clock = clock
    return pipeline


async def test_redis_backend_is_shared_by_pipelines(
    ferryman_pipeline, ferryman_mock, redis_url, tmp_path, ferryman_settings: Callable[..., Settings]
):
    prefix = f"ferryman-test:{uuid.uuid4().hex}:"
    clock = Clock()
    one = redis_pipeline(ferryman_pipeline, redis_url, tmp_path / "one.db", prefix, clock, ttl_s=30, max_entries=2)
    two = redis_pipeline(ferryman_pipeline, redis_url, tmp_path / "two.db", prefix, clock, ttl_s=30, max_entries=2)
    redis = one.store.redis()  # type: ignore[attr-defined]
    try:
        first, second = exchange(), exchange()
        body = await body_of(await one(first))
        assert await body_of(await two(second)) == body
        assert (first.cache, second.cache) == ("miss", "hit")
        assert second.usage == orjson.loads(body)["usage"] and second.cost_usd == 0
        # Streams are shared too, replayed byte for byte.
        clock.now += 1
        streamed = await body_of(await one(exchange(stream=True)))
        replayed = exchange(stream=True)
        assert await body_of(await two(replayed)) == streamed and replayed.cache == "hit"
        assert upstream_calls(ferryman_mock) == 2
        # Redis holds the entries under the prefix with a native TTL.
        ttl = await redis.pttl(prefix + second.notes["cache_key"])
        assert 0 < ttl <= 30_000
        # max_entries=2: a third entry evicts the oldest, for every process.
        clock.now += 1
        await body_of(await one(exchange(temperature=0)))
        assert await redis.exists(prefix + first.notes["cache_key"]) == 0
        again = exchange()
        await body_of(await two(again))
        assert again.cache == "miss"
        # Expiry by the stage's clock, even before Redis drops the key.
        clock.now += 31
        late = exchange(temperature=0)
        await body_of(await two(late))
        assert late.cache == "miss"
    finally:
        names = [name async for name in redis.scan_iter(match=prefix + "*")]
        if names:
            await redis.delete(*names)
        for pipeline in (one, two):
            await pipeline.store.redis().aclose()  # type: ignore[attr-defined]
            await close(pipeline)
