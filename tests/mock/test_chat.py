"""Chat completions against the mock, through the official SDK over real HTTP."""

from __future__ import annotations

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel

from ferryman.mock import spec
from ferryman.tokens import count_chat_messages, count_text

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}


def test_plain_completion_has_spec_shape_and_real_usage(ferryman_mock):
    raw = ferryman_mock.client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    body = raw.http_response.json()
    assert spec.response_errors("CreateChatCompletionResponse", body) == []
    reply = raw.parse()
    assert reply.model == "gpt-4o-mini"
    assert reply.choices[0].finish_reason == "stop"
    content = reply.choices[0].message.content
    assert content
    assert reply.usage.prompt_tokens == count_chat_messages(MESSAGES, "gpt-4o-mini")
    assert reply.usage.completion_tokens == count_text(content, "gpt-4o-mini")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_seed_gives_the_same_reply_and_no_seed_varies(ferryman_mock):
    create = ferryman_mock.client.chat.completions.create
    a = create(model="gpt-4o-mini", messages=MESSAGES, seed=7).choices[0].message.content
    b = create(model="gpt-4o-mini", messages=MESSAGES, seed=7).choices[0].message.content
    c = create(model="gpt-4o-mini", messages=MESSAGES, seed=8).choices[0].message.content
    assert a == b
    assert a != c
    unseeded = {create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content for _ in range(4)}
    assert len(unseeded) > 1


def test_n_gives_n_distinct_choices(ferryman_mock):
    reply = ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=3, seed=1)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3
    assert reply.usage.completion_tokens == sum(count_text(c.message.content, "gpt-4o") for c in reply.choices)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_cap_ends_with_length(ferryman_mock, field):
    reply = ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **{field: 3})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_stop_sequence_cuts_the_text(ferryman_mock):
    ferryman_mock.set_fixtures([{"content": "alpha beta STOP gamma"}])
    reply = ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stop=["STOP"])
    assert reply.choices[0].message.content == "alpha beta "
    assert reply.choices[0].finish_reason == "stop"


def test_stream_matches_plain_reply_and_usage_chunk(ferryman_mock):
    create = ferryman_mock.client.chat.completions.create
    plain = create(model="gpt-4o-mini", messages=MESSAGES, seed=3)
    chunks = list(
        create(model="gpt-4o-mini", messages=MESSAGES, seed=3, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_include_usage_has_no_usage_chunk(ferryman_mock):
    chunks = list(ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_stream_wire_format_and_chunks_validate(ferryman_mock):
    import httpx2

    with ferryman_mock.client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    import json

    for line in lines[:-1]:
        assert line.startswith("data: ")
        assert spec.response_errors("CreateChatCompletionStreamResponse", json.loads(line[6:])) == []
    assert httpx2  # the SDK's transport


def test_tool_call_arguments_validate_against_the_schema(ferryman_mock):
    validator = jsonschema_rs.validator_for(WEATHER_TOOL["function"]["parameters"])
    for seed in range(5):
        reply = ferryman_mock.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_TOOL], seed=seed
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        import json

        validator.validate(json.loads(call.function.arguments))


def test_tool_choice_none_and_after_tool_result_give_text(ferryman_mock):
    create = ferryman_mock.client.chat.completions.create
    reply = create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="none")
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    first = create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    follow_up = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12 degrees"},
    ]
    answer = create(model="gpt-4o", messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.choices[0].finish_reason == "stop"


def test_named_tool_choice_must_exist(ferryman_mock):
    with pytest.raises(openai.BadRequestError) as caught:
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert caught.value.body["param"] == "tool_choice"


def test_streamed_tool_call_reassembles(ferryman_mock):
    create = ferryman_mock.client.chat.completions.create
    plain = create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL], seed=11)
    arguments = ""
    name = None
    for chunk in create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL], seed=11, stream=True):
        for call in chunk.choices[0].delta.tool_calls or []:
            name = call.function.name or name
            arguments += call.function.arguments or ""
    assert name == "get_weather"
    assert arguments == plain.choices[0].message.tool_calls[0].function.arguments


