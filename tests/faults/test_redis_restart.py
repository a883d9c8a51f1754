"""Redis killed under load and restarted EMPTY, in front of two gateways sharing one database: a
key's budget still holds. The settled spend lives in the database; the Redis counter that went
missing is rebuilt from it (settled spend plus the reservations still open), not started at zero.

Two ``ferryman serve`` processes share a PostgreSQL and a Redis of the test's own. A key whose
budget fits 10 worst-case calls takes concurrent load on both instances (every reply is cut at
``max_tokens``, so each costs exactly what it reserved); after a few are served, Redis gets
SIGKILL (calls in flight), answers nothing for a moment (callers get 503 ``store_unavailable``),
and comes back empty on the same port. The load goes on until the key is refused for its budget.

Then: what was served, what the audit rows say it cost and what the database settled are all
within the cap and agree, and the rebuilt Redis counter's ``spent`` is the database's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest
import redis

from ferryman.mock.control_client import MockControl
from ferryman.pipeline.budget_stores import UNIT
from tests.faults.conftest import Fleet
from tests.faults.services import RedisServer
from tests.gateway.processes import GatewayProcess
from tests.gateway.test_multi_instance import STORY, chat_body, key_report, worst_case_usd

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FITS = 10  # worst-case calls the budget holds
WORKERS_PER_INSTANCE = 2
KILL_AFTER_SERVED = 2
UPSTREAM_LATENCY_MS = 150  # calls stay in flight long enough for the kill to land on some
LOAD_DEADLINE_S = 120.0
SETTLE_DEADLINE_S = 20.0


@dataclass
class Outcome:
    instance: int
    status: int
    code: str | None
    cost: Decimal | None
    at: float  # monotonic, when the answer came


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0
    stop: bool = False

    def served(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and o.at >= since]


async def _call(client: openai.AsyncOpenAI, instance: int, load: Load) -> Outcome:
    load.in_flight += 1
    try:
        raw = await client.chat.completions.with_raw_response.create(**chat_body())
        raw.parse()
        cost = raw.headers.get("x-ferryman-cost-usd")
        return Outcome(instance, raw.status_code, None, Decimal(cost) if cost else None, time.monotonic())
    except openai.APIStatusError as error:
        return Outcome(instance, error.status_code, error.code, None, time.monotonic())
    finally:
        load.in_flight -= 1


async def _worker(client: openai.AsyncOpenAI, instance: int, load: Load) -> None:
    """Calls one after another until the key is refused for its budget."""
    while not load.stop:
        outcome = await _call(client, instance, load)
        load.outcomes.append(outcome)
        if (outcome.status, outcome.code) == (429, "budget_exceeded"):
            return
        if outcome.status == 503:
            await asyncio.sleep(0.05)  # Redis is down: try again soon (a client's retry, shortened)
        elif outcome.status != 200:
            return  # unexpected: reported by the test


async def _wait_for(condition: Any, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {deadline_s}s")
        await asyncio.sleep(0.02)  # polling with a deadline


async def _load_through_a_redis_restart(
    gateways: tuple[GatewayProcess, GatewayProcess], key: str, redis_server: RedisServer
) -> tuple[Load, float, float]:
    load = Load()
    clients = [openai.AsyncOpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=30.0) for g in gateways]
    workers = [asyncio.ensure_future(_worker(clients[i % 2], i % 2, load)) for i in range(2 * WORKERS_PER_INSTANCE)]
    try:
        await _wait_for(lambda: len(load.served()) >= KILL_AFTER_SERVED, 30, "the first calls were not served")
        await _wait_for(lambda: load.in_flight > 0, 10, "no call in flight to kill Redis under")
        killed_at = time.monotonic()
        redis_server.kill()
        # Down for a moment: some call must have been answered (refused) while it was.
        await _wait_for(
            lambda: any(o.at > killed_at and o.status == 503 for o in load.outcomes), 15, "no call met the dead Redis"
        )
        await asyncio.to_thread(redis_server.restart)  # the same port, empty
        restarted_at = time.monotonic()
        done, pending = await asyncio.wait(workers, timeout=LOAD_DEADLINE_S)
        assert not pending, f"the load did not reach the budget's end in {LOAD_DEADLINE_S}s"
        for worker in done:
            worker.result()
        return load, killed_at, restarted_at
    finally:
        load.stop = True
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for client in clients:
            await client.close()


def _db_counters(url: str, key_id: str) -> list[tuple[str, Decimal, Decimal]]:
    """``(window, spent, reserved)`` of the key's budget counters in the database."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            'SELECT "window", spent_usd, reserved_usd FROM budget_counters WHERE scope = %s ORDER BY "window"',
            (f"key:{key_id}",),
        ).fetchall()
    return [(str(w), Decimal(s).quantize(UNIT), Decimal(r).quantize(UNIT)) for w, s, r in rows]


