"""Integers out of range are a 400 ``invalid_value`` before limits, budgets and pacing see them,
through the SDK in-process, never sent upstream (the gateway's side: tests/gateway/test_input_bounds.py)."""

from __future__ import annotations

import openai
import pytest

from ferryman.pipeline.bounds import BOUNDS

MESSAGES = [{"role": "user", "content": "hi"}]
HUGE = 9223372036854775808  # 2**63: the finding


CASES = [
    ("max_tokens", HUGE),
    ("max_tokens", -1),
    ("max_completion_tokens", 2**31),
    ("n", 0),
    ("n", 129),
    ("n", 10**18),
    ("top_logprobs", 21),
]


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={v}" for f, v in CASES])
def test_the_sdk_in_process_gets_a_400(ferryman_client, ferryman_mock, field, value):
    client = ferryman_client()
    ferryman_mock.clear_requests()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={field: value})
    assert caught.value.code == "invalid_value" and caught.value.param == field
    assert f"{BOUNDS[field][1]:,}" in caught.value.message
    assert ferryman_mock.requests() == []


def test_values_at_the_ends_of_the_ranges_go_through(ferryman_client, ferryman_mock):
    client = ferryman_client()
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, n=1)
    assert reply.choices
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=1, n=3)
    assert len(reply.choices) == 3
