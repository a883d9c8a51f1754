"""The budget stage: concurrent calls never spend past a cap; reservations settle or release."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from ferryman import pricing
from ferryman.config import BudgetRule
from ferryman.exchange import Exchange, Principal, Reply
from ferryman.pipeline.budget import Budget, check_scope, scope_of, window_of
from ferryman.pipeline.budget_redis import RedisBudgetStore
from ferryman.pipeline.budget_stores import SQLBudgetStore, reservation
from ferryman.pricing import PriceTable
from ferryman.store import open_store
from ferryman.tokens import count_request_prompt_tokens

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Tell me about ferries."}]
# With max_tokens=5 the mock always writes 5 tokens (finish_reason "length"), so a call costs
# exactly its worst case and a cap of 30.5 calls admits exactly 30, in any order.
REQUEST: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5}
PROMPT_TOKENS = count_request_prompt_tokens("/chat/completions", REQUEST)
PER_CALL = reservation(pricing.cost_usd(MODEL, {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5}))  # type: ignore[arg-type]
CAP_30 = PER_CALL * 30 + PER_CALL / 2


def served_since(mock: Any, started: float) -> list[dict[str, Any]]:
    """Requests the mock received since ``started`` (a slow request of an earlier test may land late)."""
    return [entry for entry in mock.requests() if entry["time"] >= started]


def budget_of(client: openai.AsyncOpenAI) -> Budget:
    stage = client._client._transport.pipeline.stage(Budget)  # type: ignore[attr-defined]
    assert isinstance(stage, Budget)
    return stage


def rule(scope: str = "process", usd: Decimal = CAP_30, period: str = "day") -> dict[str, Any]:
    return {"scope": scope, "period": period, "usd": usd}


async def outcome(call: Any) -> str:
    try:
        await call
        return "ok"
    except openai.RateLimitError as error:
        return str(error.code)


def chat_exchange(principal: str = "process", headers: dict[str, str] | None = None, **extra: Any) -> Exchange:
    body = orjson.dumps({**REQUEST, **extra})
    return Exchange.build(
        "POST",
        "/chat/completions",
        {"content-type": "application/json", **(headers or {})},
        body,
        principal=Principal(id=principal),
    )


# -- rules, scopes, windows -----------------------------------------------------------------------


def test_scopes_and_windows():
    tagged = chat_exchange("k1", {"ferryman-tags": "team=a,feature=search"})
    assert scope_of("process", tagged) == "process"
    assert scope_of("key", tagged) == "key:k1"
    assert scope_of("key:k1", tagged) == "key:k1" and scope_of("key:k2", tagged) is None
    assert scope_of("tag:team", tagged) == "tag:team=a"
    assert scope_of("tag:team=a", tagged) == "tag:team=a" and scope_of("tag:team=b", tagged) is None
    assert scope_of("tag:user", tagged) is None
    for bad in ("team", "tag:", "key:", "tag:=a"):
        with pytest.raises(ValueError, match="unknown budget scope"):
            check_scope(bad)
    noon = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    assert window_of("day", noon) == ("2026-11-25", int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()))
    assert window_of("month", noon) == ("2026-11", int(datetime(2026, 12, 2, tzinfo=UTC).timestamp()))
    assert window_of("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp())[0] == "2026-12"


def test_worst_case_uses_exact_prompt_tokens_and_the_cap_or_model_limit():
    budget = Budget([], None, PriceTable.default(), aliases={"fast": ["gpt-6-luna", MODEL]})  # type: ignore[arg-type]
    capped = chat_exchange()
    assert budget.worst_case(capped) == PER_CALL and capped.prompt_tokens == PROMPT_TOKENS
    uncapped = chat_exchange(max_tokens=None, service_tier="priority")
    # no cap: the model's max_output_tokens (16,384 for gpt-4o-mini), at the priority rates
    expected = (PROMPT_TOKENS * Decimal("0.25") + 16_384 * Decimal("1.00")) / 1_000_000
    assert budget.worst_case(uncapped) == reservation(expected)
    alias = chat_exchange(model="fast")  # the dearer of the alias's models
    assert budget.worst_case(alias) == max(
        reservation(pricing.cost_usd(m, {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5}))  # type: ignore[arg-type]
        for m in ("gpt-6-luna", MODEL)
    )


async def test_unknown_price_reserves_nothing_and_warns(ferryman_pipeline, caplog):
    pipeline = ferryman_pipeline(budgets=[rule(usd=Decimal("0.000001"))])
    budget = pipeline.stage(Budget)

    async def upstream(exchange: Exchange) -> Reply:
        return Reply.of_json(200, {"model": "my-model", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    with caplog.at_level(logging.WARNING, logger="ferryman.budget"):
        reply = await budget.handle(chat_exchange(model="my-model"), upstream)
    assert reply.status == 200
    assert "no price for model 'my-model'" in caplog.text
    assert await budget.snapshot("process") == (0, 0)


# -- the proof: 100 concurrent calls, SQLite ----------------------------------------------


async def test_hundred_concurrent_calls_never_pass_the_cap(ferryman_async_client, ferryman_mock):
    started = time.time()
    client = ferryman_async_client(budgets=[rule()], retry={"max_attempts": 1})
    results = await asyncio.gather(*(outcome(client.chat.completions.create(**REQUEST)) for _ in range(100)))
    budget = budget_of(client)
    await budget.flush()
    spent, reserved = await budget.snapshot("process")
    served = served_since(ferryman_mock, started)
    assert results.count("ok") == 30 and results.count("budget_exceeded") == 70
    assert len(served) == 30 and all(entry["status"] == 200 for entry in served)
    assert spent == sum(pricing.cost_usd(MODEL, entry["usage"]) for entry in served)  # type: ignore[misc]
    assert spent <= CAP_30
    assert reserved == 0
    await client.close()


async def test_refusal_is_an_openai_quota_error(ferryman_async_client, ferryman_mock):
    client = ferryman_async_client(budgets=[rule(usd=PER_CALL / 2)])
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(**REQUEST)
    error = caught.value
    assert error.status_code == 429
    assert error.body == {
        "message": error.body["message"],  # type: ignore[index]
        "type": "insufficient_quota",
        "param": None,
        "code": "budget_exceeded",
    }
    assert (
        "budget exceeded for scope 'process'" in error.message and f"up to ${PER_CALL.normalize():f}." in error.message
    )
    assert error.response.headers["x-should-retry"] == "false"
    assert ferryman_mock.requests() == []
    await client.close()


# -- settle and release ---------------------------------------------------------------------------


async def test_errors_release_the_reservation(ferryman_async_client, ferryman_settings, ferryman_mock):
    client = ferryman_async_client(budgets=[rule()], retry={"max_attempts": 1})
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(**REQUEST, extra_headers={"x-ferryman-fault": "status=500"})
    assert await budget_of(client).snapshot("process") == (0, 0)
    assert ferryman_mock.requests()[-1]["status"] == 500
    await client.close()

    dead = {"name": "dead", "base_url": "http://127.0.0.1:9/v1", "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"]}
    client = ferryman_async_client(budgets=[rule()], retry={"max_attempts": 1}, deployments=[dead])
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(**REQUEST)
    assert await budget_of(client).snapshot("process") == (0, 0)
    await client.close()


async def test_cancellation_releases_the_reservation(ferryman_pipeline):
    pipeline = ferryman_pipeline(budgets=[rule()], retry={"max_attempts": 1})
    budget = pipeline.stage(Budget)
    task = asyncio.create_task(pipeline(chat_exchange(headers={"x-ferryman-fault": "delay_ms=1000"})))
    async with asyncio.timeout(5):  # until the reservation is visible
        while (await budget.snapshot("process"))[1] == 0:
            await asyncio.sleep(0.005)
    assert (await budget.snapshot("process"))[1] == PER_CALL
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await budget.flush()
    assert await budget.snapshot("process") == (0, 0)


async def test_a_reservation_landing_after_cancellation_is_undone():
    class SlowStore:
        def __init__(self) -> None:
            self.started, self.gate, self.released = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self.held = Decimal(0)

        async def reserve(self, hold: Any) -> None:
            self.started.set()
            await self.gate.wait()
            self.held += hold.amount

        async def settle(self, hold: Any, spent: Decimal) -> None:
            self.held -= hold.amount
            self.released.set()

    store = SlowStore()
    budget = Budget([BudgetRule(usd=Decimal(1))], store, PriceTable.default())  # type: ignore[arg-type]
    reached = []

    async def upstream(exchange: Exchange) -> Reply:
        reached.append(exchange)
        return Reply(200)

    task = asyncio.create_task(budget.handle(chat_exchange(), upstream))
    await store.started.wait()
    task.cancel()  # while the store is still reserving
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate.set()  # the reservation lands after all...
    async with asyncio.timeout(5):
        await store.released.wait()  # ...and is released again
    assert store.held == 0 and reached == []


async def test_streams_settle_at_their_end_and_when_abandoned(ferryman_async_client, ferryman_mock):
    client = ferryman_async_client(budgets=[rule(usd=Decimal(1))])
    budget = budget_of(client)
    stream = await client.chat.completions.create(**REQUEST, stream=True)
    assert (await budget.snapshot("process"))[1] == PER_CALL  # held while the stream is open
    [_ async for _ in stream]
    await budget.flush()
    spent, reserved = await budget.snapshot("process")
    assert spent == pricing.cost_usd(MODEL, ferryman_mock.requests()[-1]["usage"]) and reserved == 0

    uncapped = {**REQUEST, "max_tokens": None}  # worst case: 16,384 output tokens
    stream = await client.chat.completions.create(**uncapped, stream=True)
    async for _ in stream:
        break  # the caller walks away after one chunk
    await stream.close()
    await budget.flush()
    after, reserved = await budget.snapshot("process")
    assert reserved == 0
    # settled the account stage's estimate (the prompt + one token per event that reached the
    # caller's buffer): more than the prompt alone, far less than the worst case it reserved
    prompt_only = pricing.cost_usd(MODEL, {"prompt_tokens": PROMPT_TOKENS})
    worst = pricing.cost_usd(MODEL, {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 16_384})
    assert prompt_only < after - spent < worst / 100  # type: ignore[operator]
    await client.close()


def test_sync_stream_abandoned_on_the_callers_thread(ferryman_client, ferryman_mock):
    from ferryman import _loop

    client = ferryman_client(budgets=[rule(usd=Decimal(1))])
    budget = client._client._transport.pipeline.stage(Budget)  # type: ignore[attr-defined]

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, _loop.background_loop()).result()

    with client.chat.completions.create(**REQUEST, stream=True) as stream:
        next(iter(stream))
        assert run(budget.snapshot("process"))[1] == PER_CALL
    run(budget.flush())
    spent, reserved = run(budget.snapshot("process"))
    assert reserved == 0 and 0 < spent <= PER_CALL


async def test_close_from_another_thread_settles_on_the_calls_loop(ferryman_pipeline):
    budget = ferryman_pipeline(budgets=[rule(usd=Decimal(1))]).stage(Budget)

    async def events() -> Any:
        yield b'data: {"choices":[]}\n\n'

    async def upstream(exchange: Exchange) -> Reply:
        exchange.cost_usd = Decimal("0.000001")
        return Reply(200, {"content-type": "text/event-stream"}, stream=events())

    reply = await budget.handle(chat_exchange(), upstream)
    assert (await budget.snapshot("process"))[1] == PER_CALL
    closer = threading.Thread(target=lambda: [callback() for callback in reply.on_close])  # as the sync SDK does
    closer.start()
    await asyncio.to_thread(closer.join)
    await budget.flush()
    assert await budget.snapshot("process") == (Decimal("0.000001"), 0)


# -- scopes and windows ---------------------------------------------------------------------------


async def test_per_tag_and_per_key_scopes(ferryman_async_client, ferryman_pipeline, ferryman_mock):
    two_calls = PER_CALL * 2 + PER_CALL / 2
    client = ferryman_async_client(budgets=[rule("tag:team", two_calls), rule("tag:team=b", PER_CALL / 2)])

    def call(tags: str | None) -> Any:
        headers = {"ferryman-tags": tags} if tags else {}
        return outcome(client.chat.completions.create(**REQUEST, extra_headers=headers))

    assert [await call("team=a") for _ in range(3)] == ["ok", "ok", "budget_exceeded"]
    assert await call("team=c") == "ok"  # each team has its own counter
    assert await call("team=b") == "budget_exceeded"  # this team's own, lower cap
    assert await call(None) == "ok"  # no tag: no rule applies
    assert await call("feature=x") == "ok"
    budget = budget_of(client)
    assert (await budget.snapshot("tag:team=a"))[0] == PER_CALL * 2
    assert (await budget.snapshot("tag:team=c"))[0] == PER_CALL
    await client.close()

    pipeline = ferryman_pipeline(budgets=[rule("key", two_calls), rule("key:k2", PER_CALL / 2)])
    statuses = [(await pipeline(chat_exchange(key))).status for key in ("k1", "k1", "k1", "k3", "k2")]
    assert statuses == [200, 200, 429, 200, 429]


async def test_day_and_month_windows(ferryman_pipeline):
    day_cap, month_cap = PER_CALL + PER_CALL / 2, PER_CALL * 2 + PER_CALL / 2
    pipeline = ferryman_pipeline(budgets=[rule(usd=day_cap), rule(usd=month_cap, period="month")])
    budget = pipeline.stage(Budget)
    now = {"t": datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()}
    budget.clock = lambda: now["t"]

    async def call() -> tuple[int, str]:
        reply = await pipeline(chat_exchange())
        return reply.status, reply.body.decode()

    assert (await call())[0] == 200
    status, body = await call()
    assert status == 429 and "(day 2026-11-25)" in body
    now["t"] = datetime(2026, 11, 26, 0, 0, 1, tzinfo=UTC).timestamp()  # a new day
    assert (await call())[0] == 200
    now["t"] = datetime(2026, 11, 27, 9, tzinfo=UTC).timestamp()  # a fresh day, but the month is spent
    status, body = await call()
    assert status == 429 and "(month 2026-11)" in body
    now["t"] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    assert (await call())[0] == 200
    store = budget.store
    assert await store.snapshot("process", "2026-11") == (PER_CALL * 2, 0)
    assert await store.snapshot("process", "2026-11-25") == (PER_CALL, 0)
    assert await store.snapshot("process", "2026-11-26") == (PER_CALL, 0)
    assert await store.snapshot("process", "2026-12") == (PER_CALL, 0)


# -- the proof, shared: two processes, one budget, PostgreSQL (+ Redis) ---------------

WORKER = r"""
import asyncio, json, os, sys
import openai, ferryman
from ferryman.config import Settings
from ferryman.pipeline.budget import Budget

