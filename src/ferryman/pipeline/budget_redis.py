"""Budget counters in Redis, in front of the database: fast check-and-add across processes, and
nothing lost when Redis is.

The database stays the source of truth (:class:`~ferryman.pipeline.budget_stores.SQLBudgetStore`
with ``check=False``): a reservation admitted by Redis is recorded there, then confirmed in Redis
once more (the same idempotent script: a counter rebuilt in between had not seen it, and takes it
now, checked against the cap); every settlement lands in the database first.

A Redis counter is a hash: ``spent`` and ``reserved`` (integers of 1e-10 USD, exact in Lua's
doubles up to $900k per counter) and one field ``r:<id>`` per reservation it holds, so releasing
is idempotent: a settlement releases only what the counter still holds under its id.

A counter that is missing (Redis restarted empty, or evicted it) is never reserved against: the
reserve script reports it, and the counter is rebuilt from the database (settled spend, plus
every open reservation on it) while the database row is locked, then written only if still
missing, so two instances rebuilding at once do not double it and no settlement falls between
the reading and the writing. Settling on a rebuilt counter then finds its ``r:<id>`` (its
reservation was open when it was rebuilt) or not (its settlement was in the database already,
and so in the rebuilt ``spent``), and is counted exactly once either way.

Redis down: reserving fails (the reservation rows just written are removed) and the caller gets
a 503 ``store_unavailable``; the database keeps the truth for when it is back.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from ferryman.pipeline.budget_stores import (
    UNIT,
    ZERO,
    Counter,
    Hold,
    Refusal,
    Released,
    SQLBudgetStore,
)
from ferryman.store import Store
from ferryman.store.database import redis_client

log = logging.getLogger("ferryman.budget")

_UNITS_PER_USD = 10**10
REBUILD_TRIES = 3

# KEYS: the counters. ARGV: reservation field, amount, each counter's cap, each counter's expiry.
# Returns {0} when reserved, {i, spent, reserved} when counter i would pass its cap (reserved
# not counting this reservation), {-1, i, …} when counters i, … are missing.
_RESERVE = """
local id, amount, n = ARGV[1], tonumber(ARGV[2]), #KEYS
local missing = {-1}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then table.insert(missing, i) end
end
if #missing > 1 then return missing end
for i = 1, n do
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if redis.call('HEXISTS', KEYS[i], id) == 1 then reserved = reserved - amount end
  if spent + reserved + amount > tonumber(ARGV[2 + i]) then
    return {i, spent, reserved}
  end
end
for i = 1, n do
  if redis.call('HSETNX', KEYS[i], id, amount) == 1 then
    redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  end
  redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[2 + n + i]))
end
return {0}
"""

# KEYS: the counters. ARGV: reservation field, cost to add, "1" when the database no longer held
# the reservation (a reaper released it: add the cost, there is nothing to release).
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local held = redis.call('HGET', KEYS[i], ARGV[1])
    if held then
      redis.call('HDEL', KEYS[i], ARGV[1])
      local left = redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(held))
      if left < 0 then redis.call('HSET', KEYS[i], 'reserved', 0) end
      redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2]))
    elseif ARGV[3] == '1' then
      redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2]))
    end
  end
end
return 0
"""

