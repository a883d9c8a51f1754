"""Per-key rate limits and quotas, as headers and 429s."""

from __future__ import annotations

import openai
import pytest

from ferryman.errors import OpenAIError
from ferryman.mock.limits import RateLimiter, go_duration

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.012, "12ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723.5, "1h2m3.5s")],
)
def test_go_durations(seconds, text):
    assert go_duration(seconds) == text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_buckets_refill_continuously():
    clock = Clock()
    limiter = RateLimiter(rpm=60, tpm=6000, clock=clock)
    for _ in range(60):
        limiter.acquire("k", 10, "gpt-4o")
    with pytest.raises(OpenAIError) as caught:
        limiter.acquire("k", 10, "gpt-4o")
    assert caught.value.status == 429 and caught.value.code == "rate_limit_exceeded"
    assert caught.value.headers["retry-after-ms"] == "1000"  # one request refills in 1 s at 60 RPM
    clock.now += 1.0
    headers = limiter.acquire("k", 10, "gpt-4o")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limiter.acquire("other-key", 10, "gpt-4o")["x-ratelimit-remaining-requests"] == "59"


def test_token_limit_and_too_large_request():
    clock = Clock()
    limiter = RateLimiter(rpm=1000, tpm=100, clock=clock)
    limiter.acquire("k", 80, "gpt-4o")
    with pytest.raises(OpenAIError) as caught:
        limiter.acquire("k", 50, "gpt-4o")
    assert caught.value.type == "tokens"
    assert int(caught.value.headers["retry-after-ms"]) == 18000  # 30 tokens at 100/60 per second
    with pytest.raises(OpenAIError) as too_big:
        limiter.acquire("k", 101, "gpt-4o")
    assert "Request too large" in too_big.value.message
    assert "retry-after" not in too_big.value.headers


def test_rpm_429_through_the_sdk(ferryman_mock):
    ferryman_mock.set_limits(rpm=3)
    raw = ferryman_mock.client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert 0 < int(error.response.headers["retry-after-ms"]) <= 20000
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_limits_are_per_key(ferryman_mock):
    ferryman_mock.set_limits(rpm=1)
    other = ferryman_mock.client.with_options(api_key="sk-another-key")
    ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert other.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_tpm_counts_prompt_plus_output_cap(ferryman_mock):
    ferryman_mock.set_limits(tpm=1000)
    raw = ferryman_mock.client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=100
    )
    from ferryman.tokens import count_chat_messages

    expected = 1000 - count_chat_messages(MESSAGES, "gpt-4o") - 100
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(expected)


def test_dollar_quota_gives_insufficient_quota(ferryman_mock):
    ferryman_mock.settings(quota_usd=0.0000001)
    ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["type"] == "insufficient_quota"
    assert caught.value.code == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers
