"""Upstream faults through the gateway: 429s, 5xx, timeouts, resets and cut streams from the mock
end in a success (a retry, a fallback) or in a clean error in OpenAI's shape, in bounded time,
never a hung connection.

The caller is the official SDK with its own retries off and a timeout, so a hang would fail the
test rather than block it. Faults come from the mock's control API (``set_faults``): rules
that name the path they hit and, where a test means only some of the upstream tries, how many
(``times=N``). The per-request ``x-ferryman-fault`` header cannot be used here: the gateway
forwards only the headers OpenAI's API defines, so the mock behind it never sees that one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer, free_port
from tests.pipeline.conftest import mock_deployment

MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = "path=/v1/chat/completions"
# Quick retries, so each test takes a fraction of a second.
RETRY = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}
SDK_TIMEOUT = 10.0  # a hung connection fails the test after this


def assert_openai_error(body: Any) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, as OpenAI sends it; returns the error."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return dict(error)


def assert_error_event(error: openai.APIError) -> dict[str, Any]:
    """The error the SDK raised from a ``data: {"error": …}`` stream event: OpenAI's fields."""
    body = error.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body), body
    return body


def chat_calls(mock: MockControl) -> int:
    return sum(1 for r in mock.requests() if r["path"] == "/v1/chat/completions")


@pytest.fixture
def client(gateway: Any, ferryman_mock: MockControl) -> Any:
    """``client(**settings)`` → an SDK client on a gateway with those settings (quick retries)."""

    def make(**settings: Any) -> openai.OpenAI:
        settings.setdefault("retry", RETRY)
        gw = gateway(**settings)
        return gw.client(gw.new_key(), timeout=SDK_TIMEOUT)

    return make


@pytest.fixture(autouse=True)
def _no_faults_left_behind(ferryman_mock: MockControl) -> Iterator[None]:
    """Clear this test's fault rules when it ends: not every user of the session's mock resets it
    first (``test_multi_instance`` takes the server itself), so a rule must not outlive its test."""
    try:
        yield
    finally:
        ferryman_mock.set_faults([])


@pytest.fixture
def failing_mock() -> Iterator[MockControl]:
    """A second mock that answers every call with a 500."""
    with BackgroundServer() as server:
        control = MockControl(server.url, app=server.app)
        control.set_faults(["status=500"])
        try:
            yield control
        finally:
            control.close()


# -- 429 ----------------------------------------------------------------------------------------


def test_an_upstream_429_with_retry_after_is_retried_after_the_wait_and_succeeds(client, ferryman_mock):
    """One 429 with retry-after-ms=200: the gateway waits that long, tries again and succeeds."""
    ferryman_mock.set_faults([f"{CHAT};times=1;status=429;retry_after_ms=200"])
    started = time.monotonic()
    raw = client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert time.monotonic() - started >= 0.2  # the server's retry-after was honoured
    assert raw.headers["x-ferryman-attempts"] == "2"
    assert chat_calls(ferryman_mock) == 2


def test_a_429_that_persists_ends_in_a_clean_429_after_the_retries(client, ferryman_mock):
    """Every try gets a 429: after max_attempts tries the caller gets that 429, in OpenAI's shape."""
    ferryman_mock.set_faults([f"{CHAT};status=429;retry_after_ms=20"])
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert time.monotonic() - started < 5
    error = assert_openai_error(caught.value.response.json())
    assert error["code"] == "rate_limit_exceeded"
    assert chat_calls(ferryman_mock) == RETRY["max_attempts"]


def test_an_upstream_quota_429_is_not_retried(client, ferryman_mock):
    """A 429 insufficient_quota cannot get better by retrying: one try, and the caller sees it."""
    ferryman_mock.set_faults([f"{CHAT};status=429;code=insufficient_quota"])
    with pytest.raises(openai.RateLimitError) as caught:
        client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = assert_openai_error(caught.value.response.json())
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert chat_calls(ferryman_mock) == 1


# -- 5xx ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx_are_retried_then_succeed(client, ferryman_mock, status):
    """Two 5xx in a row, then a success: the caller sees only the success (three attempts)."""
    ferryman_mock.set_faults([f"{CHAT};times=2;status={status}"])
    raw = client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    assert raw.headers["x-ferryman-attempts"] == "3"


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_5xx_that_persist_end_in_a_clean_error(client, ferryman_mock, status):
    """Every try gets the 5xx: after max_attempts tries the caller gets it, in OpenAI's shape."""
    ferryman_mock.set_faults([f"{CHAT};status={status}"])
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert time.monotonic() - started < 5
    assert caught.value.status_code == status
    assert_openai_error(caught.value.response.json())
    assert chat_calls(ferryman_mock) == RETRY["max_attempts"]


def test_a_streamed_call_whose_upstream_fails_before_the_first_chunk_gets_a_clean_error(client, ferryman_mock):
    """A stream that fails before its first byte is a plain JSON error, not a broken stream."""
    ferryman_mock.set_faults([f"{CHAT};status=503"])
    with pytest.raises(openai.InternalServerError) as caught:
        client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 503
    assert_openai_error(caught.value.response.json())