# KEYS: one counter. ARGV: settled spend, expiry, then (reservation field, amount) pairs.
_REBUILD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local reserved = 0
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  reserved = reserved + tonumber(ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', reserved)
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def units(amount: Decimal) -> int:
    return int(amount * _UNITS_PER_USD)


def usd(value: Any) -> Decimal:
    return (Decimal(int(value or 0)) / _UNITS_PER_USD).quantize(UNIT)


def field(hold_id: str) -> str:
    return f"r:{hold_id}"


class RedisBudgetStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.prefix = store.redis_prefix + "budget:"
        self.ledger = SQLBudgetStore(store, check=False)
        self.redis = store.redis()
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._sync: Any = None  # a blocking client, for rebuilding inside a database transaction

    def key(self, scope: str, window: str) -> str:
        return f"{self.prefix}{scope}|{window}"

    async def reserve(self, hold: Hold) -> Refusal | None:
        refusal = await self._reserve_in_redis(hold)
        if refusal is not None:
            return refusal
        try:
            await self.ledger.reserve(hold)  # the truth: from here on a rebuild counts this hold
            # Again, now that the database has it: a counter rebuilt between the two steps (Redis
            # restarted) did not see this hold, and gets it here, checked against the cap again.
            refusal = await self._reserve_in_redis(hold)
        except BaseException:
            await self._forget(hold)
            raise
        if refusal is not None:
            await self._forget(hold)
        return refusal

    async def _reserve_in_redis(self, hold: Hold) -> Refusal | None:
        keys = [self.key(c.scope, c.window) for c in hold.counters]
        args = [field(hold.id), units(hold.amount), *(units(c.cap) for c in hold.counters)]
        args += [c.expires_at for c in hold.counters]
        for _ in range(REBUILD_TRIES):
            answer = [int(x) for x in await self._reserve(keys=keys, args=args)]
            if answer[0] == 0:
                return None
            if answer[0] > 0:
                return Refusal(hold.counters[answer[0] - 1], usd(answer[1]), usd(answer[2]))
            for i in answer[1:]:
                await self.rebuild(hold.counters[i - 1])
        raise RuntimeError(f"budget counters {keys} kept disappearing from Redis while being rebuilt")

    async def _forget(self, hold: Hold) -> None:
        """Undo a reservation that did not happen (refused, or Redis failed)."""
        try:
            await self.ledger.settle(hold, ZERO)
        finally:
            keys = [self.key(c.scope, c.window) for c in hold.counters]
            try:
                await self._settle(keys=keys, args=[field(hold.id), 0, "0"])
            except Exception:  # Redis is down: the hold is gone from the database, the rebuild skips it
                log.debug("budget: could not release %s in Redis", hold.id, exc_info=True)

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        held = await self.ledger.settle_reporting(hold, spent)
        keys = [self.key(c.scope, c.window) for c in hold.counters]
        await self._settle(keys=keys, args=[field(hold.id), units(spent), "0" if held else "1"])

    async def renew(self, instance: str, now: float, lease_s: float) -> int:
        return await self.ledger.renew(instance, now, lease_s)

    async def reap(self, now: float) -> list[Released]:
        released = await self.ledger.reap(now)
        for gone in released:
            keys = [self.key(scope, window) for scope, window in gone.counters]
            if keys:
                await self._settle(keys=keys, args=[field(gone.id), 0, "0"])
        return released

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        spent, reserved = await self.redis.hmget(self.key(scope, window), ["spent", "reserved"])
        return usd(spent), usd(reserved)

    async def rebuild(self, counter: Counter) -> bool:
        """Write a missing counter back from the database; False when it was there already."""
        return bool(await self.store.run(self._rebuild, counter))

    def _rebuild(self, counter: Counter) -> bool:
        key = self.key(counter.scope, counter.window)

        def write_back(spent: Decimal, holds: list[tuple[str, Decimal]]) -> bool:
            args: list[Any] = [units(spent), counter.expires_at]
            for hold_id, amount in holds:
                args += [field(hold_id), units(amount)]
            written = bool(self._blocking().eval(_REBUILD, 1, key, *args))
            if written and (spent or holds):  # not a counter's first use: Redis lost it
                log.warning(
                    "budget: counter %s|%s was missing from Redis; rebuilt from the database "
                    "($%s spent, %d reservation(s) open)",
                    counter.scope,
                    counter.window,
                    spent.normalize(),
                    len(holds),
                )
            return written

        return bool(self.ledger.rebuild(counter, write_back))

    def _blocking(self) -> Any:
        if self._sync is None:
            self._sync = redis_client(self.store.redis_url or "", sync=True)
        return self._sync


__all__ = ["RedisBudgetStore"]
