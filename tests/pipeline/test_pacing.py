"""The pacing stage: callers wait for capacity instead of getting 429s.

The end-to-end tests drive the official SDK through Ferryman against the mock with Ferryman's
retries OFF (``max_attempts=1``), so any 429 the mock sent would reach the caller: "zero 429s"
is pacing's doing, not retry's. The mock's bucket, like OpenAI's, holds a full minute of
capacity (burst = RPM), so a test that stays under a few seconds sends its load at once: the
burst is used up at the start and the rest is paced at ``RPM / 60`` per second.

Run as a script (``python test_pacing.py worker ...``) this file is the worker process of the
two-process Redis test.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from ferryman.config import DeploymentSettings, PacingSettings, Settings
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline import build
from ferryman.pipeline.buckets import Cost, MemoryBuckets, RedisBuckets, Seed, Seen, go_duration, reserve
from ferryman.pipeline.pacing import REFUSED_HEADER, Pacing, cost_of
from ferryman.tokens import count_request_prompt_tokens
from ferryman.transport import AsyncFerrymanTransport

MESSAGES = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_attempts": 1}


def deployment(mock: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "mock", "base_url": mock.base_url, "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"], **extra}


def sdk(pipeline: Any) -> openai.AsyncOpenAI:
    """The async SDK on a pipeline (the host is never dialled: the transport runs the pipeline)."""
    http = httpx2.AsyncClient(transport=AsyncFerrymanTransport(pipeline), timeout=60)
    return openai.AsyncOpenAI(
        base_url="http://ferryman.invalid/v1", api_key="sk-caller", max_retries=0, http_client=http
    )


async def fire(client: openai.AsyncOpenAI, n: int, concurrency: int = 16, **create: Any) -> list[int]:
    """``n`` chat calls, ``concurrency`` at a time; the status each caller saw."""
    create = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16, **create}
    queue = list(range(n))
    statuses: list[int] = []

    async def worker() -> None:
        while queue:
            queue.pop()
            try:
                raw = await client.chat.completions.with_raw_response.create(**create)
                statuses.append(raw.http_response.status_code)
            except openai.APIStatusError as error:
                statuses.append(error.status_code)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def worst_excess(times: Sequence[float], capacity: float, per_second: float) -> float:
    """How far the busiest interval went past a token bucket's allowance: a bucket of
    ``capacity`` (its burst) refilling ``per_second`` admits at most ``capacity + per_second * (tj - ti)``
    requests in any interval [ti, tj]. Negative: every interval stayed within it."""
    times = sorted(times)
    worst = -math.inf
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - (capacity + per_second * (times[j] - start)))
    return worst


def mock_429s(mock: Any) -> int:
    return sum(1 for entry in mock.requests() if entry["status"] == 429)


# -- the proof: no 429s at the caller, none sent by the mock ------------------------------

RPM = 385  # burst 385; the other 15 of 400 are paced at 6.4/s, about 2.3 s


async def test_seeded_pacing_400_requests_over_the_limit_zero_429s(ferryman_pipeline, ferryman_mock):
    ferryman_mock.set_limits(rpm=RPM, tpm=10_000_000)
    pipeline = ferryman_pipeline(deployments=[deployment(ferryman_mock, rpm=RPM)], retry=NO_RETRY)
    client = sdk(pipeline)
    statuses = await fire(client, 400)
    await client.close()
    assert statuses == [200] * 400  # every call succeeded; the callers saw zero 429s
    log = ferryman_mock.requests()
    assert len(log) == 400 and mock_429s(ferryman_mock) == 0  # and the mock sent none
    assert worst_excess([e["time"] for e in log], RPM, RPM / 60) <= 0


async def test_learned_pacing_400_requests_zero_429s_even_before_learning(ferryman_pipeline, ferryman_mock):
    """Unseeded: the first call probes alone, its x-ratelimit-* headers teach the lane the limit,
    and the burst behind it is paced from the start, so not even the first calls meet a 429."""
    ferryman_mock.set_limits(rpm=RPM, tpm=10_000_000)
    pipeline = ferryman_pipeline(deployments=[deployment(ferryman_mock)], retry=NO_RETRY)
    client = sdk(pipeline)
    statuses = await fire(client, 400)
    await client.close()
    assert statuses == [200] * 400
    assert len(ferryman_mock.requests()) == 400 and mock_429s(ferryman_mock) == 0


async def test_tpm_bound_learned_pacing_zero_429s(ferryman_pipeline, ferryman_mock):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    cost = count_request_prompt_tokens("/chat/completions", body) + 200  # max_tokens=200
    tpm = cost * 95  # RPM is no constraint; 95 calls' worth of tokens, the other 5 paced (~3 s)
    ferryman_mock.set_limits(rpm=100_000, tpm=tpm)
    pipeline = ferryman_pipeline(deployments=[deployment(ferryman_mock)], retry=NO_RETRY)
    client = sdk(pipeline)
    statuses = await fire(client, 100, max_tokens=200)
    await client.close()
    assert statuses == [200] * 100
    log = ferryman_mock.requests()
    assert len(log) == 100 and mock_429s(ferryman_mock) == 0
    assert worst_excess([e["time"] for e in log], 95, 95 / 60) <= 0


# -- pauses, refusals ---------------------------------------------------------------------------


def chat_exchange(**body: Any) -> Exchange:
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    return Exchange.build(
        "POST", "/chat/completions", {"content-type": "application/json"}, json.dumps(payload).encode()
    )


async def test_a_429_pauses_the_lane_for_the_advised_time(ferryman_pipeline, ferryman_mock):
    ferryman_mock.set_faults(["times=1;status=429;retry_after_ms=400"])
    pipeline = ferryman_pipeline(deployments=[deployment(ferryman_mock)], retry=NO_RETRY)
    try:
        first = await pipeline(chat_exchange())
        second_exchange = chat_exchange()
        second = await pipeline(second_exchange)
    finally:
        await pipeline.terminal.aclose()
    assert first.status == 429
    assert second.status == 200
    log = ferryman_mock.requests()
    assert [e["status"] for e in log] == [429, 200]
    assert log[1]["time"] - log[0]["time"] >= 0.39  # the second call was held for the advised time
    assert second_exchange.notes["pacing_wait_ms"] > 300


def test_waiting_longer_than_max_wait_gets_a_429_made_by_ferryman(ferryman_client, ferryman_mock):
    client = ferryman_client(
        deployments=[deployment(ferryman_mock, rpm=1)], pacing={"max_wait_s": 0.5}, retry={"max_attempts": 4}
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert "made by Ferryman" in error.message
    assert error.response.headers[REFUSED_HEADER] == "pacing"
    assert error.response.headers["x-should-retry"] == "false"
    assert len(ferryman_mock.requests()) == 1  # refused before the upstream, and not retried


def test_a_call_larger_than_the_tpm_is_refused_at_once(ferryman_client, ferryman_mock):
    client = ferryman_client(deployments=[deployment(ferryman_mock, tpm=50)], retry=NO_RETRY)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert "tokens-per-minute" in caught.value.message
    assert ferryman_mock.requests() == []


async def test_cost_is_exact_prompt_tokens_plus_output_cap():
    exchange = chat_exchange(max_tokens=40, n=2)
    cost = cost_of(exchange)
    prompt = count_request_prompt_tokens("/chat/completions", exchange.json)
    assert exchange.prompt_tokens == prompt and exchange.output_cap == 80
    assert cost == Cost(1.0, float(prompt + 80))


async def test_while_the_tokenizer_loads_only_the_probe_goes_uncounted(monkeypatch):
    """At a process's start the tokenizer is still being built (on a thread): the call that will
    be the probe need not wait for it, but every call that may be paced is counted exactly."""
    from ferryman.tokens import encodings

    monkeypatch.setattr(encodings, "_READY", set())  # as if the build were still running
    quick = chat_exchange(max_tokens=40)
    assert cost_of(quick, exact=False) == Cost(1.0, 40.0) and quick.prompt_tokens is None
    seen: list[int | None] = []

    async def upstream(exchange: Exchange) -> Reply:
        seen.append(exchange.prompt_tokens)
        return Reply(200, {"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5999"})

    pacing = stage()
    await pacing.handle(chat_exchange(), upstream)  # the probe: not counted
    await pacing.handle(chat_exchange(), upstream)  # the lane is learned: counted
    exact = count_request_prompt_tokens("/chat/completions", chat_exchange().json)
    assert seen == [None, exact]
    seeded = stage(tpm=60_000)  # a seeded lane is paced from its first call: counted
    await seeded.handle(chat_exchange(), upstream)
    assert seen[-1] == exact


# -- the stage without the mock: FIFO order, the probe ---------------------------------------


def stage(**deployment_settings: Any) -> Pacing:
    return Pacing(PacingSettings(), [DeploymentSettings(name="d", **deployment_settings)], MemoryBuckets())


async def test_waiters_are_served_first_in_first_out():
    pacing = stage(tpm=60_000)  # 1,000 tokens a second
    order: list[int] = []

    def upstream_for(i: int):
        async def upstream(exchange: Exchange) -> Reply:
            order.append(i)
            return Reply(200)

        return upstream

    assert await pacing.buckets.take("d|gpt-4o-mini", Cost(1, 59_900), Seed(None, 60_000)) == 0  # 100 left
    # The first waiter needs 300 tokens (~0.3 s away); the small ones behind it would fit now,
    # but must not overtake it.
    sizes = [300, 10, 10, 10]
    tasks = []
    for i, size in enumerate(sizes):
        exchange = chat_exchange()
        exchange.prompt_tokens, exchange.output_cap = size, 0
        tasks.append(asyncio.create_task(pacing.handle(exchange, upstream_for(i))))
        await asyncio.sleep(0)  # let it reach the queue before the next one arrives
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_unseeded_lane_sends_one_probe_until_limits_are_known():
    pacing = stage()
    release = asyncio.Event()
    inside = 0
    headers = {"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5999"}

    async def upstream(exchange: Exchange) -> Reply:
        nonlocal inside
        inside += 1
        await release.wait()
        inside -= 1
        return Reply(200, headers)

    tasks = [asyncio.create_task(pacing.handle(chat_exchange(), upstream)) for _ in range(5)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert inside == 1  # the probe is out; the rest wait for what it learns
    release.set()
    await asyncio.gather(*tasks)
    assert isinstance(pacing.buckets, MemoryBuckets)
    lane = pacing.buckets.lanes["d|gpt-4o-mini"]
    assert lane.requests.capacity == 6000


async def test_an_upstream_without_limit_headers_is_not_paced():
    pacing = stage()
    inside = 0
    gate = asyncio.Event()

    async def upstream(exchange: Exchange) -> Reply:
        nonlocal inside
        inside += 1
        if inside == 3:
            gate.set()
        await gate.wait()
        return Reply(200)

    await pacing.handle(chat_exchange(), lambda ex: _reply(Reply(200)))  # the probe: no headers
    await asyncio.wait_for(asyncio.gather(*(pacing.handle(chat_exchange(), upstream) for _ in range(3))), 5)
    assert inside == 3  # all three were in flight together


async def _reply(reply: Reply) -> Reply:
    return reply


async def test_without_limit_headers_a_tpm_seed_is_settled_against_real_usage():
    pacing = stage(tpm=6_000)
    exchange = chat_exchange()
    exchange.prompt_tokens, exchange.output_cap = 1_000, 4_000  # charged 5,000 up front

    async def upstream(ex: Exchange) -> Reply:
        return Reply.of_json(200, {"usage": {"prompt_tokens": 1_000, "completion_tokens": 200, "total_tokens": 1_200}})

    await pacing.handle(exchange, upstream)
    await asyncio.gather(*pacing._tasks)
    assert isinstance(pacing.buckets, MemoryBuckets)
    level = pacing.buckets.lanes["d|gpt-4o-mini"].tokens.level
    assert level == pytest.approx(6_000 - 1_200, abs=5)  # 3,800 unused tokens came back


async def test_a_failing_shared_store_lets_calls_through():
    class Down:
        async def take(self, *args: Any) -> float | None:
            raise ConnectionError("redis is down")

        observe = pause = adjust = take

    pacing = Pacing(PacingSettings(), [DeploymentSettings(name="d", rpm=60)], Down())  # type: ignore[arg-type]
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59"}
    reply = await pacing.handle(chat_exchange(), lambda ex: _reply(Reply(200, headers)))
    assert reply.status == 200  # unpaced, not failed; and the reply survived the failed bookkeeping


async def test_files_and_reads_are_not_paced():
    pacing = stage(rpm=1)
    calls = 0

    async def upstream(exchange: Exchange) -> Reply:
        nonlocal calls
        calls += 1
        return Reply(200)

    for _ in range(3):
        await pacing.handle(Exchange.build("GET", "/models", {}, b""), upstream)
        await pacing.handle(Exchange.build("POST", "/files", {"content-type": "multipart/form-data"}, b"x"), upstream)
    assert calls == 6


# -- buckets: the same rules in memory and in Redis ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("2.5s", 2.5),
        ("500us", 0.0005),
        ("1m30.25s", 90.25),
        ("", None),
        ("5", None),
        ("soon", None),
        ("1x", None),
        (None, None),
    ],
)
def test_go_durations(text, seconds):
    result = go_duration(text)
    assert result == (None if seconds is None else pytest.approx(seconds))


def test_seen_reads_and_refines_the_headers():
    seen = Seen.from_headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "29",
            "x-ratelimit-reset-requests": "30.5s",  # full in 30.5 s at 1/s: 29.5 left
            "x-ratelimit-limit-tokens": "6000",
            "x-ratelimit-remaining-tokens": "100",
            "x-ratelimit-reset-tokens": "6m0s",  # disagrees with remaining: remaining wins
        }
    )
    assert seen is not None
    assert seen.limit_requests == 60 and seen.remaining_requests == pytest.approx(29.5)
    assert seen.limit_tokens == 6000 and seen.remaining_tokens == 100 and seen.reset_tokens == 360
    assert Seen.from_headers({"content-type": "application/json"}) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryBuckets(FakeClock())
        return
    import redis.asyncio as aioredis

    redis_url = request.getfixturevalue("redis_url")
    client = aioredis.from_url(redis_url)
    store = RedisBuckets(client, prefix=f"ferryman-test:{uuid.uuid4().hex}:")
    try:
        yield store
    finally:
        await client.aclose()
        drop_keys(redis_url, store.prefix)


SEED = Seed(requests=6)  # 0.1 a second; burst 6
KEY = "d|m"
ONE = Cost(1.0, 0.0)


async def test_burst_is_the_capacity_less_the_reserve_then_refill(buckets):
    waits = [await buckets.take(KEY, ONE, SEED) for _ in range(5)]
    # level 6 and a reserve of 1.006: calls go while the level holds 2.006 → 4 at once.
    assert waits[:4] == [0, 0, 0, 0]
    assert waits[4] == pytest.approx((1 + reserve(6) - 2) * 10, abs=0.01)  # seconds at 0.1 a second
    if isinstance(buckets, MemoryBuckets):
        buckets.clock.now += 10
        assert await buckets.take(KEY, ONE, SEED) == 0  # refilled


async def test_unknown_limits_answer_none_and_too_large_answers_inf(buckets):
    assert await buckets.take(KEY, ONE, Seed()) is None
    assert await buckets.take(KEY, Cost(1, 500), Seed(tokens=100)) == math.inf


async def test_pause_holds_the_lane(buckets):
    await buckets.pause(KEY, 5.0, SEED)
    assert 4.9 <= await buckets.take(KEY, ONE, SEED) <= 5.0


async def test_headers_teach_an_unseeded_lane(buckets):
    seen = Seen(limit_requests=60, remaining_requests=0)
    await buckets.observe(KEY, seen, Cost(0, 0), Cost(0, 0), 0.0, Seed())
    wait = await buckets.take(KEY, ONE, Seed())
    assert wait == pytest.approx(1 + reserve(60), abs=0.01)  # empty; refills 1 a second


async def test_headers_lower_the_level_less_calls_sent_after(buckets):
    seed = Seed(requests=60)
    seen = Seen(limit_requests=60, remaining_requests=10)
    await buckets.observe(KEY, seen, Cost(5, 0), Cost(7, 0), 0.0, seed)  # 5 sent after it, in flight
    admitted = 0
    while await buckets.take(KEY, ONE, seed) == 0:
        admitted += 1
    assert admitted == 3  # 10 - 5 = 5 left, less the reserve of 1.06 → 3 calls


async def test_a_lower_seed_caps_what_the_headers_advertise(buckets):
    seed = Seed(requests=60)
    await buckets.observe(KEY, Seen(limit_requests=600, remaining_requests=0), Cost(0, 0), Cost(0, 0), 0.0, seed)
    wait = await buckets.take(KEY, ONE, seed)
    assert wait == pytest.approx(1 + reserve(60), abs=0.01)  # refilling at 60/min, not 600/min


async def test_raise_only_where_one_process_writes(buckets):
    seed = Seed(requests=60)
    for _ in range(50):
        await buckets.take(KEY, ONE, seed)
    await buckets.observe(KEY, Seen(limit_requests=60, remaining_requests=40), Cost(0, 0), Cost(0, 0), 0.0, seed)
    admitted = 0
    while await buckets.take(KEY, ONE, seed) == 0:
        admitted += 1
    # memory raises to the upstream's 40; Redis (shared) never raises on one process's word: 10 left
    assert admitted == (38 if isinstance(buckets, MemoryBuckets) else 8)


async def test_adjust_refunds_unused_tokens(buckets):
    seed = Seed(tokens=6_000)
    assert await buckets.take(KEY, Cost(1, 5_950), seed) == 0
    assert await buckets.take(KEY, Cost(1, 90), seed) > 0  # 50 left: short of 90 and the reserve
    await buckets.adjust(KEY, 5_000, seed)  # the call used 950, not 5,950
    assert await buckets.take(KEY, Cost(1, 90), seed) == 0


# -- Redis: several pipelines, one limit ---------------------------------------------------------

SHARED_RPM = 120  # 2 a second; burst 120
SHARED_CALLS = 126


def shared_settings(mock: Any, redis_url: str, db: Path) -> dict[str, Any]:
    return {
        "deployments": [deployment(mock, rpm=SHARED_RPM)],
        "store": {"url": f"sqlite:///{db}", "redis_url": redis_url},
        "retry": NO_RETRY,
    }


def use_prefix(pipeline: Any, prefix: str) -> None:
    pacing = pipeline.stage(Pacing)
    assert isinstance(pacing.buckets, RedisBuckets)
    pacing.buckets.prefix = prefix


def drop_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


@pytest.mark.redis
async def test_two_pipelines_on_one_redis_never_exceed_the_seeded_rpm(
    ferryman_pipeline, ferryman_mock, redis_url, tmp_path
):
    ferryman_mock.set_limits(rpm=SHARED_RPM, tpm=10_000_000)
    prefix = f"ferryman-test:{uuid.uuid4().hex}:"
    pipelines = [ferryman_pipeline(**shared_settings(ferryman_mock, redis_url, tmp_path / f"{i}.db")) for i in (0, 1)]
    for pipeline in pipelines:
        use_prefix(pipeline, prefix)
    clients = [sdk(p) for p in pipelines]
    try:
        results = await asyncio.gather(*(fire(c, SHARED_CALLS // 2, concurrency=8) for c in clients))
    finally:
        for client, pipeline in zip(clients, pipelines, strict=True):
            await client.close()
            await pipeline.store.redis().aclose()
        drop_keys(redis_url, prefix)
    assert results[0] + results[1] == [200] * SHARED_CALLS
    log = ferryman_mock.requests()
    assert len(log) == SHARED_CALLS and mock_429s(ferryman_mock) == 0
    assert worst_excess([e["time"] for e in log], SHARED_RPM, SHARED_RPM / 60) <= 0


@pytest.mark.redis
async def test_redis_lanes_share_one_burst_where_memory_lanes_do_not(redis_url):
    """Two stores stand for two processes: on one Redis prefix they spend one burst between them;
    in memory each spends its own (so two processes would send twice the limit at once)."""
    import redis.asyncio as aioredis

    prefix = f"ferryman-test:{uuid.uuid4().hex}:"
    clients = [aioredis.from_url(redis_url) for _ in range(2)]
    seed = Seed(requests=SHARED_RPM)

    async def burst(stores: list[Any]) -> int:
        admitted = 0
        for _ in range(SHARED_RPM):
            for store in stores:
                admitted += await store.take(KEY, ONE, seed) == 0
        return admitted

    try:
        shared = await burst([RedisBuckets(c, prefix) for c in clients])
    finally:
        for client in clients:
            await client.aclose()
        drop_keys(redis_url, prefix)
    alone = await burst([MemoryBuckets(FakeClock()), MemoryBuckets(FakeClock())])
    assert SHARED_RPM - 3 <= shared <= SHARED_RPM  # one burst (less the reserve; plus a moment's refill)
    assert alone == 2 * (SHARED_RPM - 2)  # two bursts


@pytest.mark.redis
def test_two_processes_on_one_redis_never_exceed_the_seeded_rpm(ferryman_mock, redis_url, tmp_path, upstream_key):
    import redis

    ferryman_mock.set_limits(rpm=SHARED_RPM, tpm=10_000_000)
    prefix = f"ferryman-test:{uuid.uuid4().hex}:"
    control = redis.Redis.from_url(redis_url, socket_timeout=90)  # outlasts the 60 s waits below
    env = {**os.environ, "FERRYMAN_TEST_UPSTREAM_KEY": upstream_key}
    args = [sys.executable, __file__, "worker", ferryman_mock.base_url, redis_url, prefix, str(SHARED_CALLS // 2)]
    pipe = subprocess.PIPE
    workers = [
        subprocess.Popen([*args, str(tmp_path / f"w{i}.db")], stdout=pipe, stderr=pipe, env=env, cwd=tmp_path)
        for i in (0, 1)
    ]
    try:
        for _ in workers:  # both have built their pipelines: start them together
            assert control.blpop([prefix + "ready"], timeout=60) is not None, "a worker did not start"
        control.rpush(prefix + "go", *["go"] * len(workers))
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        drop_keys(redis_url, prefix)
        control.close()
    statuses: list[int] = []
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
        statuses += json.loads(out.decode().strip().splitlines()[-1])
    assert statuses == [200] * SHARED_CALLS
    log = ferryman_mock.requests()
    assert len(log) == SHARED_CALLS and mock_429s(ferryman_mock) == 0
    assert worst_excess([e["time"] for e in log], SHARED_RPM, SHARED_RPM / 60) <= 0


def _worker(base_url: str, redis_url: str, prefix: str, calls: str, db: str) -> None:
    """One process of the two-process test: its own pipeline on the shared Redis."""
    import redis

    mock = type("Mock", (), {"base_url": base_url})
    settings = Settings(**shared_settings(mock, redis_url, Path(db)))
    pipeline = build(settings)
    use_prefix(pipeline, prefix)
    control = redis.Redis.from_url(redis_url, socket_timeout=90)  # outlasts the 60 s wait below
    control.rpush(prefix + "ready", "1")
    control.blpop([prefix + "go"], timeout=60)

    async def run() -> list[int]:
        client = sdk(pipeline)
        try:
            return await fire(client, int(calls), concurrency=8)
        finally:
            await client.close()
            await pipeline.store.redis().aclose()  # type: ignore[attr-defined]

    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "worker":
    _worker(*sys.argv[2:])


async def test_a_raise_counts_no_refill_the_upstream_may_already_have_counted():
    """The upstream read its remaining count at some moment between send and reply: after a slow
    reply (age 30 s here, half a minute of refill), raising to remaining + refill would admit calls
    the upstream has no room for. A raise takes the remaining count as it is."""
    buckets = MemoryBuckets()
    seed = Seed(requests=60)
    for _ in range(50):
        await buckets.take(KEY, ONE, seed)
    await buckets.observe(KEY, Seen(limit_requests=60, remaining_requests=40), Cost(0, 0), Cost(0, 0), 30.0, seed)
    admitted = 0
    while await buckets.take(KEY, ONE, seed) == 0:
        admitted += 1
    assert admitted == 38  # 40 less the reserve, not 60 less it
