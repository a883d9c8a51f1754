"""Fault injection: the grammar, the header, and rules, seen through the official SDK."""

from __future__ import annotations

import itertools
import random
import time

import openai
import pytest

from ferryman.errors import OpenAIError
from ferryman.mock.faults import Fault, parse_fault, parse_rule

MESSAGES = [{"role": "user", "content": "hi"}]


def test_grammar_parses_every_key():
    fault = parse_fault(
        "status=503;retry_after_ms=200, should_retry=false;delay_ms=5;ttft_ms=1;chunk_delay_ms=2;"
        "cut_after=3;error_after=4;reset"
    )
    assert fault == Fault(
        status=503,
        retry_after_ms=200,
        should_retry="false",
        delay_ms=5,
        ttft_ms=1,
        chunk_delay_ms=2,
        cut_after=3,
        error_after=4,
        reset=True,
    )
    rule = parse_rule("path=/v1/chat/*;model=gpt-4o*;p=0.5;times=2;status=500")
    assert (rule.path, rule.model, rule.p, rule.times, rule.fault.status) == ("/v1/chat/*", "gpt-4o*", 0.5, 2, 500)


@pytest.mark.parametrize("bad", ["status=abc", "nonsense=1", "p=2", "status=99", "delay_ms=-1"])
def test_bad_fault_specs_are_refused_clearly(bad):
    with pytest.raises(OpenAIError) as caught:
        parse_rule(bad)
    assert caught.value.status == 400
    assert caught.value.param == "x-ferryman-fault"


def test_bad_fault_header_is_a_400(ferryman_mock):
    with pytest.raises(openai.BadRequestError) as caught:
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=banana"}
        )
    assert caught.value.param == "x-ferryman-fault"


def test_status_fault_with_retry_after(ferryman_mock):
    with pytest.raises(openai.InternalServerError) as caught:
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=503;retry_after_ms=200"}
        )
    error = caught.value
    assert error.status_code == 503
    assert error.response.headers["retry-after-ms"] == "200"
    assert error.body["type"] == "service_unavailable_error"


def test_insufficient_quota_fault(ferryman_mock):
    with pytest.raises(openai.RateLimitError) as caught:
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=429;code=insufficient_quota"}
        )
    assert caught.value.body["type"] == "insufficient_quota"


def test_sdk_retries_follow_retry_after_from_a_times_rule(ferryman_mock):
    ferryman_mock.set_faults(["path=/v1/chat/completions;times=2;status=429;retry_after_ms=300"])
    client = ferryman_mock.client.with_options(max_retries=2)
    reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.choices
    log = [e for e in ferryman_mock.requests() if e["path"] == "/v1/chat/completions"]
    assert [e["status"] for e in log] == [429, 429, 200]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(log)]
    assert all(gap >= 0.29 for gap in gaps)


def test_delay_fault_delays(ferryman_mock):
    started = time.perf_counter()
    ferryman_mock.client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-ferryman-fault": "delay_ms=150"}
    )
    assert time.perf_counter() - started >= 0.15


def test_ttft_fault_delays_the_first_chunk(ferryman_mock):
    started = time.perf_counter()
    stream = ferryman_mock.client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={"x-ferryman-fault": "ttft_ms=200"}
    )
    next(iter(stream))
    assert time.perf_counter() - started >= 0.2
    stream.close()


def test_reset_is_a_connection_error(ferryman_mock):
    with pytest.raises(openai.APIConnectionError):
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-ferryman-fault": "reset"}
        )
    assert ferryman_mock.requests()[-1]["status"] == "reset"


def test_cut_stream_ends_in_a_connection_error_without_done(ferryman_mock):
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={"x-ferryman-fault": "cut_after=3"}
        ):
            got.append(chunk)
    assert len(got) == 3


def test_mid_stream_error_event(ferryman_mock):
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={"x-ferryman-fault": "error_after=2"}
        ):
            got.append(chunk)
    assert len(got) == 2
    assert "server had an error" in caught.value.message


def test_rule_selectors_model_and_probability():
    rule = parse_rule("model=gpt-4o*;p=0.5;status=500")
    rng = random.Random(1)
    assert not rule.take("/v1/chat/completions", "gpt-5", rng)
    fired = sum(rule.take("/v1/chat/completions", "gpt-4o-mini", rng) for _ in range(1000))
    assert 400 < fired < 600


def test_rules_apply_by_path_only(ferryman_mock):
    ferryman_mock.set_faults(["path=/v1/embeddings;status=500"])
    assert ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert ferryman_mock.client.models.list().data
