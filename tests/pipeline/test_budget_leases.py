"""Budget spend that outlives its processes: reservations leased to an instance (a dead one's
stop blocking within the lease), and Redis counters rebuilt from the database when Redis loses
them, never doubled by two instances rebuilding at once.

The stores are the real ones (SQLite, PostgreSQL, Redis); "another instance that died" is a
reservation written with that instance's name and a lease that has run out, exactly the rows a
``kill -9``'d process leaves (tests/faults kills real processes).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from ferryman.config import BudgetRule
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.budget import Budget, window_of
from ferryman.pipeline.budget_redis import RedisBudgetStore
from ferryman.pipeline.budget_stores import Counter, Hold, SQLBudgetStore
from ferryman.pricing import PriceTable
from ferryman.store import Store, open_store
from ferryman.store.tables import budget_counters, budget_reservations
from tests.pipeline.test_budget import PER_CALL, chat_exchange


def _today() -> tuple[str, int]:
    return window_of("day", time.time())


def counter(scope: str, cap: Decimal) -> Counter:
    window, expires = _today()
    return Counter(scope, window, "day", cap, expires)


def dead_hold(scope: str, cap: Decimal, amount: Decimal, lease_left_s: float = -1.0) -> Hold:
    """What an instance that was killed leaves: a reservation whose lease ran out (by default)."""
    now = time.time()
    return Hold(uuid.uuid4().hex, "dead-host:1", amount, [counter(scope, cap)], now + lease_left_s, now + 900, now)


async def ok(exchange: Exchange) -> Reply:
    exchange.cost_usd = PER_CALL
    return Reply(200)


@pytest.fixture(params=["sqlite", "postgres", "postgres+redis"])
def store(request: pytest.FixtureRequest, ferryman_settings: Any) -> Any:
    store_settings: dict[str, Any] = {}
    if request.param != "sqlite":
        store_settings["url"] = request.getfixturevalue("postgres_url")
    if request.param.endswith("redis"):
        store_settings["redis_url"] = request.getfixturevalue("redis_url")
    settings = ferryman_settings(**({"store": store_settings} if store_settings else {}))
    opened = open_store(settings)
    yield opened
    opened.close()


def budget_for(store: Store, scope: str, cap: Decimal, **options: Any) -> Budget:
    stores = RedisBudgetStore(store) if store.redis() is not None else SQLBudgetStore(store)
    return Budget([BudgetRule(scope=scope, usd=cap)], stores, PriceTable.default(), **options)


def open_reservations(store: Store, *ids: str, instance: str | None = None) -> int:
    """How many of these reservations (or of this instance's) are open."""
    r = budget_reservations
    query = select(func.count()).select_from(r)
    query = query.where(r.c.id.in_(ids)) if ids else query.where(r.c.instance == instance)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def db_counter(store: Store, scope: str) -> tuple[Decimal, Decimal]:
    t = budget_counters
    with store.engine.connect() as conn:
        row = conn.execute(
            select(t.c.spent_usd, t.c.reserved_usd).where(t.c.scope == scope, t.c.window == _today()[0])
        ).one()
    return Decimal(row[0]).quantize(Decimal("1e-10")), Decimal(row[1]).quantize(Decimal("1e-10"))


async def test_a_dead_instances_reservation_stops_blocking_when_its_lease_runs_out(store: Store):
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    budget = budget_for(store, "key", PER_CALL * 2, lease_s=30)
    stale = dead_hold(scope, PER_CALL * 2, PER_CALL * 2)  # the whole cap, held by a dead instance
    assert await budget.store.reserve(stale) is None
    reply = await budget.handle(chat_exchange(principal=scope.removeprefix("key:")), ok)
    assert reply.status == 200  # the expired lease was released, then the call admitted
    await budget.flush()
    assert open_reservations(store, stale.id) == 0
    spent, reserved = await budget.store.snapshot(scope, _today()[0])
    assert (spent, reserved) == (PER_CALL, Decimal(0))
    assert db_counter(store, scope) == (PER_CALL, Decimal(0))


async def test_a_reservation_within_its_lease_keeps_blocking(store: Store):
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    budget = budget_for(store, "key", PER_CALL * 2, lease_s=30)
    alive = dead_hold(scope, PER_CALL * 2, PER_CALL * 2, lease_left_s=30)
    assert await budget.store.reserve(alive) is None
    reply = await budget.handle(chat_exchange(principal=scope.removeprefix("key:")), ok)
    assert reply.status == 429 and reply.json()["error"]["code"] == "budget_exceeded"
    assert open_reservations(store, alive.id) == 1


async def test_a_call_that_outlived_its_lease_still_settles_its_cost_once(store: Store):
    """A reaper released the reservation (the lease ran out, say the instance was partitioned):
    the late settlement adds the cost and releases nothing a second time."""
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    budget = budget_for(store, "key", PER_CALL * 10)
    hold = dead_hold(scope, PER_CALL * 10, PER_CALL * 3)
    other = dead_hold(scope, PER_CALL * 10, PER_CALL, lease_left_s=30)  # a live call on the same key
    assert await budget.store.reserve(hold) is None
    assert await budget.store.reserve(other) is None
    assert [r.id for r in await budget.store.reap(time.time())] == [hold.id]
    await budget.store.settle(hold, PER_CALL * 2)
    spent, reserved = await budget.store.snapshot(scope, _today()[0])
    assert (spent, reserved) == (PER_CALL * 2, PER_CALL)  # the live call's hold is untouched
    assert db_counter(store, scope) == (PER_CALL * 2, PER_CALL)


async def test_leases_are_renewed_while_the_instance_lives_and_never_past_the_deadline(store: Store):
    scope, me, them = f"key:k{uuid.uuid4().hex[:8]}", f"me:{uuid.uuid4().hex}", f"them:{uuid.uuid4().hex}"
    budget = budget_for(store, "key", PER_CALL * 10, lease_s=30, deadline_s=60, instance=me)
    now = time.time()
    mine = Hold(uuid.uuid4().hex, me, PER_CALL, [counter(scope, PER_CALL * 10)], now + 1, now + 60, now)
    theirs = Hold(uuid.uuid4().hex, them, PER_CALL, [counter(scope, PER_CALL * 10)], now + 1, now + 60, now)
    for hold in (mine, theirs):
        assert await budget.store.reserve(hold) is None
    assert await budget.store.renew(me, now + 40, 30) == 1
    r = budget_reservations
    with store.engine.connect() as conn:
        leases = dict(conn.execute(select(r.c.instance, r.c.lease_until).where(r.c.instance.in_([me, them]))).all())
    assert leases[me] == pytest.approx(now + 60)  # capped at the deadline, not now + 40 + 30
    assert leases[them] == pytest.approx(now + 1)
    reaped = {x.id for x in await budget.store.reap(now + 30)}
    assert theirs.id in reaped and mine.id not in reaped
    await budget.store.settle(mine, Decimal(0))


async def test_the_keeper_renews_leases_of_calls_in_flight(store: Store):
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    instance = f"keeper:{uuid.uuid4().hex}"
    budget = budget_for(store, "key", PER_CALL * 10, lease_s=0.3, deadline_s=60, instance=instance)
    inside, release = asyncio.Event(), asyncio.Event()

    async def slow(exchange: Exchange) -> Reply:
        inside.set()
        await release.wait()
        return await ok(exchange)

    call = asyncio.ensure_future(budget.handle(chat_exchange(principal=scope.removeprefix("key:")), slow))
    await inside.wait()
    r = budget_reservations
    with store.engine.connect() as conn:
        first = conn.execute(select(r.c.lease_until).where(r.c.instance == instance)).scalar_one()
    renewed = False
    async with asyncio.timeout(10):
        while not renewed:  # the keeper runs every lease/3 while the call is held
            await asyncio.sleep(0.05)
            with store.engine.connect() as conn:
                renewed = conn.execute(select(r.c.lease_until).where(r.c.instance == instance)).scalar_one() > first
    release.set()
    assert (await call).status == 200
    await budget.flush()
    assert open_reservations(store, instance=instance) == 0 and (budget._keeper is None or budget._keeper.done())


# -- Redis: a fast counter, rebuilt from the database ----------------------------------------------


@pytest.fixture
def redis_store(postgres_url: str, redis_url: str, ferryman_settings: Any) -> Any:
    opened = open_store(ferryman_settings(store={"url": postgres_url, "redis_url": redis_url}))
    yield opened
    opened.close()


async def _forget_redis(store: Store, scope: str) -> None:
    """Redis restarted empty, as far as this counter goes."""
    stores = RedisBudgetStore(store)
    await store.redis().delete(stores.key(scope, _today()[0]))


async def test_a_counter_lost_by_redis_is_rebuilt_from_the_database_before_any_call(redis_store: Store):
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    cap = PER_CALL * 4 + PER_CALL / 2
    budget = budget_for(redis_store, "key", cap)
    principal = scope.removeprefix("key:")
    for _ in range(2):
        assert (await budget.handle(chat_exchange(principal=principal), ok)).status == 200
    held = dead_hold(scope, cap, PER_CALL, lease_left_s=30)  # a call still in flight elsewhere
    assert await budget.store.reserve(held) is None
    await _forget_redis(redis_store, scope)
    assert await budget.store.snapshot(scope, _today()[0]) == (Decimal(0), Decimal(0))  # Redis forgot
    # Spent 2 + held 1: one more call fits under 4.5 calls' cap, a second does not, as before the loss.
    assert (await budget.handle(chat_exchange(principal=principal), ok)).status == 200
    assert (await budget.handle(chat_exchange(principal=principal), ok)).status == 429
    assert await budget.store.snapshot(scope, _today()[0]) == (PER_CALL * 3, PER_CALL)
    assert db_counter(redis_store, scope) == (PER_CALL * 3, PER_CALL)
    await budget.store.settle(held, PER_CALL)  # the held call ends: counted once, in both
    assert await budget.store.snapshot(scope, _today()[0]) == (PER_CALL * 4, Decimal(0))
    assert db_counter(redis_store, scope) == (PER_CALL * 4, Decimal(0))
    fields = await redis_store.redis().hkeys(budget.store.key(scope, _today()[0]))
    assert sorted(f.decode() for f in fields) == ["reserved", "spent"]  # no reservation left behind


async def test_two_instances_rebuilding_one_counter_at_once_do_not_double_it(redis_store: Store):
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    cap = PER_CALL * 100
    first, second = RedisBudgetStore(redis_store), RedisBudgetStore(redis_store)
    for _ in range(3):
        hold = dead_hold(scope, cap, PER_CALL, lease_left_s=30)
        assert await first.reserve(hold) is None
        await first.settle(hold, PER_CALL)
    open_hold = dead_hold(scope, cap, PER_CALL * 2, lease_left_s=30)
    assert await first.reserve(open_hold) is None
    await _forget_redis(redis_store, scope)
    c = counter(scope, cap)
    written = await asyncio.gather(*(s.rebuild(c) for s in (first, second, first, second)))
    assert sorted(written) == [False, False, False, True]
    assert await first.snapshot(scope, c.window) == (PER_CALL * 3, PER_CALL * 2)


async def test_many_calls_racing_a_redis_loss_never_pass_the_cap(redis_store: Store):
    """Calls in flight while the counter disappears (Redis restarted): every admitted call is in
    the database, and the admitted total stays under the cap."""
    scope = f"key:k{uuid.uuid4().hex[:8]}"
    cap = PER_CALL * 20 + PER_CALL / 2
    budget = budget_for(redis_store, "key", cap)
    principal = scope.removeprefix("key:")
    admitted = 0

    async def one() -> None:
        nonlocal admitted
        if (await budget.handle(chat_exchange(principal=principal), ok)).status == 200:
            admitted += 1

    calls = [asyncio.ensure_future(one()) for _ in range(25)]
    await asyncio.sleep(0)
    await _forget_redis(redis_store, scope)
    calls += [asyncio.ensure_future(one()) for _ in range(25)]
    await _forget_redis(redis_store, scope)
    await asyncio.gather(*calls)
    await budget.flush()
    assert admitted == 20
    assert db_counter(redis_store, scope) == (PER_CALL * 20, Decimal(0))
    assert await budget.store.snapshot(scope, _today()[0]) == (PER_CALL * 20, Decimal(0))