# -- fallback -----------------------------------------------------------------------------------


def test_a_failing_deployment_falls_back_to_the_next_one(client, ferryman_mock, failing_mock):
    """The first deployment (weighted so it is tried first) answers 500 to every try; the call
    succeeds on the second, and the caller never sees the failure."""
    failing = mock_deployment(failing_mock, name="failing", weight=1_000_000)
    healthy = mock_deployment(ferryman_mock, name="healthy", weight=0.000001)
    raw = client(deployments=[failing, healthy]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    assert chat_calls(failing_mock) == RETRY["max_attempts"]  # its own retries first, then the fallback
    assert chat_calls(ferryman_mock) == 1


def test_an_unreachable_deployment_falls_back_to_the_next_one(client, ferryman_mock):
    """The first deployment refuses connections: the stream comes from the second."""
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "weight": 1_000_000}
    dead["api_keys"] = ["env:FERRYMAN_TEST_UPSTREAM_KEY"]
    healthy = mock_deployment(ferryman_mock, name="healthy", weight=0.000001)
    stream = client(deployments=[dead, healthy]).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert chat_calls(ferryman_mock) == 1


# -- timeouts -----------------------------------------------------------------------------------


def test_an_upstream_that_does_not_answer_in_time_ends_in_a_clean_504(client, ferryman_mock):
    """The deployment allows 0.3 s; the mock takes 2 s: each of the two tries times out, and the
    caller gets a 504 in OpenAI's shape (code upstream_timeout) before the mock would have answered."""
    sdk = client(deployments=[mock_deployment(ferryman_mock, timeout_s=0.3)], retry={**RETRY, "max_attempts": 2})
    ferryman_mock.set_faults([f"{CHAT};times=2;delay_ms=2000"])  # both tries
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert time.monotonic() - started < 1.8
    assert caught.value.status_code == 504
    error = assert_openai_error(caught.value.response.json())
    assert error["code"] == "upstream_timeout"
    # The mock logs a delayed request when its delay ends: let both land here, not in a later test.
    deadline = time.monotonic() + 5
    while chat_calls(ferryman_mock) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat_calls(ferryman_mock) == 2


def test_a_stream_whose_first_token_does_not_come_in_time_ends_in_a_clean_504(client, ferryman_mock):
    """No first chunk within the deployment's timeout: a 504 in OpenAI's shape, not a silent wait."""
    sdk = client(deployments=[mock_deployment(ferryman_mock, timeout_s=0.3)], retry={**RETRY, "max_attempts": 1})
    ferryman_mock.set_faults([f"{CHAT};times=1;ttft_ms=1500"])  # the one try
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert time.monotonic() - started < 1.2
    assert caught.value.status_code == 504
    assert assert_openai_error(caught.value.response.json())["code"] == "upstream_timeout"


def test_a_stream_that_stalls_midway_ends_in_an_error_event(client, ferryman_mock):
    """Chunks stop coming after the first ones (the deployment's read timeout passes between
    two): the caller has its first chunks, then an error event the SDK raises."""
    sdk = client(deployments=[mock_deployment(ferryman_mock, timeout_s=0.3)])
    ferryman_mock.set_faults([f"{CHAT};times=1;chunk_delay_ms=700"])  # the stream, not a retry of it
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        max_tokens=3,  # a short stream: the mock, which goes on writing to nobody, is done soon too
    )
    started = time.monotonic()
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert time.monotonic() - started < 2  # the whole stream would take over 3 s
    assert received, "the first chunk arrives before the stall"
    assert assert_error_event(caught.value)["code"] == "upstream_timeout"


# -- broken connections and streams -------------------------------------------------------------


def test_a_stream_the_upstream_cuts_raises_an_api_error_instead_of_hanging(client, ferryman_mock):
    """The mock drops the stream after 3 chunks: the gateway appends an error event, which the SDK
    raises after the chunks that came; it does not wait for a [DONE] that will never come."""
    sdk = client()
    ferryman_mock.set_faults([f"{CHAT};times=1;cut_after=3"])
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert time.monotonic() - started < 3
    assert 1 <= len(received) <= 3
    assert assert_error_event(caught.value)["code"] in ("stream_interrupted", "stream_incomplete")


def test_an_error_event_from_the_upstream_reaches_the_caller(client, ferryman_mock):
    """An error event the upstream sends mid-stream is forwarded, and the SDK raises it."""
    sdk = client()
    ferryman_mock.set_faults([f"{CHAT};times=1;error_after=3"])
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert_error_event(caught.value)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_connection_reset_ends_in_a_clean_502(client, ferryman_mock, stream):
    """Every try's connection is reset: after the retries the caller gets a 502 in OpenAI's shape."""
    sdk = client()
    ferryman_mock.set_faults([f"{CHAT};times={RETRY['max_attempts']};reset"])  # every try
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 502
    error = assert_openai_error(caught.value.response.json())
    assert error["code"] == "upstream_unreachable"
    assert chat_calls(ferryman_mock) == RETRY["max_attempts"]
