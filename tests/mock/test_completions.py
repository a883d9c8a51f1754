"""``POST /v1/completions`` (legacy) through the official SDK over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from ferryman.mock import spec
from ferryman.mock.control_client import MockControl
from ferryman.tokens import count_text, encoding_for_model

MODEL = "gpt-3.5-turbo-instruct"

# Where OpenAI's real replies differ from its spec the mock follows the replies; the suite-wide
# spec check knows those gaps (ferryman.mock.conformance.KNOWN_SPEC_GAPS).


def complete(mock: MockControl, **params: Any) -> dict[str, Any]:
    reply = mock.client.completions.with_raw_response.create(**params)
    body: dict[str, Any] = reply.http_response.json()
    assert spec.response_errors("CreateCompletionResponse", body) == []
    return body


def test_plain_completion_defaults_to_16_tokens(ferryman_mock: MockControl) -> None:
    long_text = " ".join(["ferry"] * 40)
    ferryman_mock.set_fixtures([{"match": "tell me", "content": long_text}])
    body = complete(ferryman_mock, model=MODEL, prompt="Please tell me a story:")
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert count_text(choice["text"], MODEL) == 16
    assert long_text.startswith(choice["text"])
    assert body["usage"] == {
        "prompt_tokens": count_text("Please tell me a story:", MODEL),
        "completion_tokens": 16,
        "total_tokens": count_text("Please tell me a story:", MODEL) + 16,
    }


def test_fixture_reply_stops(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"match": "capital of France", "content": " Paris."}])
    reply = ferryman_mock.client.completions.create(model=MODEL, prompt="The capital of France is")
    assert reply.choices[0].text == " Paris."
    assert reply.choices[0].finish_reason == "stop"
    entry = ferryman_mock.requests()[-1]
    assert entry["usage"]["completion_tokens"] == count_text(" Paris.", MODEL)
    assert float(entry["cost_usd"]) > 0


def test_max_tokens_and_stop(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": "one two three. four five six seven eight"}])
    short = ferryman_mock.client.completions.create(model=MODEL, prompt="count", max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].text == "one two"
    stopped = ferryman_mock.client.completions.create(model=MODEL, prompt="count", stop=["."], max_tokens=50)
    assert stopped.choices[0].text == "one two three"
    assert stopped.choices[0].finish_reason == "stop"


def test_echo(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": " world"}])
    body = complete(ferryman_mock, model=MODEL, prompt="Hello", echo=True)
    assert body["choices"][0]["text"] == "Hello world"


def test_logprobs(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": " The river runs to the sea."}])
    body = complete(ferryman_mock, model=MODEL, prompt="Write:", logprobs=3, seed=7)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(v <= 0 for v in lp["token_logprobs"])
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert len(top) == 3 and top[token] == logprob and max(top.values()) == logprob
    assert lp["text_offset"][0] == len("Write:")  # offsets count from the start of the prompt
    again = complete(ferryman_mock, model=MODEL, prompt="Write:", logprobs=3, seed=7)
    assert again["choices"][0]["logprobs"] == lp  # same seed, same logprobs


def test_echo_logprobs_scores_the_prompt(ferryman_mock: MockControl) -> None:
    """The classic scoring call: echo the prompt with logprobs and generate nothing."""
    prompt = "The ferry crossed the river at dawn."
    reply = ferryman_mock.client.completions.with_raw_response.create(
        model="davinci-002", prompt=prompt, echo=True, logprobs=0, max_tokens=0
    )
    body = reply.http_response.json()
    choice = body["choices"][0]
    assert choice["text"] == prompt
    lp = choice["logprobs"]
    encoding = encoding_for_model("davinci-002")
    assert lp["tokens"] == [encoding.decode([t]) for t in encoding.encode(prompt)]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # as OpenAI: nothing precedes it
    assert all(v <= 0 for v in lp["token_logprobs"][1:])
    assert all(len(top) == 1 for top in lp["top_logprobs"][1:])  # logprobs=0: just the sampled token
    assert lp["text_offset"][0] == 0
    assert body["usage"]["completion_tokens"] == 0


def test_prompts_times_n(ferryman_mock: MockControl) -> None:
    body = complete(ferryman_mock, model=MODEL, prompt=["First prompt", "Second prompt here"], n=2, max_tokens=5)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    expected_prompt = count_text("First prompt", MODEL) + count_text("Second prompt here", MODEL)
    assert body["usage"]["prompt_tokens"] == expected_prompt
    completion = sum(count_text(c["text"], MODEL) for c in body["choices"])
    assert body["usage"]["completion_tokens"] == completion


def test_token_array_prompts(ferryman_mock: MockControl) -> None:
    ids = encoding_for_model(MODEL).encode("Hello there")
    ferryman_mock.set_fixtures([{"match": "^Hello there$", "content": " friend"}])
    one = complete(ferryman_mock, model=MODEL, prompt=ids, echo=True)
    assert one["choices"][0]["text"] == "Hello there friend"
    assert one["usage"]["prompt_tokens"] == len(ids)
    many = complete(ferryman_mock, model=MODEL, prompt=[ids, [9906]])
    assert len(many["choices"]) == 2
    assert many["usage"]["prompt_tokens"] == len(ids) + 1


def test_best_of_returns_n_and_charges_all(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": " yes"}])
    body = complete(ferryman_mock, model=MODEL, prompt="Answer:", n=1, best_of=3)
    assert len(body["choices"]) == 1
    assert body["usage"]["completion_tokens"] == 3 * count_text(" yes", MODEL)
    with pytest.raises(openai.BadRequestError):
        ferryman_mock.client.completions.create(model=MODEL, prompt="x", n=3, best_of=2)


def test_seed_makes_it_repeatable(ferryman_mock: MockControl) -> None:
    a = complete(ferryman_mock, model=MODEL, prompt="Go", seed=42, max_tokens=30)
    b = complete(ferryman_mock, model=MODEL, prompt="Go", seed=42, max_tokens=30)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stream_matches_the_plain_reply(ferryman_mock: MockControl) -> None:
    params: dict[str, Any] = {"model": MODEL, "prompt": "Stream this", "seed": 3, "max_tokens": 12}
    plain = complete(ferryman_mock, **params)
    chunks = list(ferryman_mock.client.completions.create(**params, stream=True))
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == plain["choices"][0]["text"]
    assert [c.choices[0].finish_reason for c in chunks][-1] == plain["choices"][0]["finish_reason"]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)
    last = chunks[-1].model_dump(exclude_unset=True)
    assert spec.response_errors("CreateCompletionResponse", last) == []


def test_stream_wire_format_and_usage(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": " streamed words"}])
    with ferryman_mock.client.completions.with_streaming_response.create(
        model=MODEL, prompt="Go", stream=True, echo=True, logprobs=1, stream_options={"include_usage": True}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[0]["choices"][0]["text"] == "Go"  # the echo comes first
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Go streamed words"
    assert all(e["usage"] is None for e in events[:-1])
    final = events[-1]
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] == count_text(" streamed words", MODEL)
    assert spec.response_errors("CreateCompletionResponse", final) == []
    assert all(e["choices"][0]["logprobs"]["tokens"] for e in events[1:-2])  # each piece's tokens


def test_chat_model_is_refused(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        ferryman_mock.client.completions.create(model="gpt-4o", prompt="hi")
    error = exc.value.response.json()["error"]
    assert error == {
        "message": "This is a chat model and not supported in the v1/completions endpoint. "
        "Did you mean to use v1/chat/completions?",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        ferryman_mock.client.completions.create(model="text-embedding-3-small", prompt="hi")


def test_request_errors(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=5000)
    assert "maximum context length is 4096 tokens" in exc.value.response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="davinci-002", prompt="def f(", suffix="return x")
    assert exc.value.response.json()["error"]["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hi", stream_options={"include_usage": True})
    assert exc.value.response.json()["error"]["param"] == "stream_options"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=[1, 2, 10**8])
    assert exc.value.response.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[])


def test_suffix_on_instruct(ferryman_mock: MockControl) -> None:
    ferryman_mock.set_fixtures([{"content": "    return x"}])
    body = complete(ferryman_mock, model=MODEL, prompt="def f(x):\n", suffix="\n\nprint(f(1))")
    assert body["choices"][0]["text"] == "    return x"
    assert body["usage"]["prompt_tokens"] == count_text("def f(x):\n", MODEL) + count_text("\n\nprint(f(1))", MODEL)