config = json.loads(os.environ["FERRYMAN_BUDGET_WORKER"])

async def one(client):
    try:
        await client.chat.completions.create(**config["request"], extra_headers={"ferryman-tags": config["tags"]})
        return "ok"
    except openai.RateLimitError as error:
        return str(error.code)

async def main():
    client = ferryman.AsyncOpenAI(ferryman={"settings": Settings(**config["settings"])}, api_key="sk-caller")
    await client._client._transport.pipeline.stage(Budget).snapshot("warm-up")  # connect to the store first
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start together
    results = await asyncio.gather(*(one(client) for _ in range(config["calls"])))
    print(json.dumps(results), flush=True)
    await client.close()

asyncio.run(main())
"""


@pytest.mark.postgres
@pytest.mark.parametrize("with_redis", [True, False], ids=["postgres+redis", "postgres"])
async def test_two_processes_share_one_budget(
    with_redis, postgres_url, ferryman_settings, ferryman_mock, tmp_path: Path, request: pytest.FixtureRequest
):
    started, run = time.time(), uuid.uuid4().hex
    store_settings: dict[str, Any] = {"url": postgres_url}
    if with_redis:
        store_settings.update(redis_url=request.getfixturevalue("redis_url"), shared=True)
    settings = ferryman_settings(
        store=store_settings,
        budgets=[rule(f"tag:run={run}")],
        retry={"max_attempts": 1},
        audit={"enabled": False},  # this test is about budgets; keep the shared database to them
    )
    store = open_store(settings)  # migrated once, before the workers start
    counters = RedisBudgetStore(store) if with_redis else SQLBudgetStore(store)
    scope, window = f"tag:run={run}", window_of("day", datetime.now(UTC).timestamp())[0]
    config = {
        "settings": json.loads(settings.model_dump_json()),
        "request": REQUEST,
        "tags": f"run={run}",
        "calls": 50,
    }
    env = {**os.environ, "FERRYMAN_BUDGET_WORKER": json.dumps(config)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        spent, reserved = await counters.snapshot(scope, window)
        flat = results[0] + results[1]
        served = served_since(ferryman_mock, started)
        assert flat.count("ok") == 30 and flat.count("budget_exceeded") == 70
        assert len(served) == 30
        assert spent == sum(pricing.cost_usd(MODEL, entry["usage"]) for entry in served)  # type: ignore[misc]
        assert spent <= CAP_30 and reserved == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        from sqlalchemy import delete

        from ferryman.store.tables import budget_counters

        with store.engine.begin() as conn:
            conn.execute(delete(budget_counters).where(budget_counters.c.scope == scope))
        if with_redis:
            await store.redis().delete(counters.key(scope, window))  # type: ignore[union-attr]
            await store.redis().aclose()
        store.close()
