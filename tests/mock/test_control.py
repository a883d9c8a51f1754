"""The control API and the pytest fixture that uses it."""

from __future__ import annotations

import httpx2
import pytest

from ferryman.mock.control_client import MockControlError

MESSAGES = [{"role": "user", "content": "hi"}]


def test_fixture_starts_clean(ferryman_mock):
    assert ferryman_mock.requests() == []
    settings = ferryman_mock.settings()
    assert settings["faults"] == [] and settings["fixtures"] == []


def test_fixture_state_does_not_leak_part_one(ferryman_mock):
    ferryman_mock.set_faults(["status=500"])
    ferryman_mock.set_limits(rpm=1)


def test_fixture_state_does_not_leak_part_two(ferryman_mock):
    # Runs after part one in file order: the reset cleared its faults and limits.
    assert ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert ferryman_mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_requests_since(ferryman_mock):
    ferryman_mock.client.models.list()
    first = ferryman_mock.requests()
    ferryman_mock.client.models.list()
    newer = ferryman_mock.requests(since=first[-1]["seq"])
    assert len(newer) == 1 and newer[0]["seq"] > first[-1]["seq"]
    ferryman_mock.clear_requests()
    assert ferryman_mock.requests() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.set_faults(["status=teapot"]),
        lambda m: m.set_fixtures([{"match": "("}]),
        lambda m: m.settings(rpm=-1),
        lambda m: m.settings(colour=3),
    ],
)
def test_bad_control_input_is_refused_and_changes_nothing(ferryman_mock, call):
    before = ferryman_mock.settings()
    with pytest.raises(MockControlError):
        call(ferryman_mock)
    assert ferryman_mock.settings() == before


def test_control_errors_are_openai_shaped(ferryman_mock):
    response = httpx2.put(f"{ferryman_mock.url}/_ferryman/faults", content=b"{nope")
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx2.get(f"{ferryman_mock.url}/_ferryman/what").status_code == 404
