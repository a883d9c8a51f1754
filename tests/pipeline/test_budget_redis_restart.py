"""A settlement whose Redis step fails after its database step: never a Redis counter short of the
database's spend.

The flake of ``tests/faults/test_redis_restart.py`` (Redis killed under load, back empty): a call
reserved on the rebuilt counter (``r:<id>`` in it), settled in the database, and its Redis script
went out on a pooled connection made to the killed server. redis-py hands such a connection out
(its pool does not probe idle sockets while maintenance notifications are on, and ``from_url``
retries nothing), so that one command failed with ``Connection closed by server``. The counter was
there already, so no rebuild would ever add the cost: Redis kept the reservation and missed the
spend. Here the same order is forced, on a Redis of the test's own (killed and restarted) and a
database of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from ferryman.config import BudgetRule
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline import budget as budget_module
from ferryman.pipeline.budget import Budget, window_of
from ferryman.pipeline.budget_redis import RedisBudgetStore, usd
from ferryman.pipeline.budget_stores import Counter, Hold, SQLBudgetStore
from ferryman.pricing import PriceTable
from ferryman.store import Store
from ferryman.store.database import make_engine, migrate
from tests.faults.services import RedisServer, missing_binaries
from tests.pipeline.test_budget import PER_CALL, chat_exchange


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port (the shared one is never killed)."""
    if missing_binaries(redis=True, postgres=False):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'budget.sqlite'}")
    migrate(engine)
    store = Store(engine)
    yield store
    store.close()


@pytest.fixture
def redis_store(tmp_path: Path, own_redis: RedisServer) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'budget.sqlite'}")
    migrate(engine)
    store = Store(engine, own_redis.url, f"budget-restart-{uuid.uuid4().hex[:8]}:")
    yield store
    store.close()


def _counter(scope: str, cap: Decimal) -> Counter:
    window, expires = window_of("day", time.time())
    return Counter(scope, window, "day", cap, expires)


def _hold(counter: Counter, amount: Decimal = PER_CALL) -> Hold:
    now = time.time()
    return Hold(uuid.uuid4().hex, "test:1", amount, [counter], now + 60, now + 900, now)


async def _both(store: Store, stores: RedisBudgetStore, c: Counter) -> tuple[Any, Any, list[str]]:
    """The database's counter, Redis's, and the reservations Redis still holds on it: read with a
    client of the test's own, so that no connection of the store's pool is used up here."""
    looking = aioredis.from_url(store.redis_url or "")
    try:
        found = await looking.hgetall(stores.key(c.scope, c.window))
    finally:
        await looking.aclose()
    in_redis = usd(found.get(b"spent")), usd(found.get(b"reserved"))
    held = sorted(name.decode() for name in found if name.startswith(b"r:"))
    return await stores.ledger.snapshot(c.scope, c.window), in_redis, held


async def test_a_settlement_on_a_connection_the_restart_left_behind_still_lands_in_redis(
    redis_store: Store, own_redis: RedisServer
):
    stores = RedisBudgetStore(redis_store)
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    cap = PER_CALL * 10
    budget = Budget([BudgetRule(scope="key", usd=cap)], stores, PriceTable.default())
    principal = scope.removeprefix("key:")
    inside, release = asyncio.Event(), asyncio.Event()

    async def ok(exchange: Exchange) -> Reply:
        exchange.cost_usd = PER_CALL
        return Reply(200)

    async def in_flight(exchange: Exchange) -> Reply:
        inside.set()
        await release.wait()
        return await ok(exchange)

    assert (await budget.handle(chat_exchange(principal=principal), ok)).status == 200
    call = asyncio.ensure_future(budget.handle(chat_exchange(principal=principal), in_flight))
    await inside.wait()  # reserved on the first server: the pool keeps the connection it used
    await asyncio.to_thread(own_redis.restart)  # SIGKILL, back empty on the same port

    c = _counter(scope, cap)
    assert await stores.rebuild(c)  # another call's reserve found it missing: rebuilt, r:<id> in it
    assert (await _both(redis_store, stores, c))[1] == (PER_CALL, PER_CALL)

    release.set()  # the call ends: settled in the database, then in Redis on the stale connection
    assert (await call).status == 200
    await budget.flush()
    db, in_redis, held = await _both(redis_store, stores, c)
    assert db == (PER_CALL * 2, Decimal(0))
    assert in_redis == db, "Redis under-counts the spend the database settled"
    assert held == []


async def test_a_settlement_whose_redis_step_fails_is_tried_again_until_it_lands(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
):
    """Redis unreachable for a while (its data kept): the database is settled once, Redis as soon
    as it answers again."""
    monkeypatch.setattr(budget_module, "SETTLE_RETRY_S", (0.0,))
    stores = RedisBudgetStore(redis_store)
    failures = 5  # more than the tries made before the reply goes out
    settle = stores.settle

    async def flaky_settle(hold: Hold, spent: Decimal) -> None:
        nonlocal failures
        if failures > 0:
            failures -= 1
            await stores.ledger.settle_reporting(hold, spent)  # the database step lands...
            raise redis.exceptions.ConnectionError("Redis unreachable")  # ...the Redis step does not
        await settle(hold, spent)

    stores.settle = flaky_settle  # type: ignore[method-assign]
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    budget = Budget([BudgetRule(scope="key", usd=PER_CALL * 10)], stores, PriceTable.default())

    async def ok(exchange: Exchange) -> Reply:
        exchange.cost_usd = PER_CALL
        return Reply(200)

    assert (await budget.handle(chat_exchange(principal=scope.removeprefix("key:")), ok)).status == 200
    await budget.flush()  # the background tries
    c = _counter(scope, PER_CALL * 10)
    db, in_redis, held = await _both(redis_store, stores, c)
    assert failures == 0
    assert db == (PER_CALL, Decimal(0))  # settled once in the database, however often it was tried
    assert in_redis == db and held == []
    assert budget._held == 0


async def test_settling_a_hold_again_changes_nothing_in_the_database(sqlite_store: Store):
    ledger = SQLBudgetStore(sqlite_store)
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    c = _counter(scope, PER_CALL * 10)
    hold = _hold(c)
    assert await ledger.reserve(hold) is None
    assert await ledger.settle_reporting(hold, PER_CALL) is True
    assert await ledger.settle_reporting(hold, PER_CALL) is True  # what the first settlement found
    assert await ledger.snapshot(scope, c.window) == (PER_CALL, Decimal(0))
    # The same hold reserved again (a refused reservation is tried again after a reap): it settles anew.
    assert await ledger.reserve(hold) is None
    assert await ledger.snapshot(scope, c.window) == (PER_CALL, PER_CALL)
    assert await ledger.settle_reporting(hold, PER_CALL) is True
    assert await ledger.snapshot(scope, c.window) == (PER_CALL * 2, Decimal(0))
