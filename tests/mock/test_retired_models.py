"""The mock answers a model past its shutdown date as OpenAI does (404 ``model_not_found``), on
the date it acts on: ``MockSettings.today``, the control API's ``today``, ``ferryman mock
--today`` or ``FERRYMAN_MOCK_TODAY``. ``GET /v1/models`` goes on listing retired models, with
their ``shutdown_date``, as OpenAI lists a model until it is removed."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import httpx2
import openai
import pytest

from ferryman.mock.app import MockApp
from ferryman.mock.control_client import MockControlError
from ferryman.mock.server import BackgroundServer, free_port
from ferryman.mock.settings import MockSettings

MESSAGES = [{"role": "user", "content": "hi"}]
GONE = "The model `gpt-4o-mini` has been deprecated, learn more here: https://platform.openai.com/docs/deprecations"


def test_a_retired_model_is_a_404_the_sdk_raises_as_not_found(ferryman_mock):
    ferryman_mock.set_today("2027-02-01")
    with pytest.raises(openai.NotFoundError) as gone:
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = gone.value
    assert error.status_code == 404
    assert error.body == {"message": GONE, "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError):
        ferryman_mock.client.responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.NotFoundError):  # a snapshot retires with its model
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MESSAGES)


def test_the_shutdown_date_itself_is_the_first_day_refused(ferryman_mock):
    ferryman_mock.set_today("2027-01-13")
    assert ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    ferryman_mock.set_today("2027-01-14")
    with pytest.raises(openai.NotFoundError):
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert ferryman_mock.client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES).choices


def test_retired_models_are_still_listed(ferryman_mock):
    ferryman_mock.set_today("2027-02-01")
    listed = {m.id: m for m in ferryman_mock.client.models.list()}
    assert listed["gpt-4o-mini"].shutdown_date == "2027-01-14"
    assert ferryman_mock.client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_today_through_the_control_api_and_back_on_reset(ferryman_mock):
    initial = ferryman_mock.settings()["today"]
    assert ferryman_mock.settings(today="2027-02-01")["today"] == "2027-02-01"
    assert ferryman_mock.settings(today=None)["today"] is None  # the real date
    with pytest.raises(MockControlError, match="not a date"):
        ferryman_mock.settings(today="14/01/2027")
    with pytest.raises(MockControlError, match="today must be a date"):
        ferryman_mock.settings(today=20270114)
    assert ferryman_mock.reset()["today"] == initial


def test_the_date_comes_from_the_environment_by_default(monkeypatch):
    monkeypatch.setenv("FERRYMAN_MOCK_TODAY", "2027-03-01")
    assert MockSettings().today == dt.date(2027, 3, 1)
    assert MockSettings(today=None).current_date() == dt.datetime.now(dt.UTC).date()
    monkeypatch.setenv("FERRYMAN_MOCK_TODAY", "soon")
    with pytest.raises(ValueError, match="FERRYMAN_MOCK_TODAY: 'soon' is not a date"):
        MockSettings()
    monkeypatch.delenv("FERRYMAN_MOCK_TODAY")
    assert MockSettings().today is None


def test_an_in_process_mock_acts_on_its_own_date():
    app = MockApp(MockSettings(today=dt.date(2026, 11, 1)))
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.NotFoundError):  # retired 2026-10-23
            client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
        client.close()


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else "mock exited"
        try:
            if httpx2.get(url + "/_ferryman/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)  # polling a readiness probe, not ordering a test
    raise AssertionError("ferryman mock did not start")


def test_ferryman_mock_today_option():
    port = free_port()
    command = [sys.executable, "-m", "ferryman.cli", "mock", "--port", str(port), "--today", "2027-02-01"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process)
        assert httpx2.get(url + "/_ferryman/settings").json()["today"] == "2027-02-01"
        client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="has been deprecated"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.close()
    finally:
        process.terminate()
        process.wait(10)


def test_ferryman_mock_refuses_a_bad_today():
    done = subprocess.run(
        [sys.executable, "-m", "ferryman.cli", "mock", "--today", "tomorrow"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--today: 'tomorrow' is not a date" in done.stderr


def test_announced_shutdown_dates_are_served_enforced_and_reset(ferryman_mock):
    """A date announced at run time shows on GET /v1/models (list and retrieve) over the shipped
    one, is enforced from that day on the mock's date, and a reset forgets it."""
    client = ferryman_mock.client
    ferryman_mock.settings(today="2026-12-01")
    ferryman_mock.set_shutdown_dates({"gpt-6-luna": "2026-12-01", "gpt-4o": None})
    listed = {m.id: m.model_dump().get("shutdown_date") for m in client.models.list().data}
    assert listed["gpt-6-luna"] == "2026-12-01" and listed["gpt-4o"] is None
    assert client.models.retrieve("gpt-6-luna").model_dump()["shutdown_date"] == "2026-12-01"
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-6-luna", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_found"
    # gpt-4o's shipped date (2027-01-14) is not in force on 2026-12-01 either way: still served
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    ferryman_mock.reset()
    assert client.models.retrieve("gpt-6-luna").model_dump()["shutdown_date"] is None


@pytest.mark.parametrize(
    "body", [{"dates": {"gpt-4o": "soon"}}, {"dates": {"gpt-4o": 5}}, {"dates": []}, {"other": {}}]
)
def test_bad_announced_dates_are_refused_in_openais_shape(ferryman_mock, body):
    reply = httpx2.put(ferryman_mock.url + "/_ferryman/shutdown_dates", json=body, timeout=10)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "dates"