class Itinerary(BaseModel):
    city: str
    nights: int
    sights: list[str]
    budget: float | None


def test_parse_helper_returns_a_pydantic_object(ferryman_mock):
    completion = ferryman_mock.client.chat.completions.parse(
        model="gpt-4o-2024-08-06", messages=MESSAGES, response_format=Itinerary
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Itinerary)


def test_json_object_mode_gives_json(ferryman_mock):
    import json

    reply = ferryman_mock.client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "json please"}], response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_fixture_scripts_content_and_tool_calls(ferryman_mock):
    ferryman_mock.set_fixtures(
        [
            {
                "model": "gpt-4o*",
                "match": "(?i)weather",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            },
            {"match": "hello", "content": "Hi there!"},
        ]
    )
    create = ferryman_mock.client.chat.completions.create
    weather = create(model="gpt-4o", messages=[{"role": "user", "content": "What's the WEATHER?"}])
    assert weather.choices[0].message.tool_calls[0].function.arguments == '{"city":"Oslo"}'
    hello = create(model="gpt-5.5", messages=[{"role": "user", "content": "hello you"}])
    assert hello.choices[0].message.content == "Hi there!"
    other = create(model="gpt-5.5", messages=[{"role": "user", "content": "unrelated"}])
    assert other.choices[0].message.content != "Hi there!"


def test_fixture_refusal(ferryman_mock):
    ferryman_mock.set_fixtures([{"match": "secret", "refusal": "I can't help with that."}])
    reply = ferryman_mock.client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "tell me the secret"}]
    )
    assert reply.choices[0].message.refusal == "I can't help with that."
    assert reply.choices[0].message.content is None


def test_reasoning_models_report_reasoning_tokens(ferryman_mock):
    reply = ferryman_mock.client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES, reasoning_effort="high")
    details = reply.usage.completion_tokens_details
    assert details.reasoning_tokens > 0
    assert reply.usage.completion_tokens == details.reasoning_tokens + count_text(
        reply.choices[0].message.content, "gpt-6-luna"
    )


def test_long_repeated_prefix_reports_cached_tokens(ferryman_mock):
    history = [{"role": "system", "content": "word " * 1500}, {"role": "user", "content": "first"}]
    create = ferryman_mock.client.chat.completions.create
    first = create(model="gpt-4o-mini", messages=history)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = create(
        model="gpt-4o-mini",
        messages=[*history, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}],
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens


def test_logprobs(ferryman_mock):
    reply = ferryman_mock.client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, logprobs=True, top_logprobs=1, seed=1
    )
    tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content


def test_wrong_kind_of_model(ferryman_mock):
    with pytest.raises(openai.NotFoundError) as caught:
        ferryman_mock.client.chat.completions.create(model="text-embedding-3-small", messages=MESSAGES)
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        ferryman_mock.client.chat.completions.create(model="gpt-5.5-pro", messages=MESSAGES)


def test_context_length_exceeded(ferryman_mock):
    with pytest.raises(openai.BadRequestError) as caught:
        ferryman_mock.client.chat.completions.create(
            model="gpt-3.5-turbo-0125", messages=[{"role": "user", "content": "word " * 17000}]
        )
    assert caught.value.code == "context_length_exceeded"


async def test_async_client(ferryman_mock):
    reply = await ferryman_mock.async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content
    stream = await ferryman_mock.async_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text


def test_reasoning_tokens_count_inside_the_output_cap(ferryman_mock):
    reply = ferryman_mock.client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=50
    )
    assert reply.usage.completion_tokens <= 50
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    starved = ferryman_mock.client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=20
    )
    assert starved.usage.completion_tokens == 20 and starved.choices[0].finish_reason == "length"


def test_stream_chunks_report_the_service_tier(ferryman_mock):
    chunks = list(
        ferryman_mock.client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, service_tier="flex"
        )
    )
    assert {c.service_tier for c in chunks} == {"flex"}
