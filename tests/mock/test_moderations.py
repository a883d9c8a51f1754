"""``POST /v1/moderations`` through the official SDK over real HTTP."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from ferryman.mock import spec
from ferryman.mock.control_client import MockControl
from ferryman.mock.resources.moderations import CATEGORIES

ALL_CATEGORIES = set(spec.schema("CreateModerationResponse")["properties"]["results"]["items"]["properties"]
                     ["categories"]["required"])


def moderate(mock: MockControl, **params: Any) -> dict[str, Any]:
    reply = mock.client.moderations.with_raw_response.create(**params)
    body: dict[str, Any] = reply.http_response.json()
    assert spec.response_errors("CreateModerationResponse", body) == []
    return body


def test_every_category_the_spec_requires() -> None:
    assert set(CATEGORIES) == ALL_CATEGORIES
    assert len(ALL_CATEGORIES) == 13


def test_harmless_text_is_not_flagged(ferryman_mock: MockControl) -> None:
    body = moderate(ferryman_mock, input="The ferry leaves at nine; bring a warm coat.")
    assert body["id"].startswith("modr-")
    assert body["model"] == "omni-moderation-latest"  # the default
    [result] = body["results"]
    assert result["flagged"] is False
    assert set(result["categories"]) == ALL_CATEGORIES
    assert not any(result["categories"].values())
    assert all(0 <= score < 0.01 for score in result["category_scores"].values())
    assert all(types == ["text"] for types in result["category_applied_input_types"].values())
    usage = ferryman_mock.requests()[-1]
    assert usage.get("usage") is None and usage.get("cost_usd") is None  # moderation is free


def test_obvious_words_flag_their_category(ferryman_mock: MockControl) -> None:
    result = moderate(ferryman_mock, input="I will kill the dragon.")["results"][0]
    assert result["flagged"] is True
    assert result["categories"]["violence"] is True
    assert result["category_scores"]["violence"] >= 0.5
    assert result["categories"]["sexual"] is False
    graphic = moderate(ferryman_mock, input="There was gore on the deck.")["results"][0]
    assert graphic["categories"]["violence/graphic"] is True
    assert graphic["categories"]["violence"] is True  # a subcategory flags its parent


def test_markers_flag_any_category(ferryman_mock: MockControl) -> None:
    for category in ALL_CATEGORIES:
        result = moderate(ferryman_mock, input=f"benign words [flag:{category}]")["results"][0]
        assert result["flagged"] is True
        assert result["categories"][category] is True, category
        if "/" in category:
            assert result["categories"][category.split("/")[0]] is True


def test_scores_are_deterministic(ferryman_mock: MockControl) -> None:
    first = moderate(ferryman_mock, input="same text")["results"][0]
    again = moderate(ferryman_mock, input="same text")["results"][0]
    other = moderate(ferryman_mock, input="other text")["results"][0]
    assert first == again
    assert first["category_scores"] != other["category_scores"]


def test_list_of_strings_one_result_each(ferryman_mock: MockControl) -> None:
    body = moderate(ferryman_mock, input=["hello there", "I will stab you", "calm water"])
    assert [r["flagged"] for r in body["results"]] == [False, True, False]


def test_multimodal_input_is_one_result(ferryman_mock: MockControl) -> None:
    parts: Any = [
        {"type": "text", "text": "A picture of the harbour"},
        {"type": "image_url", "image_url": {"url": "https://example.com/harbour.png"}},
    ]
    body = moderate(ferryman_mock, model="omni-moderation-latest", input=parts)
    [result] = body["results"]
    assert result["flagged"] is False
    applied = result["category_applied_input_types"]
    assert applied["violence"] == ["text", "image"]
    assert applied["harassment"] == ["text"]
    image_only: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/gore.png"}}]
    result = moderate(ferryman_mock, input=image_only)["results"][0]
    assert result["category_applied_input_types"]["violence/graphic"] == ["image"]
    assert result["category_applied_input_types"]["hate"] == []
    assert result["categories"]["violence/graphic"] is True  # words in the URL count


def test_sdk_typed_result(ferryman_mock: MockControl) -> None:
    reply = ferryman_mock.client.moderations.create(input="watch your back")
    result = reply.results[0]
    assert result.flagged
    assert result.categories.harassment_threatening
    assert result.categories.harassment
    assert result.category_scores.harassment_threatening >= 0.5


def test_legacy_text_model(ferryman_mock: MockControl) -> None:
    body = moderate(ferryman_mock, model="text-moderation-latest", input="fine")
    assert body["model"] == "text-moderation-latest"
    assert body["results"][0]["categories"]["illicit"] is None
    image: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.moderations.create(model="text-moderation-latest", input=image)
    assert exc.value.response.json()["error"]["param"] == "input"


def test_not_a_moderation_model(ferryman_mock: MockControl) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        ferryman_mock.client.moderations.create(model="gpt-4o", input="hi")
    error = exc.value.response.json()["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        ferryman_mock.client.moderations.create(model="omni-moderation-9000", input="hi")
