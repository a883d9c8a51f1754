"""The lifecycle stage in the gateway (which builds the same pipeline): the official SDK, holding a
virtual key, sees the Deprecation/Sunset/Link headers, and ``lifecycle.on_retired`` refuses or
routes to the successor, with the audit record and ``/metrics`` saying so.

Each test sets the gateway's ``lifecycle.today`` and, where the mock must see a model as retired,
the mock's own ``today`` (reset after every test)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import select

from ferryman.store.tables import audit

MESSAGES = [{"role": "user", "content": "hi"}]
BEFORE, AFTER = "2026-12-01", "2027-02-01"  # gpt-4o-mini shuts down on 2027-01-14
MINI_SUNSET = "Thu, 14 Jan 2027 00:00:00 GMT"


def records(gw: Any) -> list[dict[str, Any]]:
    with gw.gateway.store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def chats(mock: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in mock.requests() if r["path"] == "/v1/chat/completions"]


def test_headers_on_plain_and_streamed_replies(gateway):
    gw = gateway(lifecycle={"today": BEFORE})
    client = gw.client(gw.new_key())
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["deprecation"] == "@1799884800" and raw.headers["sunset"] == MINI_SUNSET
    assert 'rel="deprecation"' in raw.headers["link"] and "models/gpt-6-luna>" in raw.headers["link"]
    streamed = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert streamed.headers["sunset"] == MINI_SUNSET
    assert list(streamed.parse())
    plain = client.chat.completions.with_raw_response.create(model="gpt-6-luna", messages=MESSAGES)
    assert "deprecation" not in plain.headers and "sunset" not in plain.headers


def test_pass_lets_the_upstream_answer(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle={"today": AFTER})
    with pytest.raises(openai.NotFoundError) as gone:
        gw.client(gw.new_key()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "has been deprecated" in gone.value.message
    assert gone.value.response.headers["sunset"] == MINI_SUNSET
    assert len(chats(ferryman_mock)) == 1


def test_refuse_never_reaches_the_upstream(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle={"today": AFTER, "on_retired": "refuse"})
    with pytest.raises(openai.NotFoundError) as refused:
        gw.client(gw.new_key()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.code == "model_not_found" and refused.value.param == "model"
    assert "2027-01-14" in refused.value.message and "`gpt-6-luna`" in refused.value.message
    assert chats(ferryman_mock) == []
    [row] = records(gw)
    assert row["status"] == 404 and row["tags"]["@lifecycle"] == "refused"


def test_successor_routes_translates_and_is_audited(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle={"today": AFTER, "on_retired": "successor"})
    client = gw.client(gw.new_key())
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=25)
    assert reply.model.startswith("gpt-6-luna")
    [body] = chats(ferryman_mock)
    assert body["model"] == "gpt-6-luna" and body["max_completion_tokens"] == 25 and "max_tokens" not in body
    streamed = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert streamed and all(chunk.model.startswith("gpt-6-luna") for chunk in streamed)
    rows = records(gw)
    assert [row["model"] for row in rows] == ["gpt-6-luna", "gpt-6-luna"]
    assert all(row["tags"]["@routed_from"] == "gpt-4o-mini" for row in rows)
    assert rows[0]["tags"]["@translated"] == "max_tokens->max_completion_tokens"


def test_translate_params_through_the_gateway(gateway, ferryman_mock):
    gw = gateway(lifecycle={"translate_params": True})
    gw.client(gw.new_key()).chat.completions.create(model="gpt-6-luna", messages=MESSAGES, temperature=0.3)
    [body] = chats(ferryman_mock)
    assert "temperature" not in body


def test_metrics_count_calls_to_retiring_models(gateway):
    gw = gateway(lifecycle={"today": BEFORE})
    gw.client(gw.new_key()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    text = httpx2.get(gw.url + "/metrics").text
    assert 'ferryman_retiring_model_calls_total{model="gpt-4o-mini",shutdown_date="2027-01-14"}' in text


def test_the_gateway_refreshes_the_upstreams_dates_at_start_and_acts_on_them(gateway, ferryman_mock):
    """With ``lifecycle.refresh_s`` on (the suite turns it off by default), a first start asks the
    upstream's GET /v1/models, caches the answer, and the next call carries the date the upstream
    announced, a date the shipped table does not have."""
    ferryman_mock.set_shutdown_dates({"gpt-6-luna": "2027-06-30"})
    gw = gateway(lifecycle={"refresh_s": 86400, "today": BEFORE})
    gw.server.call(asyncio.wait_for(gw.gateway.dates_refreshed.wait(), 30))
    assert any(r["path"] == "/v1/models" for r in ferryman_mock.requests())
    client = gw.client(gw.new_key())
    raw = client.chat.completions.with_raw_response.create(model="gpt-6-luna", messages=MESSAGES)
    assert raw.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    retiring = gw.admin.get("/admin/models/retiring?within=3650").json()["data"]
    luna = next(m for m in retiring if m["model"] == "gpt-6-luna")
    assert luna["shutdown_date"] == "2027-06-30" and luna["source"].startswith("upstream ")
