"""The Responses API (``/v1/responses``) through the official SDK over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel

from ferryman.mock import MockApp, MockSettings, replies, spec
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer
from ferryman.tokens import count_request_prompt_tokens, count_responses_input, count_text

MODEL = "gpt-4.1"  # no reasoning tokens
REASONING_MODEL = "gpt-5.5"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather forecast.",
    "parameters": WEATHER_SCHEMA,
}
LONG_TEXT = " ".join(["The ferry crosses the river at dawn and returns before the evening tide."] * 6)


def create_raw(client: openai.OpenAI, **body: Any) -> tuple[dict[str, Any], Any]:
    """The wire body (checked against the spec) and the SDK's object for one create call."""
    raw = client.responses.with_raw_response.create(**body)
    wire = raw.http_response.json()
    assert spec.response_errors("Response", wire) == []
    return wire, raw.parse()


def wait_for(predicate: Callable[[], Any], seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def expected_output_tokens(response: Any, model: str) -> int:
    reasoning = response.usage.output_tokens_details.reasoning_tokens
    visible = ""
    for item in response.output:
        if item.type == "message":
            visible += "".join(p.text if p.type == "output_text" else p.refusal for p in item.content)
        elif item.type == "function_call":
            visible += item.name + item.arguments
    return count_text(visible, model) + reasoning


def not_found_body(response_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"Response with id '{response_id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


# -- create ------------------------------------------------------------------------------------


def test_create_with_string_input(ferryman_mock: MockControl) -> None:
    body = {
        "model": MODEL,
        "input": "Tell me about ferries.",
        "instructions": "Be brief.",
        "metadata": {"ticket": "42"},
    }
    wire, response = create_raw(ferryman_mock.client, **body)
    assert wire["object"] == "response" and wire["status"] == "completed" and wire["id"].startswith("resp_")
    assert wire["model"] == MODEL and wire["instructions"] == "Be brief." and wire["metadata"] == {"ticket": "42"}
    assert response.output_text
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    usage = response.usage
    assert usage.input_tokens == count_request_prompt_tokens("/responses", body)
    assert usage.output_tokens == count_text(response.output_text, MODEL)
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    logged = ferryman_mock.requests()[-1]
    assert logged["usage"] == wire["usage"] and float(logged["cost_usd"]) > 0


def test_create_with_list_input(ferryman_mock: MockControl) -> None:
    body = {
        "model": MODEL,
        "input": [
            {"role": "developer", "content": "Answer in one line."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": "https://example.com/ferry.png"},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A boat."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 3}'},
            {"role": "user", "content": "And the weather?"},
        ],
    }
    _, response = create_raw(ferryman_mock.client, **body)
    assert response.usage.input_tokens == count_request_prompt_tokens("/responses", body)
    assert response.usage.output_tokens == expected_output_tokens(response, MODEL)
    items = list(ferryman_mock.client.responses.input_items.list(response.id, order="asc"))
    assert [i.type for i in items] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    image = items[1].content[1]
    assert image.type == "input_image" and image.detail == "auto"
    assert items[2].role == "assistant" and items[2].content[0].text == "A boat."


def test_models_of_other_kinds_are_refused(ferryman_mock: MockControl) -> None:
    for model in ("text-embedding-3-small", "omni-moderation-latest", "gpt-3.5-turbo-instruct"):
        with pytest.raises(openai.BadRequestError) as caught:
            ferryman_mock.client.responses.create(model=model, input="hi")
        assert caught.value.param == "model"
    # a Responses-only model is served here
    assert ferryman_mock.client.responses.create(model="gpt-5.5-pro", input="hi").status == "completed"


def test_reasoning_tokens_and_item(ferryman_mock: MockControl) -> None:
    wire, response = create_raw(
        ferryman_mock.client,
        model=REASONING_MODEL,
        input="Think hard.",
        reasoning={"effort": "high", "summary": "auto"},
    )
    reasoning = replies.reasoning_tokens(REASONING_MODEL, "high")
    assert reasoning > 0
    assert response.usage.output_tokens_details.reasoning_tokens == reasoning
    assert response.usage.output_tokens == expected_output_tokens(response, REASONING_MODEL)
    assert response.output[0].type == "reasoning" and response.output[0].id.startswith("rs_")
    assert response.output[0].summary[0].text
    assert wire["reasoning"] == {"effort": "high", "summary": "auto"}
    # a model without reasoning reports none and has no reasoning item
    plain = ferryman_mock.client.responses.create(model=MODEL, input="hi")
    assert [i.type for i in plain.output] == ["message"]
    assert plain.usage.output_tokens_details.reasoning_tokens == 0


def test_max_output_tokens_makes_an_incomplete_response(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"match": "story", "content": LONG_TEXT}])
    _, response = create_raw(ferryman_mock.client, model=MODEL, input="Tell a story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16 and response.output[0].status == "incomplete"
    assert LONG_TEXT.startswith(response.output_text)
    # a reasoning model can spend the whole budget thinking: no message at all
    thinking = ferryman_mock.client.responses.create(model=REASONING_MODEL, input="Tell a story", max_output_tokens=16)
    assert thinking.status == "incomplete" and [i.type for i in thinking.output] == ["reasoning"]
    assert thinking.usage.output_tokens == thinking.usage.output_tokens_details.reasoning_tokens == 16


def test_structured_output_with_parse(ferryman_mock: MockControl) -> None:
    class Forecast(BaseModel):
        city: str
        days: int
        sunny: bool

    parsed = ferryman_mock.client.responses.parse(model=MODEL, input="Forecast please", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast)
    assert parsed.text is not None and parsed.text.format is not None and parsed.text.format.type == "json_schema"
    loose = ferryman_mock.client.responses.create(
        model=MODEL, input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(loose.output_text), dict)


# -- function tools ------------------------------------------------------------------------------


def test_function_call_arguments_follow_the_schema(ferryman_mock: MockControl) -> None:
    validator = jsonschema_rs.validator_for(WEATHER_SCHEMA)
    other = {"type": "function", "name": "book_ferry", "parameters": {"type": "object", "properties": {}}}
    for choice in ("required", "auto", {"type": "function", "name": "get_weather"}):
        wire, response = create_raw(
            ferryman_mock.client,
            model=MODEL,
            input="Weather in Oslo?",
            tools=[other, WEATHER_TOOL] if isinstance(choice, dict) else [WEATHER_TOOL],
            tool_choice=choice,
        )
        [call] = response.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
        assert validator.is_valid(json.loads(call.arguments)), call.arguments
        assert response.usage.output_tokens == expected_output_tokens(response, MODEL)
        assert wire["tools"][-1]["strict"] is True  # the API's default, echoed
    none = ferryman_mock.client.responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert [i.type for i in none.output] == ["message"]
    # after the tool's result comes back, "auto" answers in text
    answer = ferryman_mock.client.responses.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        previous_response_id=wire["id"],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 3}'}],
    )
    assert [i.type for i in answer.output] == ["message"]