def _audit_cost(url: str, key_id: str) -> tuple[int, int, Decimal]:
    """``(rows, rows with a cost, total cost)`` of the key's audit records."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE cost_usd > 0), COALESCE(SUM(cost_usd), 0)"
            " FROM audit WHERE principal = %s",
            (key_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), Decimal(row[2])


def _redis_counter(url: str, name: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        found: dict[str, str] = client.hgetall(name)  # type: ignore[assignment]
        return found
    finally:
        client.close()


def _usd(units: str | None) -> Decimal:
    return (Decimal(int(units or 0)) / 10**10).quantize(UNIT)


def test_a_budget_holds_when_redis_restarts_empty_under_load(
    redis_server: RedisServer, database: str, fleet: Fleet, ferryman_mock: MockControl
):
    ferryman_mock.set_fixtures([{"match": "budget probe", "content": STORY}])
    ferryman_mock.settings(latency_ms=UPSTREAM_LATENCY_MS)
    a = fleet.start(database, redis_server)
    b = fleet.start(database, redis_server)
    each = worst_case_usd()
    cap = each * FITS + each / 2
    key, key_id = a.create_key("redis-restart", budget=f"{cap}/day")

    load, killed_at, restarted_at = asyncio.run(_load_through_a_redis_restart((a, b), key, redis_server))

    unexpected = [
        (o.instance, o.status, o.code)
        for o in load.outcomes
        if (o.status, o.code) not in {(200, None), (429, "budget_exceeded"), (503, "store_unavailable")}
    ]
    assert not unexpected, unexpected
    served = load.served()
    assert served, "nothing was served"
    assert load.served(since=restarted_at), "nothing was served after Redis came back"
    assert {o.instance for o in served} == {0, 1}, "the load did not reach both instances"
    headers_total = sum((o.cost or Decimal(0) for o in served), Decimal(0))
    assert len(served) <= FITS, f"{len(served)} calls served on a budget for {FITS}"
    assert headers_total <= cap, (headers_total, cap)

    # Every settlement has landed (they run after the reply): nothing is held any more.
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while any(reserved for _, _, reserved in _db_counters(database, key_id)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling with a deadline
    counters = _db_counters(database, key_id)
    assert counters, "the key has no budget counter in the database"
    assert all(reserved == 0 for _, _, reserved in counters), counters
    db_spent = sum((spent for _, spent, _ in counters), Decimal(0))

    rows, costed, audit_total = _audit_cost(database, key_id)
    assert rows >= len(served)
    assert costed == len(served), (costed, len(served))
    tolerance = UNIT * max(costed, 1)  # each settled cost rounds to 1e-10 on its own
    assert audit_total <= cap, (audit_total, cap)
    assert db_spent <= cap, (db_spent, cap)
    assert abs(db_spent - audit_total) <= tolerance, (db_spent, audit_total)
    assert abs(db_spent - headers_total) <= tolerance, (db_spent, headers_total)

    # The Redis counter, rebuilt after the restart, is the database's: same spend, nothing held.
    for window, spent, _ in counters:
        counter = _redis_counter(redis_server.url, f"{fleet.prefix}budget:key:{key_id}|{window}")
        assert counter, f"no Redis counter for key:{key_id}|{window} after the restart"
        assert _usd(counter.get("spent")) == spent, (counter.get("spent"), spent)
        assert _usd(counter.get("reserved")) == 0, counter
        assert not [name for name in counter if name.startswith("r:")], counter
    for gateway in (a, b):  # and both instances report it so
        budget = key_report(gateway, key_id)["budget"]
        assert Decimal(budget["spent_usd"]) == db_spent and Decimal(budget["reserved_usd"]) == 0, budget
    assert killed_at < restarted_at
