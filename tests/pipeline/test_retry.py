"""The retry stage: the official SDK through Ferryman against the mock, plus unit tests of the
backoff, the reading of the server's advice and the decision, with a seeded RNG and fake clocks."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2
import openai
import pytest

import ferryman
from ferryman.config import RetrySettings
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.retry import Retry, backoff, is_quota_error, retry_after_s, verdict

MESSAGES = [{"role": "user", "content": "hi"}]
FAST = {"base_delay_s": 0.01, "max_delay_s": 0.05}


def chat(client: openai.OpenAI, **extra: object) -> object:
    return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, **extra)


# -- through the SDK, against the mock ------------------------------------------------------------


def test_retry_after_ms_is_waited_exactly_between_attempts(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=2;status=429;retry_after_ms=300"])
    raw = chat(ferryman_client(retry={"max_attempts": 4}))
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ferryman-attempts"] == "3"
    log = ferryman_mock.requests()
    assert [e["status"] for e in log] == [429, 429, 200]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(log)]
    assert all(gap >= 0.3 for gap in gaps), gaps


@pytest.mark.parametrize(
    "fault",
    [
        "status=429;code=insufficient_quota",
        "status=429;code=credit_balance_exhausted",
        "status=429;type=insufficient_quota;code=project_spend_limit_exceeded",
        "status=429;code=organization_usage_limit_exceeded",
    ],
)
def test_quota_errors_are_returned_after_exactly_one_request(ferryman_client, ferryman_mock, fault):
    ferryman_mock.set_faults([fault])
    client = ferryman_client(retry={"max_attempts": 5, **FAST})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.code == fault.rsplit("code=", 1)[1]
    assert len(ferryman_mock.requests()) == 1


def test_sdk_and_ferryman_retries_never_multiply_with_ferryman_openai(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["status=500;retry_after_ms=5"])
    client = ferryman_client(retry={"max_attempts": 3, **FAST})
    assert client.max_retries == 0  # ferryman.OpenAI() turns the SDK's own retries off
    with pytest.raises(openai.InternalServerError):
        chat(client)
    assert len(ferryman_mock.requests()) == 3


def test_sdk_retries_on_top_of_ferryman_multiply_the_attempts(ferryman_client, ferryman_mock):
    """Why the README says to keep the SDK's retries off: each SDK attempt runs Ferryman's
    whole retry loop, so ``max_retries=2`` makes max_attempts * 3 upstream requests."""
    ferryman_mock.set_faults(["status=500;retry_after_ms=5"])
    client = ferryman_client(retry={"max_attempts": 3, **FAST}).with_options(max_retries=2)
    with pytest.raises(openai.InternalServerError):
        chat(client)
    assert len(ferryman_mock.requests()) == 3 * 3


def test_ferryman_openai_defaults_to_no_sdk_retries(ferryman_settings):
    client = ferryman.OpenAI(ferryman={"settings": ferryman_settings()}, api_key="sk-placeholder")
    try:
        assert client.max_retries == 0
    finally:
        client.close()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_retryable_statuses_then_success(ferryman_client, ferryman_mock, status):
    ferryman_mock.set_faults([f"times=2;status={status}"])
    raw = chat(ferryman_client(retry={"max_attempts": 4, **FAST}))
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ferryman-attempts"] == "3"
    assert [e["status"] for e in ferryman_mock.requests()] == [status, status, 200]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_not_retried(ferryman_client, ferryman_mock, status):
    ferryman_mock.set_faults([f"times=1;status={status}"])
    with pytest.raises(openai.APIStatusError) as caught:
        chat(ferryman_client(retry={"max_attempts": 4, **FAST}))
    assert caught.value.status_code == status
    assert len(ferryman_mock.requests()) == 1


def test_connection_reset_is_retried(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;reset"])
    raw = chat(ferryman_client(retry={"max_attempts": 3, **FAST}))
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ferryman-attempts"] == "2"
    assert [e["status"] for e in ferryman_mock.requests()] == ["reset", 200]


def test_transport_errors_exhausted_reraise_as_api_connection_error(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["reset"])
    with pytest.raises(openai.APIConnectionError):
        chat(ferryman_client(retry={"max_attempts": 3, **FAST}))
    assert [e["status"] for e in ferryman_mock.requests()] == ["reset"] * 3


def test_x_should_retry_false_is_respected(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;status=503;should_retry=false"])
    with pytest.raises(openai.InternalServerError):
        chat(ferryman_client(retry={"max_attempts": 4, **FAST}))
    assert len(ferryman_mock.requests()) == 1


def test_x_should_retry_true_retries_even_a_400(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;status=400;should_retry=true"])
    raw = chat(ferryman_client(retry={"max_attempts": 4, **FAST}))
    assert raw.http_response.status_code == 200
    assert len(ferryman_mock.requests()) == 2


def test_retry_after_above_the_cap_is_not_retried(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;status=429;retry_after=5"])
    with pytest.raises(openai.RateLimitError) as caught:
        chat(ferryman_client(retry={"max_attempts": 4, "max_retry_after_s": 1, **FAST}))
    assert caught.value.response.headers["retry-after"] == "5"
    assert len(ferryman_mock.requests()) == 1


def test_deadline_is_respected_across_attempts(ferryman_client, ferryman_mock):
    """Each wait is 0.4 s and the deadline 1 s: no wait that would end past it is started."""
    ferryman_mock.set_faults(["status=503;retry_after_ms=400"])
    with pytest.raises(openai.InternalServerError):
        chat(ferryman_client(retry={"max_attempts": 10, "deadline_s": 1.0}))
    log = ferryman_mock.requests()
    assert 2 <= len(log) <= 3  # 3 unless the machine is very slow; never the 10 attempts allowed
    assert log[-1]["time"] - log[0]["time"] < 1.0


def test_stream_cut_after_its_first_bytes_is_not_retried(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;cut_after=3"])
    client = ferryman_client(retry={"max_attempts": 4, **FAST})
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert received  # the caller had the first chunks before the cut
    assert [e["status"] for e in ferryman_mock.requests()] == ["cut"]


def test_stream_failing_before_its_first_chunk_is_retried(ferryman_client, ferryman_mock):
    ferryman_mock.set_faults(["times=1;cut_after=0"])
    client = ferryman_client(retry={"max_attempts": 4, **FAST})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = list(raw.parse())
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert raw.headers["x-ferryman-attempts"] == "2"
    assert [e["status"] for e in ferryman_mock.requests()] == ["cut", 200]


def test_counters_for_telemetry(ferryman_pipeline, ferryman_mock):
    ferryman_mock.set_faults(["times=2;status=429;retry_after_ms=20"])
    pipeline = ferryman_pipeline(retry={"max_attempts": 4, **FAST})
    from ferryman import _loop

    exchange = Exchange.build(
        "POST",
        "/chat/completions",
        {"content-type": "application/json"},
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
    )
    try:
        reply = _loop.run(pipeline(exchange))
    finally:
        _loop.run(pipeline.terminal.aclose())
    assert reply.status == 200
    assert exchange.attempts == 3
    assert exchange.notes["retries"] == 2
    assert exchange.notes["upstream_429s"] == 2
    assert exchange.notes["retry_reasons"] == ["429", "429"]
    assert exchange.notes["waited_ms"] >= 40


# -- units ----------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_with_a_seeded_rng():
    rng, twin = random.Random(1234), random.Random(1234)
    for n in range(8):
        assert backoff(n, 0.5, 8.0, rng) == twin.uniform(0.0, min(8.0, 0.5 * 2**n))


def test_backoff_bounds_and_cap():
    rng = random.Random(7)
    draws = [backoff(n, 0.5, 8.0, rng) for n in range(200) for _ in range(5)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    first = [backoff(0, 0.5, 8.0, rng) for _ in range(500)]
    assert max(first) <= 0.5 and min(first) < 0.05  # full jitter reaches down to zero
    assert backoff(10_000, 0.5, 8.0, rng) <= 8.0  # no overflow for huge attempt numbers


def test_retry_after_parsing():
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after-ms": "oops", "retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "-3"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s({"retry-after": date}, now=now.timestamp()) == pytest.approx(30.0)


def error_reply(status: int, code: str | None = None, kind: str = "x", **headers: str) -> Reply:
    body = {"error": {"message": "m", "type": kind, "param": None, "code": code}}
    return Reply.of_json(status, body, headers)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (error_reply(429, "rate_limit_exceeded"), (True, None)),
        (error_reply(429, "slow_down"), (True, None)),
        (error_reply(429, "insufficient_quota", "insufficient_quota"), (False, None)),
        (error_reply(429, "whatever", "insufficient_quota"), (False, None)),
        (error_reply(429, "organization_spend_limit_exceeded"), (False, None)),
        (error_reply(429, "insufficient_quota", **{"x-should-retry": "true"}), (False, None)),  # never
        (error_reply(503, **{"retry-after-ms": "200"}), (True, 0.2)),
        (error_reply(503, **{"retry-after": "61"}), (False, 61.0)),  # above the cap of 60
        (error_reply(503, **{"x-should-retry": "false"}), (False, None)),
        (error_reply(400, **{"x-should-retry": "true"}), (True, None)),
        (error_reply(400), (False, None)),
        (error_reply(408), (True, None)),
        (error_reply(409), (True, None)),
        (Reply(200), (False, None)),
    ],
)
def test_verdict(reply, expected):
    assert verdict(reply, 60.0) == expected


def test_is_quota_error_needs_a_429():
    assert not is_quota_error(error_reply(400, "insufficient_quota"))


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def exchange() -> Exchange:
    return Exchange.build("POST", "/chat/completions", {}, b"{}")


async def test_deadline_with_a_fake_clock_stops_before_a_wait_that_would_end_past_it():
    fake = FakeTime()
    stage = Retry(RetrySettings(max_attempts=10, deadline_s=1.0), random.Random(0), fake.clock, fake.sleep)
    calls = 0

    async def upstream(ex: Exchange) -> Reply:
        nonlocal calls
        calls += 1
        return error_reply(503, **{"retry-after": "0.4"})

    ex = exchange()
    reply = await stage.handle(ex, upstream)
    assert reply.status == 503
    assert fake.slept == [0.4, 0.4]  # a third wait would end at 1.2 s, past the deadline
    assert calls == ex.attempts == 3
    assert ex.notes["waited_ms"] == pytest.approx(800)


async def test_backoff_waits_come_from_the_seeded_rng():
    fake = FakeTime()
    settings = RetrySettings(max_attempts=4, base_delay_s=0.5, max_delay_s=8.0)
    stage = Retry(settings, random.Random(42), fake.clock, fake.sleep)

    async def upstream(ex: Exchange) -> Reply:
        return error_reply(500)

    await stage.handle(exchange(), upstream)
    twin = random.Random(42)
    assert fake.slept == [twin.uniform(0, 0.5), twin.uniform(0, 1.0), twin.uniform(0, 2.0)]


async def test_last_transport_error_is_reraised():
    fake = FakeTime()
    stage = Retry(RetrySettings(max_attempts=3), random.Random(0), fake.clock, fake.sleep)
    errors = [httpx2.ConnectError("one"), httpx2.ReadTimeout("two"), httpx2.RemoteProtocolError("three")]

    async def upstream(ex: Exchange) -> Reply:
        raise errors.pop(0)

    ex = exchange()
    with pytest.raises(httpx2.RemoteProtocolError, match="three"):
        await stage.handle(ex, upstream)
    assert ex.attempts == 3
    assert ex.notes["retry_reasons"] == ["ConnectError", "ReadTimeout"]


async def test_unsupported_protocol_is_not_retried():
    stage = Retry(RetrySettings(max_attempts=3))

    async def upstream(ex: Exchange) -> Reply:
        raise httpx2.UnsupportedProtocol("ftp://")

    ex = exchange()
    with pytest.raises(httpx2.UnsupportedProtocol):
        await stage.handle(ex, upstream)
    assert ex.attempts == 1


async def test_stream_is_retried_until_its_first_chunk_then_never():
    fake = FakeTime()
    stage = Retry(RetrySettings(max_attempts=5), random.Random(0), fake.clock, fake.sleep)
    calls = 0

    async def broken_at_once() -> AsyncIterator[bytes]:
        raise httpx2.ReadError("before the first chunk")
        yield b""  # pragma: no cover - makes this an async generator

    async def broken_later() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
        raise httpx2.ReadError("after the first chunk")

    async def upstream(ex: Exchange) -> Reply:
        nonlocal calls
        calls += 1
        stream = broken_at_once() if calls == 1 else broken_later()
        return Reply(200, {"content-type": "text/event-stream"}, stream=stream)

    ex = exchange()
    reply = await stage.handle(ex, upstream)
    assert calls == 2
    assert reply.stream is not None
    got = []
    with pytest.raises(httpx2.ReadError, match="after"):
        async for chunk in reply.stream:
            got.append(chunk)
    assert got == [b"data: 1\n\n", b"data: 2\n\n"]
    assert calls == 2  # the failure after the first chunk reached the caller; no new attempt


async def test_discarded_replies_are_closed():
    fake = FakeTime()
    stage = Retry(RetrySettings(max_attempts=2), random.Random(0), fake.clock, fake.sleep)
    closed: list[int] = []

    async def upstream(ex: Exchange) -> Reply:
        reply = error_reply(503) if not closed else Reply(200)
        reply.on_close.append(lambda: closed.append(reply.status))
        return reply

    reply = await stage.handle(exchange(), upstream)
    assert reply.status == 200
    assert closed == [503]
