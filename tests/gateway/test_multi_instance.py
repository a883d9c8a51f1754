"""Two ``ferryman serve`` processes sharing one PostgreSQL database and one Redis: a key's budget,
its requests per minute and its revocation hold across both, as if there were one gateway.

The gateways are real subprocesses (``--store postgresql://… --redis redis://…``) in front of the
session's mock; the callers are the official async SDK, firing all their calls at once, half at
each instance. The database is the test module's own (created and dropped here), the Redis keys
sit under a prefix of their own (deleted after).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer
from ferryman.pipeline.budget_stores import UNIT, reservation
from ferryman.pricing import cost_usd
from ferryman.tokens import count_request_prompt_tokens
from tests.gateway.processes import (
    GatewayProcess,
    drop_redis_prefix,
    fresh_postgres_database,
    gateway_env,
    start_gateway,
)

MODEL = "gpt-4o-mini"
PROMPT = "budget probe: tell me a long story"
MAX_TOKENS = 20
# Longer than MAX_TOKENS, so every reply is cut at exactly MAX_TOKENS output tokens.
STORY = " ".join(["Once upon a time a ferryman carried travellers across a wide grey river."] * 8)


@dataclass
class Pair:
    a: GatewayProcess
    b: GatewayProcess

    @property
    def both(self) -> tuple[GatewayProcess, GatewayProcess]:
        return self.a, self.b


@dataclass
class Outcome:
    instance: int  # 0: A, 1: B
    status: int
    headers: dict[str, str]
    code: str | None = None
    type: str | None = None
    cost: Decimal | None = None


@pytest.fixture(scope="module")
def pair(
    postgres_url: str, redis_url: str, ferryman_mock_server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("multi-instance")
    prefix = f"ferryman-test-{uuid.uuid4().hex[:12]}:"
    with fresh_postgres_database(postgres_url) as database:
        env = gateway_env(ferryman_mock_server.base_url, workdir / "data", STORE__REDIS_PREFIX=prefix)
        started = [start_gateway(env, workdir, "--store", database, "--redis", redis_url) for _ in range(2)]
        try:
            for gateway in started:
                gateway.wait_ready()
            yield Pair(*started)
        finally:
            for gateway in started:
                gateway.stop()
            drop_redis_prefix(redis_url, prefix)
    for gateway in started:
        gateway.assert_no_secrets_logged()


def chat_body(max_tokens: int | None = MAX_TOKENS) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def worst_case_usd() -> Decimal:
    """What the budget stage reserves for one call: the prompt's tokens plus ``max_tokens``, priced."""
    prompt = count_request_prompt_tokens("/chat/completions", chat_body())
    cost = cost_usd(MODEL, {"prompt_tokens": prompt, "completion_tokens": MAX_TOKENS})
    assert cost is not None and cost > 0
    return reservation(cost)


async def _one(client: openai.AsyncOpenAI, instance: int, start: asyncio.Event, body: dict[str, Any]) -> Outcome:
    await start.wait()
    try:
        raw = await client.chat.completions.with_raw_response.create(**body)
    except openai.APIStatusError as error:
        return Outcome(instance, error.status_code, dict(error.response.headers), error.code, error.type)
    raw.parse()
    cost = raw.headers.get("x-ferryman-cost-usd")
    return Outcome(instance, raw.status_code, dict(raw.headers), cost=Decimal(cost) if cost is not None else None)


async def _burst(pair: Pair, key: str, calls: int, body: dict[str, Any]) -> tuple[list[Outcome], float]:
    """``calls`` calls released at once, alternating between the two instances; and how long they took."""
    clients = [openai.AsyncOpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=30.0) for g in pair.both]
    start = asyncio.Event()
    try:
        tasks = [asyncio.ensure_future(_one(clients[i % 2], i % 2, start, body)) for i in range(calls)]
        await asyncio.sleep(0)  # every task is waiting on the event: release them together
        began = time.monotonic()
        start.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return list(outcomes), time.monotonic() - began
    finally:
        for client in clients:
            await client.close()


def burst(pair: Pair, key: str, calls: int, body: dict[str, Any]) -> tuple[list[Outcome], float]:
    return asyncio.run(_burst(pair, key, calls, body))


