"""``POST /v1/embeddings`` through the official SDK over real HTTP."""

from __future__ import annotations

import array
import base64
import math
import struct
import sys
from typing import Any

import openai
import pytest

from ferryman.mock import spec
from ferryman.mock.control_client import MockControl
from ferryman.tokens import count_text, encoding_for_model

# OpenAI's spec types `embedding` as an array of numbers only, but with encoding_format="base64"
# OpenAI sends (and its SDK decodes) a base64 string: a known spec gap the mock follows.


def raw_create(mock: MockControl, **params: Any) -> dict[str, Any]:
    """The response body exactly as sent, checked against the spec's response schema.

    The spec types ``embedding`` as an array only; with ``encoding_format="base64"`` OpenAI
    sends a string, so that body is checked with its vectors decoded.
    """
    reply = mock.client.embeddings.with_raw_response.create(**params)
    body: dict[str, Any] = reply.http_response.json()
    checked = body
    if params.get("encoding_format") == "base64":
        checked = {**body, "data": [{**d, "embedding": decode_base64(d["embedding"])} for d in body["data"]]}
    assert spec.response_errors("CreateEmbeddingResponse", checked) == []
    return body


def error_of(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body: dict[str, Any] = exc.value.response.json()
    assert spec.response_errors("ErrorResponse", body) == []
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def norm(values: list[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in values))


def test_deterministic_unit_vectors(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    a = client.embeddings.create(model="text-embedding-3-small", input="the ferry crosses", encoding_format="float")
    b = client.embeddings.create(model="text-embedding-3-small", input="the ferry crosses", encoding_format="float")
    c = client.embeddings.create(model="text-embedding-3-small", input="the ferry sinks", encoding_format="float")
    large = client.embeddings.create(model="text-embedding-3-large", input="the ferry crosses", encoding_format="float")
    assert a.object == "list" and a.model == "text-embedding-3-small"
    assert a.data[0].object == "embedding" and a.data[0].index == 0
    assert len(a.data[0].embedding) == 1536 and len(large.data[0].embedding) == 3072
    assert a.data[0].embedding == b.data[0].embedding
    assert a.data[0].embedding != c.data[0].embedding
    assert a.data[0].embedding[:10] != large.data[0].embedding[:10]
    for vector in (a.data[0].embedding, c.data[0].embedding, large.data[0].embedding):
        assert abs(norm(vector) - 1.0) < 1e-5
    # Typical magnitudes of a unit vector in 1536 dimensions, and no two inputs alike.
    cosine = sum(x * y for x, y in zip(a.data[0].embedding, c.data[0].embedding, strict=True))
    assert abs(cosine) < 0.2
    assert max(abs(v) for v in a.data[0].embedding) < 0.2


def test_ada_002_default_size_and_model_name(ferryman_mock: MockControl) -> None:
    body = raw_create(ferryman_mock, model="text-embedding-ada-002", input="hello", encoding_format="float")
    assert len(body["data"][0]["embedding"]) == 1536
    assert body["model"] == "text-embedding-ada-002-v2"  # what OpenAI reports for ada-002
    v2 = raw_create(ferryman_mock, model="text-embedding-ada-002-v2", input="hello", encoding_format="float")
    assert v2["data"][0]["embedding"] == body["data"][0]["embedding"]


@pytest.mark.parametrize(
    ("model", "dimensions"),
    [
        ("text-embedding-3-small", 256),
        ("text-embedding-3-large", 1024),
        ("text-embedding-3-large", 1),
        ("text-embedding-3-small", 1536),
    ],
)
def test_dimensions_are_the_renormalised_prefix(ferryman_mock: MockControl, model: str, dimensions: int) -> None:
    client = ferryman_mock.client
    full = client.embeddings.create(model=model, input="matryoshka", encoding_format="float").data[0].embedding
    short = (
        client.embeddings.create(model=model, input="matryoshka", dimensions=dimensions, encoding_format="float")
        .data[0]
        .embedding
    )
    assert len(short) == dimensions
    assert abs(norm(short) - 1.0) < 1e-5
    prefix = full[:dimensions]
    scale = norm(prefix)
    for got, want in zip(short, prefix, strict=True):
        assert got == pytest.approx(want / scale, rel=1e-5, abs=1e-7)


def decode_base64(text: str) -> list[float]:
    data = base64.b64decode(text)
    count = len(data) // 4
    return list(struct.unpack(f"<{count}f", data))


def test_base64_round_trip_matches_floats(ferryman_mock: MockControl) -> None:
    floats = raw_create(ferryman_mock, model="text-embedding-3-small", input=["one", "two"], encoding_format="float")
    encoded = raw_create(ferryman_mock, model="text-embedding-3-small", input=["one", "two"], encoding_format="base64")
    for f, e in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(e["embedding"], str)
        decoded = decode_base64(e["embedding"])
        assert decoded == f["embedding"]  # float32 values: exactly equal
        packed = array.array("f", decoded)
        if sys.byteorder != "little":
            packed.byteswap()
        assert base64.b64encode(packed.tobytes()).decode() == e["embedding"]


def test_sdk_default_requests_base64_and_decodes(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    default = client.embeddings.create(model="text-embedding-3-small", input="quiet river")
    assert ferryman_mock.requests()[-1]["body"]["encoding_format"] == "base64"
    explicit = client.embeddings.create(model="text-embedding-3-small", input="quiet river", encoding_format="float")
    assert default.data[0].embedding == explicit.data[0].embedding


def test_token_arrays_and_batches(ferryman_mock: MockControl) -> None:
    model = "text-embedding-3-small"
    texts = ["The harbour is calm today.", "A second, longer input about ferries and bridges.", "é ✓ 漢字"]
    body = raw_create(ferryman_mock, model=model, input=texts, encoding_format="float")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    expected = sum(count_text(t, model) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    # A token array is the same input as its text: same vector; it counts its length.
    ids = encoding_for_model(model).encode(texts[0])
    one = raw_create(ferryman_mock, model=model, input=ids, encoding_format="float")
    assert one["data"][0]["embedding"] == body["data"][0]["embedding"]
    assert one["usage"]["prompt_tokens"] == len(ids)
    many = raw_create(ferryman_mock, model=model, input=[ids, [1, 2, 3]], encoding_format="float")
    assert len(many["data"]) == 2 and many["usage"]["prompt_tokens"] == len(ids) + 3
    assert many["data"][0]["embedding"] == body["data"][0]["embedding"]


def test_usage_cost_and_request_log(ferryman_mock: MockControl) -> None:
    ferryman_mock.client.embeddings.create(model="text-embedding-3-large", input="price me", encoding_format="float")
    entry = ferryman_mock.requests()[-1]
    tokens = count_text("price me", "text-embedding-3-large")
    assert entry["status"] == 200
    assert entry["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert float(entry["cost_usd"]) == pytest.approx(tokens * 0.13 / 1_000_000)


@pytest.mark.parametrize("bad_input", ["", ["fine", ""], []])
def test_empty_input_is_rejected(ferryman_mock: MockControl, bad_input: Any) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input=bad_input, encoding_format="float")
    assert exc.value.status_code == 400
    error = error_of(exc)
    assert error["type"] == "invalid_request_error"
    if bad_input != []:
        assert error["message"].startswith("'$.input' is invalid.")


def test_too_many_inputs(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    assert error_of(exc)["type"] == "invalid_request_error"
    ok = ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2048, dimensions=8)
    assert len(ok.data) == 2048


def test_input_over_the_context_length(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input="word " * 9000)
    error = error_of(exc)
    assert "maximum context length is 8192 tokens" in error["message"]


def test_request_token_total(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input=[[7] * 2000] * 151, dimensions=4)
    error = error_of(exc)
    assert error["code"] == "max_tokens_per_request"
    assert error["message"] == "Requested 302000 tokens, max 300000 tokens per request"


def test_dimension_errors(ferryman_mock: MockControl) -> None:
    client = ferryman_mock.client
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="text-embedding-ada-002", input="hi", dimensions=512)
    assert error_of(exc)["message"] == "This model does not support specifying dimensions."
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=1537)
    assert error_of(exc)["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=0)
    assert error_of(exc)["param"] == "dimensions"


def test_wrong_kind_of_model(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        ferryman_mock.client.embeddings.create(model="gpt-4o", input="hi")
    assert exc.value.status_code == 403
    assert error_of(exc)["message"] == "You are not allowed to generate embeddings from this model"
    with pytest.raises(openai.NotFoundError) as missing:
        ferryman_mock.client.embeddings.create(model="text-embedding-9", input="hi")
    assert error_of(missing)["code"] == "model_not_found"


def test_bad_token_ids(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.embeddings.create(model="text-embedding-3-small", input=[1, 2, 10**9])
    assert error_of(exc)["param"] == "input"
