"""Limits and budgets per virtual key and per team, as callers meet them through the official SDK.

Requests and tokens per minute answer 429 ``rate_limit_exceeded`` with ``retry-after``; budgets
answer 429 ``insufficient_quota`` / ``budget_exceeded`` as soon as spent + reserved + this call's
worst case would pass the cap; a model outside the key's allowlist answers 403; an expired key
401. A refused call never reaches the upstream. Under 50 concurrent calls a budget that fits
ten reservations lets exactly ten through (SQLite, one instance).

Costs are made exact: every call asks for ``max_tokens=5`` and the mock answers with exactly that
many tokens, so a call's real cost equals the worst case the budget reserves for it (checked).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest

from ferryman.exchange import Exchange
from ferryman.pipeline.budget import Budget

MESSAGES = [{"role": "user", "content": "Say hello."}]
CALL = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}


def chat(client: openai.OpenAI, **changes: Any) -> Any:
    return client.chat.completions.create(**{**CALL, **changes})


def chat_paths(mock: Any) -> list[str]:
    return [r["path"] for r in mock.requests() if r["path"] == "/v1/chat/completions"]


def worst_case(gw: Any, body: dict[str, Any] = CALL) -> Decimal:
    """What the budget stage reserves for ``body``: its prompt plus the output cap, priced."""
    stage = gw.gateway.pipeline.stage(Budget)
    assert isinstance(stage, Budget)
    exchange = Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, orjson.dumps(body))
    return stage.worst_case(exchange)


def usd(amount: Decimal) -> str:
    return format(amount, "f")


def snapshot(gw: Any, scope: str) -> tuple[Decimal, Decimal]:
    stage = gw.gateway.pipeline.stage(Budget)
    assert isinstance(stage, Budget)
    gw.server.call(stage.flush())
    return gw.server.call(stage.snapshot(scope, "month"))


# -- requests and tokens per minute ----------------------------------------------------------------


def test_key_rpm_refuses_the_fourth_call_of_a_burst(gateway, ferryman_mock):
    """rpm=3: three calls pass, the fourth is 429 rate_limit_exceeded with retry-after and the
    key's own limit in x-ratelimit-*; it never reaches the upstream; another key is unaffected."""
    gw = gateway()
    client = gw.client(gw.new_key(rpm=3))
    for _ in range(3):
        chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert "3 requests" in error.message and "this key" in error.message
    headers = error.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert len(chat_paths(ferryman_mock)) == 3
    chat(gw.client(gw.new_key(rpm=3)))  # per key: a fresh key has its own three


def test_key_tpm_counts_prompt_plus_max_output(gateway, ferryman_mock):
    """tpm=100: a call asking for 10 prompt + 95 output tokens is refused as too large (not to be
    retried) though its reply would have been short; 10 + 85 passes; the next such call is 429
    rate_limit_exceeded until the minute refills."""
    gw = gateway()
    client = gw.client(gw.new_key(tpm=100))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, max_tokens=95)
    assert "Request too large" in caught.value.message and "105 tokens" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    reply = chat(client, max_tokens=85)
    assert reply.usage.prompt_tokens == 10
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, max_tokens=85)
    assert caught.value.code == "rate_limit_exceeded" and "100 tokens" in caught.value.message
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert len(chat_paths(ferryman_mock)) == 1


def test_team_rpm_is_shared_by_the_keys_of_the_team(gateway, ferryman_mock):
    """Team rpm=3 with two keys: a, a, b pass; then both keys are refused, naming the team,
    though each key alone is far below any limit of its own."""
    gw = gateway()
    assert gw.admin.put("/admin/teams/alpha", json={"rpm": 3}).status_code == 200
    a = gw.client(gw.new_key("a", team="alpha"))
    b = gw.client(gw.new_key("b", team="alpha"))
    outsider = gw.client(gw.new_key("c", team="beta"))
    chat(a)
    chat(a)
    chat(b)
    for client in (b, a):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
        assert caught.value.code == "rate_limit_exceeded" and "team alpha" in caught.value.message
    chat(outsider)
    assert len(chat_paths(ferryman_mock)) == 4


# -- budgets ---------------------------------------------------------------------------------------


def test_key_budget_refuses_once_spent_plus_reserved_would_pass_the_cap(gateway, ferryman_mock):
    """A cap of 2.5 calls: two pass, the third is 429 insufficient_quota / budget_exceeded with
    x-should-retry: false. Raised to exactly three calls, the third passes (reaching the cap is
    allowed) and the fourth is refused."""
    gw = gateway()
    w = worst_case(gw)
    assert w > 0
    key, record = gw.new_key_with_record("budgeted", budget=f"{usd(w * 5 / 2)}/month")
    client = gw.client(key)
    first = client.chat.completions.with_raw_response.create(**CALL)
    assert Decimal(first.headers["x-ferryman-cost-usd"]) == w  # the real cost is the worst case
    chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    error = caught.value
    assert error.status_code == 429 and error.code == "budget_exceeded"
    assert error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert f"scope 'key:{record.id}'" in error.message
    assert len(chat_paths(ferryman_mock)) == 2
    assert snapshot(gw, f"key:{record.id}") == (2 * w, 0)

    assert gw.admin.patch(f"/admin/keys/{record.id}", json={"budget": f"{usd(3 * w)}/month"}).status_code == 200
    chat(client)  # 2w spent + w reserved == the cap: allowed
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.code == "budget_exceeded"
    assert snapshot(gw, f"key:{record.id}") == (3 * w, 0)
    assert len(chat_paths(ferryman_mock)) == 3


