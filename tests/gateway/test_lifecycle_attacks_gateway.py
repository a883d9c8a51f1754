"""Attacks on the lifecycle stage through the gateway: the official SDK (and raw HTTP where the SDK
would tidy the request) holding a virtual key, against the mock over loopback.

A call the stage reroutes to a successor must still keep to the key's allowed models and budget;
a refused call must cost nothing, reach no upstream and count against no deployment; a body that
names its model twice is sent as the stage read it; ``GET /admin/models/retiring`` stays bounded
however many model names callers invent.

Each test sets the gateway's ``lifecycle.today`` and, where the mock must see a model as retired,
the mock's own ``today`` (reset after every test)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import insert, select

from ferryman import catalogue
from ferryman.pipeline.budget import Budget
from ferryman.pipeline.budget_stores import reservation
from ferryman.pipeline.lifecycle import ModelLifecycle
from ferryman.pipeline.route import Route
from ferryman.pricing import cost_usd
from ferryman.store.tables import audit
from ferryman.tokens import count_request_prompt_tokens

MESSAGES = [{"role": "user", "content": "hi"}]
BEFORE, AFTER = "2026-12-01", "2027-02-01"  # gpt-4o-mini (and gpt-4o) shut down on 2027-01-14
MINI_SUNSET = "Thu, 14 Jan 2027 00:00:00 GMT"
SUCCESSOR = {"today": AFTER, "on_retired": "successor"}
REFUSE = {"today": AFTER, "on_retired": "refuse"}


def records(gw: Any) -> list[dict[str, Any]]:
    with gw.gateway.store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def sent(mock: Any, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    return [r["body"] for r in mock.requests() if r["path"] == path]


def budget_of(gw: Any, key_id: str) -> tuple[Decimal, Decimal]:
    gw.server.call(gw.gateway.pipeline.stage(Budget).flush())
    budget = gw.admin.get(f"/admin/keys/{key_id}").json()["budget"]
    return Decimal(budget["spent_usd"]), Decimal(budget["reserved_usd"])


def raw_chat(gw: Any, key: str, body: bytes) -> httpx2.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx2.post(gw.base_url + "/chat/completions", content=body, headers=headers, timeout=30)


# -- 1. the successor keeps to the key's allowed models -------------------------------------------


def test_a_key_is_not_rerouted_to_a_successor_it_may_not_use(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle=SUCCESSOR)
    client = gw.client(gw.new_key(models=["gpt-4o-mini"]))
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = refused.value
    assert error.code == "model_not_found" and error.param == "model" and error.type == "invalid_request_error"
    assert "`gpt-4o-mini`" in error.message and "`gpt-6-luna`" in error.message
    assert "not a model this API key may use" in error.message
    assert error.response.headers["sunset"] == MINI_SUNSET
    with pytest.raises(openai.NotFoundError):  # streamed, and through the Responses API: the same
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", input="hi")
    assert sent(ferryman_mock) == [] and sent(ferryman_mock, "/v1/responses") == []
    rows = records(gw)
    assert [row["status"] for row in rows] == [404, 404, 404]
    assert all(row["model"] == "gpt-4o-mini" and row["error"] == "model_not_found" for row in rows)
    assert all(row["tags"]["@lifecycle"] == "refused" and row["tags"]["@successor"] == "gpt-6-luna" for row in rows)


def test_a_key_allowed_the_successor_is_rerouted(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle=SUCCESSOR)
    client = gw.client(gw.new_key(models=["gpt-4o-mini", "gpt-6-*"]))
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).model.startswith("gpt-6-luna")
    assert [body["model"] for body in sent(ferryman_mock)] == ["gpt-6-luna"]


def test_a_duplicate_model_member_cannot_smuggle_a_successor_past_the_allowlist(gateway, ferryman_mock):
    """orjson keeps the last of two ``model`` members: the intake checks that one (the allowed,
    retired gpt-4o-mini), the stage reads the same, and the upstream gets one ``model`` only."""
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle=SUCCESSOR)
    key = gw.new_key(models=["gpt-4o-mini"])
    body = b'{"model":"gpt-6-luna","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    reply = raw_chat(gw, key, body)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert sent(ferryman_mock) == []


def test_the_upstream_reads_the_model_the_stage_decided_on(gateway, ferryman_mock):
    """The intake parses once and sends what it parsed: whichever ``model`` member the stage saw
    (the last) is the only one the upstream gets, refused, passed or rerouted."""
    ferryman_mock.set_today(AFTER)
    refusing = gateway(lifecycle=REFUSE)
    key = refusing.new_key()
    tail = b',"messages":[{"role":"user","content":"hi"}]}'
    assert raw_chat(refusing, key, b'{"model":"gpt-6-luna","model":"gpt-4o-mini"' + tail).status_code == 404
    assert sent(ferryman_mock) == []
    assert raw_chat(refusing, key, b'{"model":"gpt-4o-mini","model":"gpt-6-luna"' + tail).status_code == 200
    assert [body["model"] for body in sent(ferryman_mock)] == ["gpt-6-luna"]
    routing = gateway(lifecycle=SUCCESSOR)
    key = routing.new_key()
    assert raw_chat(routing, key, b'{"model":"gpt-6-luna","model":"gpt-4o-mini"' + tail).status_code == 200
    assert [body["model"] for body in sent(ferryman_mock)] == ["gpt-6-luna", "gpt-6-luna"]


# -- 2. the successor's price is what the budget reserves ----------------------------------------


def _worst(model: str, prompt: int) -> Decimal:
    info = catalogue.lookup(model)
    assert info is not None and info.max_output_tokens
    cost = cost_usd(model, {"prompt_tokens": prompt, "completion_tokens": info.max_output_tokens})
    assert cost is not None
    return reservation(cost)


def test_the_budget_reserves_the_successors_worst_case(gateway, ferryman_mock):
    """No ``max_tokens``: the worst case is the model's own output limit. gpt-6-luna may write 128,000
    tokens, gpt-4o-mini 16,384: a cap that holds twice gpt-4o-mini's worst case holds no call to
    gpt-6-luna, and one that holds gpt-6-luna's worst case exactly lets one through, settled at the
    successor's price."""
    ferryman_mock.set_today(AFTER)
    prompt = count_request_prompt_tokens("/chat/completions", {"model": "gpt-6-luna", "messages": MESSAGES})
    asked, successor = _worst("gpt-4o-mini", prompt), _worst("gpt-6-luna", prompt)
    assert 2 * asked < successor
    gw = gateway(lifecycle=SUCCESSOR)
    key, record = gw.new_key_with_record(budget=f"{format(2 * asked, 'f')}/month")
    with pytest.raises(openai.RateLimitError) as capped:
        gw.client(key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert capped.value.code == "budget_exceeded"
    assert capped.value.response.headers["sunset"] == MINI_SUNSET  # a refusal from inside still tells
    assert sent(ferryman_mock) == [] and budget_of(gw, record.id) == (0, 0)

    key, record = gw.new_key_with_record(budget=f"{format(successor, 'f')}/month")
    raw = gw.client(key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    reply = raw.parse()
    assert reply.model.startswith("gpt-6-luna") and reply.usage is not None
    paid = cost_usd("gpt-6-luna", reply.usage.model_dump())
    assert paid is not None and Decimal(raw.headers["x-ferryman-cost-usd"]) == paid.quantize(Decimal("1e-10"))
    spent, reserved = budget_of(gw, record.id)
    assert reserved == 0 and spent == Decimal(raw.headers["x-ferryman-cost-usd"]) and spent <= successor


# -- 7. a refusal costs nothing and counts against nothing ----------------------------------------


def test_a_refusal_is_free_unretried_and_no_failure_of_a_deployment(gateway, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    gw = gateway(lifecycle=REFUSE, routing={"breaker_failures": 1})
    key, record = gw.new_key_with_record(budget="0.01/day")
    client = gw.client(key, max_retries=3)
    for _ in range(3):
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        assert refused.value.code == "model_not_found" and refused.value.param == "model"
        assert refused.value.response.headers["x-ferryman-attempts"] == "1"
    assert ferryman_mock.requests() == []
    route = gw.gateway.pipeline.stage(Route)
    assert isinstance(route, Route)
    snapshot = route.board.by_name["mock"].snapshot(route.board.clock())
    assert snapshot["state"] == "closed" and snapshot["recent_failures"] == 0 and snapshot["opened"] == 0
    assert budget_of(gw, record.id) == (0, 0)
    rows = records(gw)
    assert [(row["status"], row["attempts"], row["cost_usd"]) for row in rows] == [(404, 0, 0)] * 3
    assert all(row["error"] == "model_not_found" and row["tags"]["@lifecycle"] == "refused" for row in rows)
    # the deployment still serves the successor, at once (its breaker of one failure is closed)
    assert client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES, max_tokens=5).choices


# -- 4. headers: one of each, from a cache hit too -----------------------------------------------


def test_headers_on_a_cache_hit_and_never_twice(gateway):
    gw = gateway(lifecycle={"today": BEFORE}, cache={"mode": "all"})
    client = gw.client(gw.new_key())
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, seed=1)
    again = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, seed=1)
    assert first.headers["x-ferryman-cache"] == "miss" and again.headers["x-ferryman-cache"] == "hit"
    for raw in (first, again):
        assert raw.headers["sunset"] == MINI_SUNSET
        for name in ("deprecation", "sunset", "link"):
            assert len(raw.headers.get_list(name)) == 1
        assert raw.headers["link"].count('rel="deprecation"') == 1