def key_report(gateway: GatewayProcess, key_id: str) -> dict[str, Any]:
    reply = gateway.admin.get(f"/admin/keys/{key_id}")
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def test_a_budget_holds_across_two_instances_under_200_concurrent_calls(pair: Pair, ferryman_mock: MockControl):
    """200 calls at once, 100 per instance, on a key whose budget fits 30.5 worst cases: exactly 30
    are served (none past the cap, none refused while there was room), every refusal is OpenAI's
    429 insufficient_quota/budget_exceeded, and the shared counter (as both instances see it), the
    cost headers and the audit rows both instances wrote agree on the spend."""
    ferryman_mock.set_fixtures([{"match": "budget probe", "content": STORY}])
    each = worst_case_usd()
    fits = 30
    budget = each * fits + each / 2
    key, key_id = pair.a.create_key("budget-200", budget=f"{budget}/day")

    outcomes, _ = burst(pair, key, 200, chat_body())

    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    assert {o.status for o in refused} <= {429}, [(o.status, o.code) for o in refused if o.status != 429]
    for o in refused:
        assert (o.type, o.code) == ("insufficient_quota", "budget_exceeded")
        assert o.headers.get("x-should-retry") == "false"
    # Every reply is cut at max_tokens, so each costs exactly what it reserved: 30 fit, the 31st
    # would pass the cap, and nothing is released for a later call to use.
    assert all(o.cost == each for o in served), {o.cost for o in served}
    assert len(served) == fits and len(refused) == 200 - fits
    # Each instance answered its 100: alone, either would have served 30 on a counter of its own.
    assert [sum(1 for o in outcomes if o.instance == i) for i in (0, 1)] == [100, 100]
    spent = sum((o.cost for o in served if o.cost is not None), Decimal(0))
    assert spent <= budget

    for gateway in pair.both:  # one counter, seen alike from both: everything settled, nothing held
        counter = key_report(gateway, key_id)["budget"]
        assert Decimal(counter["spent_usd"]) == spent.quantize(UNIT)
        assert Decimal(counter["reserved_usd"]) == 0
        assert Decimal(counter["spent_usd"]) <= Decimal(counter["usd"])
    usage = key_report(pair.b, key_id)["usage"]  # from the audit rows both instances wrote
    assert usage["calls"] == 200
    assert abs(Decimal(usage["cost_usd"]) - spent) <= Decimal("0.000001")


def test_a_keys_rpm_holds_across_two_instances(pair: Pair, ferryman_mock: MockControl):
    """A key with 30 requests per minute, 60 calls at once split over both instances: 30 are
    served (each instance alone would have let its 30 through), the other 30 get OpenAI's 429
    rate_limit_exceeded with retry-after and the key's limit in x-ratelimit-limit-requests."""
    rpm = 30
    key, _ = pair.a.create_key("rpm-30", rpm=rpm)

    outcomes, elapsed = burst(pair, key, 2 * rpm, chat_body(max_tokens=5))

    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    # The buckets refill continuously (rpm/60 a second): a burst slower than that may fit one more.
    refilled = int(elapsed * rpm / 60)
    assert rpm <= len(served) <= rpm + refilled, (len(served), elapsed)
    assert [sum(1 for o in outcomes if o.instance == i) for i in (0, 1)] == [rpm, rpm]
    for o in refused:
        assert (o.status, o.code) == (429, "rate_limit_exceeded")
        assert int(o.headers["retry-after"]) >= 1
        assert int(o.headers["retry-after-ms"]) > 0
        assert o.headers["x-ratelimit-limit-requests"] == str(rpm)
    assert len(served) + len(refused) == 2 * rpm


def test_a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second(pair: Pair):
    """Revoked through instance A's admin API while instance B holds it as valid in its cache:
    A refuses it at once, B within a second, with OpenAI's 401 code key_revoked."""
    key, key_id = pair.a.create_key("revoke-me")
    client_a = openai.OpenAI(base_url=pair.a.base_url, api_key=key, max_retries=0, timeout=5.0)
    client_b = openai.OpenAI(base_url=pair.b.base_url, api_key=key, max_retries=0, timeout=5.0)
    try:
        assert client_a.models.list().data
        assert client_b.models.list().data  # B has the key cached as valid now

        revoked_at = time.monotonic()
        reply = pair.a.admin.post(f"/admin/keys/{key_id}/revoke")
        assert reply.status_code == 200 and reply.json()["state"] == "revoked"
        with pytest.raises(openai.AuthenticationError) as on_a:
            client_a.models.list()
        assert on_a.value.code == "key_revoked"

        refused_after = None
        while time.monotonic() - revoked_at < 3.0:  # polling with a deadline; must end within 1 s
            try:
                client_b.models.list()
            except openai.AuthenticationError as error:
                assert error.code == "key_revoked"
                assert error.body is not None and key not in str(error.body)
                refused_after = time.monotonic() - revoked_at
                break
        assert refused_after is not None, "instance B still accepted the revoked key after 3 s"
        assert refused_after < 1.0, f"instance B accepted the revoked key for {refused_after:.3f}s"
    finally:
        client_a.close()
        client_b.close()
