"""The official Python SDK through the gateway to the mock: chat (plain and streamed), responses
(streamed), embeddings, files and batches, with the caller holding only a virtual key."""

from __future__ import annotations

import io
import json

import openai
import pytest

from tests.pipeline.conftest import UPSTREAM_KEY

MESSAGES = [{"role": "user", "content": "Say hello."}]


def test_chat_plain_through_the_gateway(gateway, ferryman_mock):
    gw = gateway()
    key = gw.new_key()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens > 0
    assert float(raw.headers["x-ferryman-cost-usd"]) > 0
    assert float(raw.headers["x-ferryman-overhead-ms"]) >= 0
    # the upstream saw the server's key, never the caller's virtual key
    sent = ferryman_mock.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert key not in json.dumps(sent)


def test_chat_stream_arrives_chunk_by_chunk(gateway):
    gw = gateway()
    stream = gw.client(gw.new_key()).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_responses_stream(gateway):
    gw = gateway()
    client = gw.client(gw.new_key())
    with client.responses.stream(model="gpt-4o-mini", input="Write a haiku.") as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert final.output_text
    assert client.responses.retrieve(final.id).id == final.id  # stored, and owned by this key


def test_embeddings(gateway):
    gw = gateway()
    result = gw.client(gw.new_key()).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 1536


def test_files_and_batches(gateway):
    gw = gateway()
    client = gw.client(gw.new_key())
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": MESSAGES}}
        for i in range(3)
    ]  # fmt: skip
    data = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == len(data)
    assert client.files.content(uploaded.id).content == data
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(batch.id).id == batch.id
    assert [b.id for b in client.batches.list()] == [batch.id]
    assert [f.id for f in client.files.list()] == [uploaded.id]


def test_the_callers_key_is_the_only_credential_it_needs(gateway):
    gw = gateway()
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client(UPSTREAM_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert UPSTREAM_KEY not in str(caught.value)
