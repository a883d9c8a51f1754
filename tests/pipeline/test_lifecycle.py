"""The lifecycle stage through ``ferryman.OpenAI`` against the mock: Deprecation/Sunset/Link headers,
``lifecycle.on_retired`` (pass, refuse, successor), parameter translation, the audit record, the
metric and the once-an-hour log line.

Each test sets its dates: the pipeline's ``lifecycle.today`` and, where the mock must see a model
as retired, the mock's own ``today`` (reset after every test)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import Engine, select

from ferryman import lifecycle_store
from ferryman.audit import Chain, load_key
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.lifecycle import ModelLifecycle, deprecation_headers
from ferryman.pipeline.telemetry import REGISTRY
from ferryman.store import open_store
from ferryman.store.tables import audit
from ferryman.transport import FerrymanTransport

MESSAGES = [{"role": "user", "content": "hi"}]
BEFORE = "2026-12-01"  # gpt-4o-mini retiring (2027-01-14), not retired
AFTER = "2027-02-01"  # gpt-4o-mini retired
DEPRECATIONS = "<https://developers.openai.com/api/docs/deprecations>"
MINI_DEPRECATION = "@1799884800"  # 2027-01-14T00:00:00Z
MINI_SUNSET = "Thu, 14 Jan 2027 00:00:00 GMT"


def records(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def sent(mock: Any, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r["path"] == path]


def retiring_calls(model: str, shutdown: str) -> float:
    labels = {"model": model, "shutdown_date": shutdown}
    return REGISTRY.get_sample_value("ferryman_retiring_model_calls_total", labels) or 0.0


def sdk_on(pipeline: Any) -> openai.OpenAI:
    http = httpx2.Client(transport=FerrymanTransport(pipeline))
    return openai.OpenAI(base_url="http://ferryman.test/v1", api_key="placeholder", http_client=http, max_retries=0)


# -- headers ---------------------------------------------------------------------------------------


def test_a_retiring_model_gets_deprecation_sunset_and_link_headers(ferryman_client):
    client = ferryman_client(lifecycle={"today": BEFORE})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["deprecation"] == MINI_DEPRECATION
    assert raw.headers["sunset"] == MINI_SUNSET
    link = raw.headers["link"]
    assert f'{DEPRECATIONS}; rel="deprecation"' in link
    assert '<https://developers.openai.com/api/docs/models/gpt-6-luna>; rel="successor-version"' in link


def test_the_header_values_follow_the_rfcs():
    """RFC 9745: ``@`` and the unix seconds of the date; RFC 8594: an IMF-fixdate HTTP-date."""
    headers = deprecation_headers(dt.date(2026, 10, 23))
    assert headers["deprecation"] == "@1792713600"
    assert headers["sunset"] == "Fri, 23 Oct 2026 00:00:00 GMT"
    assert "successor-version" not in headers["link"]


def test_streams_and_error_replies_carry_the_headers_too(ferryman_client):
    client = ferryman_client(lifecycle={"today": BEFORE})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert raw.headers["sunset"] == MINI_SUNSET
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in raw.parse())
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-ferryman-fault": "status=400"}
        )
    assert refused.value.response.headers["deprecation"] == MINI_DEPRECATION


def test_no_headers_for_a_model_without_a_shutdown_date_or_when_turned_off(ferryman_client):
    client = ferryman_client(lifecycle={"today": BEFORE})
    raw = client.chat.completions.with_raw_response.create(model="gpt-6-luna", messages=MESSAGES)
    assert not {"deprecation", "sunset", "link"} & set(raw.headers)
    quiet = ferryman_client(lifecycle={"today": BEFORE, "headers": False})
    raw = quiet.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert not {"deprecation", "sunset", "link"} & set(raw.headers)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's own word on the Assistants API
def test_a_retiring_api_gets_the_headers(ferryman_client):
    """The Assistants API shuts down on 2026-08-26 (the mock does not serve it: a 404 with headers)."""
    client = ferryman_client(lifecycle={"today": "2026-06-01"})
    with pytest.raises(openai.NotFoundError) as missing:
        client.beta.assistants.list()
    headers = missing.value.response.headers
    assert headers["deprecation"] == "@1787702400" and headers["sunset"] == "Wed, 26 Aug 2026 00:00:00 GMT"
    assert "successor-version" not in headers["link"]


# -- after the shutdown date: on_retired -----------------------------------------------------------


def test_pass_sends_a_retired_model_as_it_is(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER})
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "has been deprecated" in gone.value.message  # the upstream's (the mock's) own answer
    assert gone.value.response.headers["sunset"] == MINI_SUNSET
    assert [r["body"]["model"] for r in sent(ferryman_mock)] == ["gpt-4o-mini"]


def test_refuse_answers_as_openai_does_without_calling_the_upstream(ferryman_client, ferryman_mock, audit_db):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER, "on_retired": "refuse"})
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = refused.value
    assert error.code == "model_not_found" and error.param == "model" and error.type == "invalid_request_error"
    assert "2027-01-14" in error.message and "`gpt-6-luna`" in error.message and "Ferryman" in error.message
    assert error.response.headers["deprecation"] == MINI_DEPRECATION
    assert sent(ferryman_mock) == []
    [row] = records(audit_db)
    assert row["status"] == 404 and row["tags"]["@lifecycle"] == "refused"
    assert row["tags"]["@shutdown_date"] == "2027-01-14"


def test_successor_routes_to_it_translates_and_is_recorded(ferryman_client, ferryman_mock, audit_db):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER, "on_retired": "successor"})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=40, extra_headers={"ferryman-tags": "team=a"}
    )
    reply = raw.parse()
    assert reply.model.startswith("gpt-6-luna")
    assert raw.headers["sunset"] == MINI_SUNSET  # the caller is still told about the model it named
    [body] = [r["body"] for r in sent(ferryman_mock)]
    assert body["model"] == "gpt-6-luna"
    assert body["max_completion_tokens"] == 40 and "max_tokens" not in body  # gpt-6-luna reasons
    [row] = records(audit_db)
    assert row["model"] == "gpt-6-luna" and row["status"] == 200
    assert row["tags"] == {
        "team": "a",
        "@lifecycle": "successor",
        "@routed_from": "gpt-4o-mini",
        "@shutdown_date": "2027-01-14",
        "@translated": "max_tokens->max_completion_tokens",
    }
    assert '"gpt-4o-mini"' in row["request_body"]  # the body as the caller sent it
    assert Chain(audit_db, load_key()).verify().ok


def test_successor_streams_too(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER, "on_retired": "successor"})
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks and all(c.model.startswith("gpt-6-luna") for c in chunks)


def test_a_caller_cannot_forge_ferrymans_own_audit_tags(ferryman_client, audit_db):
    client = ferryman_client(lifecycle={"today": BEFORE})
    client.chat.completions.create(
        model="gpt-6-luna", messages=MESSAGES, extra_headers={"ferryman-tags": "@routed_from=gpt-4,team=b"}
    )
    [row] = records(audit_db)
    assert row["tags"] == {"team": "b"}


def test_successor_refuses_when_there_is_none_to_route_to(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER, "on_retired": "successor"})
    with pytest.raises(openai.NotFoundError) as none:
        client.chat.completions.create(model="gpt-3.5-turbo-16k", messages=MESSAGES)
    assert "no successor" in none.value.message
    with pytest.raises(openai.NotFoundError) as unknown:  # tts-1's successor is not in the catalogue
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert "`gpt-realtime-2.1-mini` is not a model Ferryman knows" in unknown.value.message
    assert ferryman_mock.requests() == []


def test_successor_refuses_when_the_successor_is_retired_too(ferryman_settings, ferryman_client, ferryman_mock):
    """The upstream's own dates (cached in the store) win over the shipped table's: here it says
    gpt-6-luna shuts down on 2027-01-20."""
    settings = ferryman_settings()
    store = open_store(settings)
    try:
        with store.engine.begin() as conn:
            lifecycle_store.save(conn, lifecycle_store.Fetched("mock", {"gpt-6-luna": "2027-01-20"}))
    finally:
        store.close()
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle={"today": AFTER, "on_retired": "successor"})
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "`gpt-6-luna` was shut down too, on 2027-01-20" in refused.value.message
    assert sent(ferryman_mock) == []


async def test_refusal_through_the_async_client(ferryman_async_client, ferryman_mock):
    client = ferryman_async_client(lifecycle={"today": AFTER, "on_retired": "refuse"})
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="gpt-4o-mini", input="hi")
    assert sent(ferryman_mock, "/v1/responses") == []


# -- translate_params ------------------------------------------------------------------------------


def test_translate_params_rewrites_what_a_reasoning_model_rejects(ferryman_client, ferryman_mock, audit_db):
    client = ferryman_client(lifecycle={"translate_params": True})
    client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES, max_tokens=30, temperature=0.2, top_p=1)
    [body] = [r["body"] for r in sent(ferryman_mock)]
    assert body["max_completion_tokens"] == 30 and "max_tokens" not in body
    assert "temperature" not in body and body["top_p"] == 1  # the default is accepted, and kept
    [row] = records(audit_db)
    assert row["tags"] == {
        "@lifecycle": "translated",
        "@translated": "max_tokens->max_completion_tokens,temperature dropped",
    }


def test_translate_params_off_sends_the_body_as_it_is(ferryman_client, ferryman_mock):
    client = ferryman_client()
    client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES, max_tokens=30, temperature=0.2)
    [body] = [r["body"] for r in sent(ferryman_mock)]
    assert body["max_tokens"] == 30 and body["temperature"] == 0.2 and "max_completion_tokens" not in body


def test_translate_params_leaves_models_that_do_not_reason_alone(ferryman_client, ferryman_mock):
    client = ferryman_client(lifecycle={"translate_params": True, "today": BEFORE})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=30, temperature=0.2)
    [body] = [r["body"] for r in sent(ferryman_mock)]
    assert body["max_tokens"] == 30 and body["temperature"] == 0.2


# -- metric and log --------------------------------------------------------------------------------


def test_each_call_to_a_retiring_model_is_counted(ferryman_client):
    client = ferryman_client(lifecycle={"today": BEFORE})
    before = retiring_calls("gpt-4o-mini", "2027-01-14")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True).close()
    assert retiring_calls("gpt-4o-mini", "2027-01-14") == before + 2


def test_one_log_line_per_model_per_hour(ferryman_pipeline, caplog):
    now = [1_800_000_000.0]
    pipeline = ferryman_pipeline(lifecycle={"today": BEFORE})
    stage = pipeline.stage(ModelLifecycle)
    assert isinstance(stage, ModelLifecycle)
    stage.clock = lambda: now[0]
    client = sdk_on(pipeline)

    def call(model: str) -> None:
        client.chat.completions.create(model=model, messages=MESSAGES)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "ferryman.lifecycle"]

    with caplog.at_level(logging.WARNING, logger="ferryman.lifecycle"):
        call("gpt-4o-mini")
        now[0] += 10
        call("gpt-4o-mini")
        now[0] += 3589  # 3599 s after the first line
        call("gpt-4o-mini")
        assert lines() == ["model gpt-4o-mini shuts down on 2027-01-14 (in 44 days); its successor is gpt-6-luna; "
                           "see https://developers.openai.com/api/docs/deprecations"]  # fmt: skip
        call("gpt-4o")  # another model has its own line
        assert len(lines()) == 2 and "gpt-4o " in lines()[1]
        now[0] += 1  # an hour after the first line
        call("gpt-4o-mini")
        assert len(lines()) == 3 and lines()[2] == lines()[0]
        assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "ferryman.lifecycle")
    client.close()


# -- the stage alone ---------------------------------------------------------------------------------


def test_a_refusal_is_marked_as_ferrymans_own():
    stage = ModelLifecycle(on_retired="refuse", today=dt.date(2027, 2, 1))
    exchange = Exchange.build(
        "POST", "/chat/completions", {"content-type": "application/json"}, b'{"model":"gpt-4o-mini","messages":[]}'
    )

    async def upstream(ex: Exchange) -> Reply:
        raise AssertionError("a refused call must not go on")

    reply = asyncio.run(stage.handle(exchange, upstream))
    assert reply.status == 404 and exchange.notes[FERRYMAN_MADE] is True
    assert exchange.notes["lifecycle"]["action"] == "refused"


def test_an_alias_is_not_a_model():
    """``routing.aliases`` names are resolved later (route stage): the stage leaves them alone."""
    stage = ModelLifecycle(on_retired="refuse", today=dt.date(2027, 2, 1))
    exchange = Exchange.build("POST", "/chat/completions", {}, b'{"model":"fast","messages":[]}')

    async def upstream(ex: Exchange) -> Reply:
        return Reply.of_json(200, {"ok": True})

    reply = asyncio.run(stage.handle(exchange, upstream))
    assert reply.status == 200 and "deprecation" not in reply.headers
