"""What every request meets first: auth, routing, body checks, spec validation, headers."""

from __future__ import annotations

import re

import httpx2
import openai
import pytest

from ferryman.mock import MockApp, MockSettings
from ferryman.mock.server import BackgroundServer

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": "Bearer sk-test"}


def error_of(response: httpx2.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_missing_key_is_401(ferryman_mock):
    response = httpx2.post(f"{ferryman_mock.base_url}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert response.status_code == 401
    assert "API key" in error_of(response)["message"]


def test_restricted_keys_compare_and_mask():
    with BackgroundServer(MockApp(MockSettings(keys=frozenset({"sk-good-key-123456"})))) as server:
        good = openai.OpenAI(base_url=server.base_url, api_key="sk-good-key-123456", max_retries=0)
        assert good.models.list().data
        bad = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-abcdefgh", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.code == "invalid_api_key"
        assert "sk-wrong-key-abcdefgh" not in caught.value.message  # only a masked form is echoed


def test_unknown_path_is_invalid_url(ferryman_mock):
    response = httpx2.post(f"{ferryman_mock.base_url}/nope", json={}, headers=AUTH)
    assert response.status_code == 404
    assert error_of(response)["message"] == "Invalid URL (POST /v1/nope)"


def test_malformed_json_is_400(ferryman_mock):
    response = httpx2.post(f"{ferryman_mock.base_url}/chat/completions", content=b'{"model": ', headers=AUTH)
    assert response.status_code == 400
    assert "parse the JSON body" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o"}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "gpt-4o", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "gpt-4o", "messages": MESSAGES, "n": "two"}, "n"),
        ({"model": "gpt-4o", "messages": [{"role": "user"}]}, "messages[0]"),
        ({"model": "gpt-4o", "messages": "hello"}, "messages"),
    ],
)
def test_spec_validation_names_the_param(ferryman_mock, body, param):
    response = httpx2.post(f"{ferryman_mock.base_url}/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_body_over_the_cap_is_413():
    with BackgroundServer(MockApp(MockSettings(max_body_bytes=1000))) as server:
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx2.post(f"{server.base_url}/chat/completions", json=big, headers=AUTH)
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"

        # A chunked body with no content-length is counted as it arrives.
        def chunks():
            yield b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'
            yield b"x" * 5000
            yield b'"}]}'

        response = httpx2.post(f"{server.base_url}/chat/completions", content=chunks(), headers=AUTH)
        assert response.status_code == 413


def test_unknown_model_is_404_model_not_found(ferryman_mock):
    with pytest.raises(openai.NotFoundError) as caught:
        ferryman_mock.client.chat.completions.create(model="gpt-9-imaginary", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_openai_headers_on_every_reply(ferryman_mock):
    ok = httpx2.post(
        f"{ferryman_mock.base_url}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}, headers=AUTH
    )
    bad = httpx2.post(f"{ferryman_mock.base_url}/chat/completions", json={"model": "gpt-4o"}, headers=AUTH)
    for response in (ok, bad):
        assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])
        assert response.headers["openai-version"] == "2020-10-01"
        assert response.headers["openai-processing-ms"].isdigit()
        for name in ("requests", "tokens"):
            assert response.headers[f"x-ratelimit-limit-{name}"].isdigit()
            assert response.headers[f"x-ratelimit-remaining-{name}"].isdigit()
            assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)", response.headers[f"x-ratelimit-reset-{name}"])
    assert ok.headers["x-request-id"] != bad.headers["x-request-id"]


def test_request_ids_are_unique_and_exposed_by_the_sdk(ferryman_mock):
    ids = {
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)._request_id
        for _ in range(20)
    }
    assert len(ids) == 20


def test_request_log_records_without_secrets(ferryman_mock):
    ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    entry = ferryman_mock.requests()[-1]
    assert entry["path"] == "/v1/chat/completions"
    assert entry["model"] == "gpt-4o-mini"
    assert entry["status"] == 200
    assert entry["key_id"].startswith("key_")
    assert ferryman_mock.api_key not in repr(entry)
    assert "authorization" not in entry["headers"]


def test_models_list_and_retrieve(ferryman_mock):
    models = {m.id: m for m in ferryman_mock.client.models.list().data}
    assert "gpt-6-luna" in models and "text-embedding-3-small" in models
    gpt5 = ferryman_mock.client.models.retrieve("gpt-5")
    assert gpt5.shutdown_date == "2026-12-11"
    assert ferryman_mock.client.models.retrieve("gpt-6-sol").shutdown_date is None
    with pytest.raises(openai.NotFoundError) as caught:
        ferryman_mock.client.models.retrieve("nope-model")
    assert caught.value.code == "model_not_found"


def test_models_bodies_validate(ferryman_mock):
    from ferryman.mock import spec

    listing = httpx2.get(f"{ferryman_mock.base_url}/models", headers=AUTH).json()
    assert spec.response_errors("ListModelsResponse", listing) == []
    one = httpx2.get(f"{ferryman_mock.base_url}/models/gpt-4o", headers=AUTH).json()
    assert spec.response_errors("Model", one) == []