def test_unknown_forced_function_is_an_error(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ferryman_mock.client.responses.create(
            model=MODEL, input="hi", tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "nope"}
        )
    assert caught.value.param == "tool_choice"


def test_fixtures_script_content_and_tool_calls(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures(
        [
            {"match": "(?i)weather", "content": "It is sunny in Oslo."},
            {"match": "book", "tool_calls": [{"name": "book_ferry", "arguments": {"seats": 2}}]},
        ]
    )
    reply = ferryman_mock.client.responses.create(model=MODEL, input=[{"role": "user", "content": "Weather?"}])
    assert reply.output_text == "It is sunny in Oslo."
    assert reply.usage.output_tokens == count_text("It is sunny in Oslo.", MODEL)
    booked = ferryman_mock.client.responses.create(model=MODEL, input="book two seats")
    [call] = booked.output
    assert call.type == "function_call" and call.name == "book_ferry" and json.loads(call.arguments) == {"seats": 2}


# -- streaming -----------------------------------------------------------------------------------


TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def collapse(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_stream_events_in_order(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"match": "ferry", "content": LONG_TEXT}])
    client = ferryman_mock.client
    body = {"model": MODEL, "input": "ferry?"}
    events = list(client.responses.create(**body, stream=True))
    assert collapse([e.type for e in events]) == TEXT_ORDER
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    for event in events:
        assert spec.response_errors("ResponseStreamEvent", event.to_dict()) == []
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == LONG_TEXT
    assert len(deltas) == count_text(LONG_TEXT, MODEL)  # about one token each
    message_id = events[2].item.id
    assert all(
        e.item_id == message_id and e.output_index == 0 and e.content_index == 0 and e.logprobs == [] for e in deltas
    )
    final = events[-1].response
    assert final.output_text == LONG_TEXT and final.usage is not None
    assert final.usage.input_tokens == count_request_prompt_tokens("/responses", body)
    assert final.usage.output_tokens == count_text(LONG_TEXT, MODEL)
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed" and stored.output_text == LONG_TEXT