# -- 6. the admin route stays bounded --------------------------------------------------------------


def test_the_retiring_route_is_bounded_however_many_models_callers_name(gateway, ferryman_mock):
    """Callers choose model names (an unknown one is audited like any call): thousands of invented
    fine-tune names of a retiring base, and junk, leave the route answering a bounded list in which
    the retiring models called most are all there, and it says the list was cut."""
    gw = gateway(lifecycle={"today": BEFORE})
    client = gw.client(gw.new_key())
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    now = time.time()
    base = {"ts": now, "principal": "key_x", "endpoint": "/chat/completions", "status": 404, "attempts": 1,
            "latency_ms": 1.0, "cache": "off", "tags": {}, "prev_hash": "0" * 64, "hash": "0" * 64}  # fmt: skip
    invented = [f"ft:gpt-4o-mini-2024-07-18:org:x:{n}" for n in range(3000)] + [f"junk-{n}" for n in range(3000)]
    with gw.gateway.store.engine.begin() as conn:
        conn.execute(insert(audit), [{**base, "model": model} for model in invented])
    reply = gw.admin.get("/admin/models/retiring?days=30&within=180")
    assert reply.status_code == 200
    listed = reply.json()
    assert listed["truncated"] is True and len(listed["data"]) <= 1000
    mini = [m for m in listed["data"] if m["model"] == "gpt-4o-mini"]
    assert mini and mini[0]["calls"] == 2 and mini[0]["shutdown_date"] == "2027-01-14"
    assert not any(m["model"].startswith("junk-") for m in listed["data"])


def test_the_retiring_route_reads_the_date_the_stage_acts_on(gateway):
    """``lifecycle.today`` (a rehearsal) is the route's today too: what it calls retired is what the
    stage refuses."""
    gw = gateway(lifecycle={"today": AFTER})
    stage = gw.gateway.pipeline.stage(ModelLifecycle)
    assert isinstance(stage, ModelLifecycle)
    with gw.gateway.store.engine.begin() as conn:
        conn.execute(insert(audit), [{"ts": time.time(), "principal": "key_x", "endpoint": "/chat/completions",
                                      "status": 200, "attempts": 1, "latency_ms": 1.0, "cache": "off", "tags": {},
                                      "prev_hash": "0" * 64, "hash": "0" * 64, "model": "gpt-4o-mini"}])  # fmt: skip
    listed = gw.admin.get("/admin/models/retiring").json()
    assert listed["today"] == AFTER
    [mini] = [m for m in listed["data"] if m["model"] == "gpt-4o-mini"]
    assert mini["retired"] is True and mini["days_left"] == -18