def test_team_budget_is_shared_by_the_keys_of_the_team(gateway, ferryman_mock):
    """A team cap of 2.5 calls: one call from each key spends it; the next from either is refused
    on the team's scope though neither key has a budget of its own."""
    gw = gateway()
    w = worst_case(gw)
    assert gw.admin.put("/admin/teams/alpha", json={"budget": f"{usd(w * 5 / 2)}/day"}).status_code == 200
    a = gw.client(gw.new_key("a", team="alpha"))
    b = gw.client(gw.new_key("b", team="alpha"))
    chat(a)
    chat(b)
    for client in (a, b):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
        assert caught.value.code == "budget_exceeded" and "scope 'team:alpha'" in caught.value.message
    assert len(chat_paths(ferryman_mock)) == 2
    stage = gw.gateway.pipeline.stage(Budget)
    assert gw.server.call(stage.snapshot("team:alpha", "day")) == (2 * w, 0)


def test_budget_holds_under_50_concurrent_calls(gateway, ferryman_mock):
    """50 calls at once on a key whose budget fits 10 reservations (and half of an eleventh):
    exactly 10 pass, 40 are refused with budget_exceeded, and spend ends at 10 calls' worth with
    nothing left reserved: never more than the budget."""
    gw = gateway()
    w = worst_case(gw)
    cap = w * 10 + w / 2
    key, record = gw.new_key_with_record("burst", budget=f"{usd(cap)}/month")

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as client:
            calls = [client.chat.completions.create(**CALL) for _ in range(50)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    passed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError) and r.code == "budget_exceeded"]
    assert (len(passed), len(refused)) == (10, 40), [type(r).__name__ for r in results]
    spent, reserved = snapshot(gw, f"key:{record.id}")
    assert (spent, reserved) == (10 * w, 0) and spent <= cap
    assert len(chat_paths(ferryman_mock)) == 10
    shown = gw.admin.get(f"/admin/keys/{record.id}").json()
    assert Decimal(shown["usage"]["cost_usd"]) <= cap and shown["usage"]["calls"] == 50


# -- models and expiry -----------------------------------------------------------------------------


def test_model_allowlist_answers_403(gateway, ferryman_mock):
    """models=["gpt-4o-mini*"]: gpt-4o-mini and its snapshots pass; gpt-4o is 403
    model_not_allowed on chat, responses and embeddings alike, before the upstream."""
    gw = gateway()
    client = gw.client(gw.new_key(models=["gpt-4o-mini*"]))
    chat(client)
    chat(client, model="gpt-4o-mini-2024-07-18")
    refusals = [
        lambda: chat(client, model="gpt-4o"),
        lambda: client.responses.create(model="gpt-4o", input="hi"),
        lambda: client.embeddings.create(model="text-embedding-3-small", input="hi"),
    ]
    for refused in refusals:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            refused()
        assert caught.value.code == "model_not_allowed" and caught.value.param == "model"
    assert {r.get("model") for r in ferryman_mock.requests()} == {"gpt-4o-mini", "gpt-4o-mini-2024-07-18"}


def test_expired_key_answers_401_key_expired(gateway, ferryman_mock):
    """A key past its expiry is refused with 401 key_expired; one within it works."""
    gw = gateway()
    live = gw.client(gw.new_key("live", expires="1h"))
    key, record = gw.new_key_with_record("old", expires="1h")
    gw.server.call(gw.gateway.keys.set_limits(record.id, expires=time.time() - 1))
    chat(live)
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(gw.client(key))
    assert caught.value.code == "key_expired"
    assert key not in caught.value.message
    assert len(chat_paths(ferryman_mock)) == 1
    assert gw.admin.get(f"/admin/keys/{record.id}").json()["state"] == "expired"


def test_model_allowlist_covers_the_lines_of_a_batch_file(gateway, ferryman_mock):
    """A key limited to some models cannot reach others through a batch: uploading a batch file
    whose lines name another model answers 403, and nothing reaches the upstream."""
    import io
    import json

    gw = gateway()
    client = gw.client(gw.new_key(models=["gpt-4o-mini"]))
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    allowed = json.dumps({**line, "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
    refused = json.dumps({**line, "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}})
    client.files.create(file=("ok.jsonl", io.BytesIO(allowed.encode())), purpose="batch")
    uploads_before = [e for e in ferryman_mock.requests() if e["path"] == "/v1/files"]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.files.create(file=("no.jsonl", io.BytesIO((allowed + "\n" + refused).encode())), purpose="batch")
    assert caught.value.code == "model_not_allowed" and "gpt-4o`" in caught.value.message
    assert [e for e in ferryman_mock.requests() if e["path"] == "/v1/files"] == uploads_before