def test_stream_wire_format(ferryman_mock: MockControl) -> None:
    with httpx2.Client(timeout=10) as http:
        reply = http.post(
            ferryman_mock.base_url + "/responses",
            json={"model": MODEL, "input": "hi", "stream": True},
            headers={"Authorization": f"Bearer {ferryman_mock.api_key}"},
        )
    assert reply.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in reply.text.split("\n\n") if b.strip()]
    assert "[DONE]" not in reply.text
    for block in blocks:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
    assert json.loads(blocks[-1].split("\n")[1][6:])["type"] == "response.completed"


def test_stream_function_call_events(ferryman_mock: MockControl) -> None:
    events = list(
        ferryman_mock.client.responses.create(
            model=MODEL, input="Weather?", tools=[WEATHER_TOOL], tool_choice="required", stream=True
        )
    )
    assert collapse([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.arguments == "" and added.id == done.id
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == done.arguments == events[-3].arguments
    assert jsonschema_rs.validator_for(WEATHER_SCHEMA).is_valid(json.loads(arguments))
    for event in events:
        assert spec.response_errors("ResponseStreamEvent", event.to_dict()) == []


def test_stream_incomplete_and_reasoning(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": LONG_TEXT}])
    events = list(ferryman_mock.client.responses.create(model=MODEL, input="hi", max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    events = list(
        ferryman_mock.client.responses.create(
            model=REASONING_MODEL, input="hi", reasoning={"effort": "low", "summary": "detailed"}, stream=True
        )
    )
    types = collapse([e.type for e in events])
    assert types[2:8] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens == 32
    for event in events:
        assert spec.response_errors("ResponseStreamEvent", event.to_dict()) == []


def test_stream_helper(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": "Calm water today."}])
    with ferryman_mock.client.responses.stream(model=MODEL, input="How is the river?") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Calm water today."


def test_stream_cut_after_two_events(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(
            model=MODEL, input="hi", stream=True, extra_headers={"x-ferryman-fault": "cut_after=2"}
        ):
            seen.append(event)
    assert [e.type for e in seen] == ["response.created", "response.in_progress"]
    # the stored response does not stay in progress forever
    stored = wait_for(lambda: (r := client.responses.retrieve(seen[0].response.id)).status != "in_progress" and r)
    assert stored.status == "failed" and stored.error.code == "server_error"


def test_stream_error_after_two_events(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    fault = {"x-ferryman-fault": "error_after=2"}
    events = list(client.responses.create(model=MODEL, input="hi", stream=True, extra_headers=fault))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error"]
    error = events[-1]
    assert error.code == "server_error" and error.sequence_number == 2 and error.message
    assert spec.response_errors("ResponseStreamEvent", error.to_dict()) == []
    # the SDK's stream helper gives up: it never saw response.completed
    with (
        pytest.raises(RuntimeError, match=r"response\.completed"),
        client.responses.stream(model=MODEL, input="hi", extra_headers=fault) as stream,
    ):
        stream.get_final_response()


async def test_async_client(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.async_client
    ferryman_mock.set_fixtures([{"content": "Async ahoy."}])
    response = await client.responses.create(model=MODEL, input="hi")
    assert response.output_text == "Async ahoy."
    types = [event.type async for event in await client.responses.create(model=MODEL, input="hi", stream=True)]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    async with client.responses.stream(model=MODEL, input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Async ahoy."
    assert (await client.responses.retrieve(response.id)).id == response.id
    await client.close()


# -- stored responses ----------------------------------------------------------------------------


def test_retrieve_and_delete(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    created = client.responses.create(model=MODEL, input="hi")
    raw = client.responses.with_raw_response.retrieve(created.id)
    wire = raw.http_response.json()
    assert spec.response_errors("Response", wire) == [] and wire["id"] == created.id
    assert not any(key.startswith("_") for key in wire)
    assert raw.parse().output_text == created.output_text
    deleted = client.responses.with_raw_response.delete(created.id)
    assert deleted.http_response.json() == {"id": created.id, "object": "response", "deleted": True}
    for call in (client.responses.retrieve, client.responses.delete, client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        assert caught.value.response.json() == not_found_body(created.id)


def test_store_false_is_not_retrievable(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    wire, response = create_raw(client, model=MODEL, input="hi", store=False)
    assert wire["store"] is False
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.response.json() == not_found_body(response.id)
    with pytest.raises(openai.BadRequestError) as prev:
        client.responses.create(model=MODEL, input="again", previous_response_id=response.id)
    assert prev.value.code == "previous_response_not_found"


def test_input_items_pagination(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    texts = [f"message {i}" for i in range(5)]
    created = client.responses.create(model=MODEL, input=[{"role": "user", "content": t} for t in texts])
    raw = client.responses.input_items.with_raw_response.list(created.id, limit=2)
    wire = raw.http_response.json()
    assert spec.response_errors("ResponseItemList", wire) == []
    assert wire["object"] == "list" and wire["has_more"] is True and len(wire["data"]) == 2
    assert wire["first_id"] == wire["data"][0]["id"] and wire["last_id"] == wire["data"][1]["id"]
    assert all(item["id"].startswith("msg_") for item in wire["data"])
    # default order is newest first; the SDK follows the cursor through every page
    newest_first = [item.content[0].text for item in client.responses.input_items.list(created.id, limit=2)]
    assert newest_first == texts[::-1]
    oldest_first = list(client.responses.input_items.list(created.id, order="asc", limit=100))
    assert [item.content[0].text for item in oldest_first] == texts
    after = client.responses.input_items.list(created.id, order="asc", after=oldest_first[2].id)
    assert [item.content[0].text for item in after.data] == texts[3:] and after.has_more is False
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.input_items.list(created.id, limit=bad)
        assert caught.value.param == "limit"


def test_previous_response_id(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_missing")
    assert caught.value.response.json() == {
        "error": {
            "message": "Previous response with id 'resp_missing' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }
    first = client.responses.create(model=MODEL, input="What is a ferry?")
    body = {"model": MODEL, "input": "And a bridge?", "previous_response_id": first.id}
    wire, second = create_raw(client, **body)
    assert wire["previous_response_id"] == first.id
    earlier = [i.to_dict() for i in client.responses.input_items.list(first.id, order="asc")]
    earlier += [o.to_dict() for o in first.output]
    carried = count_responses_input(earlier, None, MODEL) - count_responses_input([], None, MODEL)
    assert carried > 0
    assert second.usage.input_tokens == count_request_prompt_tokens("/responses", body) + carried
    # the input items of a response are its own, not the whole conversation
    assert [i.content[0].text for i in client.responses.input_items.list(second.id)] == ["And a bridge?"]


def test_cancel(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    done = client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(done.id)
    assert caught.value.message.endswith("Cannot cancel a synchronous response.")
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_missing")
    ferryman_mock.settings(batch_seconds=60)
    queued = client.responses.create(model=MODEL, input="hi", background=True)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    cancelled = client.responses.with_raw_response.cancel(queued.id)
    assert spec.response_errors("Response", cancelled.http_response.json()) == []
    assert cancelled.parse().status == "cancelled"
    assert client.responses.retrieve(queued.id).status == "cancelled"


def test_background_response_completes(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    ferryman_mock.settings(batch_seconds=0.3)
    ferryman_mock.set_fixtures([{"content": "Done in the background."}])
    queued = client.responses.create(model=MODEL, input="hi", background=True)
    assert queued.status == "queued"
    finished = wait_for(lambda: (r := client.responses.retrieve(queued.id)).status == "completed" and r)
    assert finished.output_text == "Done in the background." and finished.usage is not None
    assert finished.background is True
    assert client.responses.cancel(queued.id).status == "completed"  # nothing left to cancel
    replay = list(client.responses.retrieve(queued.id, stream=True))
    assert replay[-1].type == "response.completed" and replay[-1].response.output_text == finished.output_text


def test_manual_context_round_trip(ferryman_mock: MockControl) -> None:
    """The documented function-calling loop: output items go back in as input, then the results."""
    client = ferryman_mock.client
    context: list[Any] = [{"role": "user", "content": "Weather in Oslo for three days?"}]
    first = client.responses.create(
        model=REASONING_MODEL,
        input=context,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        include=["reasoning.encrypted_content"],
    )
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    assert first.output[0].encrypted_content
    context += first.output
    call = first.output[1]
    context.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 3}'})
    second = client.responses.create(model=REASONING_MODEL, input=context, tools=[WEATHER_TOOL])
    assert second.output[-1].type == "message" and second.output_text
    sent = ferryman_mock.requests()[-1]["body"]
    assert second.usage.input_tokens == count_request_prompt_tokens("/responses", sent)
    kinds = [item.type for item in client.responses.input_items.list(second.id, order="asc")]
    assert kinds == ["message", "reasoning", "function_call", "function_call_output"]


def test_background_response_resumes_after_restart(tmp_path: Any) -> None:
    with BackgroundServer(MockApp(MockSettings(state_dir=tmp_path, batch_seconds=600))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        queued = client.responses.create(model=MODEL, input="hi", background=True)
        assert queued.status == "queued"
    with BackgroundServer(MockApp(MockSettings(state_dir=tmp_path, batch_seconds=0.3))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        done = wait_for(lambda: (r := client.responses.retrieve(queued.id)).status == "completed" and r)
        assert done.output_text and done.usage is not None
        assert [i.content[0].text for i in client.responses.input_items.list(queued.id)] == ["hi"]
