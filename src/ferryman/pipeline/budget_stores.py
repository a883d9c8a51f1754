"""Where budget counters live: the SQL database (one process, or several sharing PostgreSQL) or
Redis (several processes, one limit).

A counter is one budget scope in one window (``process`` in ``2026-11-25``): ``spent`` is
settled cost, ``reserved`` is held by calls in flight. Reserving is check-and-add in one atomic
step, for all the counters a call touches at once (all or none):

- **SQL** (``budget_counters``): ``UPDATE … SET reserved = reserved + :amt WHERE spent +
  reserved + :amt <= :cap`` per counter, in one transaction, in a fixed order. On PostgreSQL the
  conditional UPDATE re-checks its condition after taking the row lock, so concurrent callers
  (in any number of processes) cannot pass the cap together; SQLite allows one writer at a
  time (and the store runs SQLite work on one thread).
- **Redis**: one Lua script checks every counter and then reserves on all of them. Amounts are
  integers of 1e-10 USD (exact in Lua's doubles up to $900k per counter); a counter expires a
  day after its window ends.

Amounts are rounded to 1e-10 USD: reservations up, settled costs to nearest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from sqlalchemy import Connection, and_, case, insert, select, update

from ferryman.store import Store
from ferryman.store.tables import budget_counters as counters_table

UNIT = Decimal("1e-10")
_UNITS_PER_USD = 10**10
ZERO = Decimal(0)


def reservation(amount: Decimal) -> Decimal:
    return max(ZERO, amount).quantize(UNIT, rounding=ROUND_CEILING)


def settled(amount: Decimal) -> Decimal:
    return max(ZERO, amount).quantize(UNIT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Counter:
    scope: str  # process | key:ID | tag:NAME=VALUE
    window: str  # 2026-11-25 (day) | 2026-11 (month), UTC
    period: str  # day | month
    cap: Decimal
    expires_at: int  # unix seconds: a day after the window ends


@dataclass(frozen=True)
class Refusal:
    counter: Counter
    spent: Decimal
    reserved: Decimal


class BudgetStore(Protocol):
    async def reserve(self, counters: list[Counter], amount: Decimal) -> Refusal | None:
        """Reserve ``amount`` on every counter, or on none (the first that would pass its cap)."""
        ...

    async def settle(self, counters: list[Counter], reserved: Decimal, spent: Decimal) -> None:
        """Release ``reserved`` and add ``spent`` on every counter."""
        ...

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        """``(spent, reserved)`` of one counter (zeros when it does not exist)."""
        ...


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.counter.scope)
        self.refusal = refusal


class SQLBudgetStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dialect = store.engine.dialect.name
        self._local = threading.local()

    async def reserve(self, counters: list[Counter], amount: Decimal) -> Refusal | None:
        return await self.store.run(self._reserve, counters, amount)

    async def settle(self, counters: list[Counter], reserved: Decimal, spent: Decimal) -> None:
        await self.store.run(self._settle, counters, reserved, spent)

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        return await self.store.run(self._snapshot, scope, window)

    # -- blocking work, on the store's threads ----------------------------------------------------

    def _reserve(self, counters: list[Counter], amount: Decimal) -> Refusal | None:
        if self.dialect == "sqlite":
            return self._reserve_sqlite(counters, amount)
        t = counters_table
        now = time.time()
        try:
            with self.store.engine.begin() as conn:
                for c in sorted(counters, key=lambda c: (c.scope, c.window)):  # one lock order: no deadlocks
                    where = and_(
                        t.c.scope == c.scope,
                        t.c.window == c.window,
                        t.c.spent_usd + t.c.reserved_usd + amount <= c.cap,
                    )
                    change = update(t).where(where).values(reserved_usd=t.c.reserved_usd + amount, updated=now)
                    if conn.execute(change).rowcount == 1:
                        continue
                    if not self._exists(conn, c):
                        self._create(conn, c, now)
                        if conn.execute(change).rowcount == 1:
                            continue
                    spent, reserved = self._read(conn, c.scope, c.window)
                    raise _Refused(Refusal(c, spent, reserved))
        except _Refused as refused:
            return refused.refusal
        return None

    # SQLite: the same statements as plain SQL (no statement building on every call: this runs
    # twice per call on the store's one database thread). SQLite keeps the amounts as REAL.

    def _sqlite(self) -> Any:
        """This thread's own driver connection (the store runs SQLite work on one thread)."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            raw = self._local.raw = self.store.engine.raw_connection()
        return raw

    def _reserve_sqlite(self, counters: list[Counter], amount: Decimal) -> Refusal | None:
        now, add = time.time(), float(amount)
        raw = self._sqlite()
        cursor = raw.cursor()
        try:
            for c in sorted(counters, key=lambda c: (c.scope, c.window)):
                params = (add, now, c.scope, c.window, add, float(c.cap))
                if cursor.execute(_SQLITE_RESERVE, params).rowcount == 1:
                    continue
                cursor.execute(_SQLITE_CREATE, (c.scope, c.window, now))
                if cursor.execute(_SQLITE_RESERVE, params).rowcount == 1:
                    continue
                raw.rollback()
                with self.store.engine.connect() as conn:
                    return Refusal(c, *self._read(conn, c.scope, c.window))
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
        return None

    def _settle_sqlite(self, counters: list[Counter], reserved: Decimal, spent: Decimal) -> None:
        now = time.time()
        raw = self._sqlite()
        cursor = raw.cursor()
        try:
            for c in sorted(counters, key=lambda c: (c.scope, c.window)):
                cursor.execute(_SQLITE_SETTLE, (float(reserved), float(spent), now, c.scope, c.window))
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()

    def _settle(self, counters: list[Counter], reserved: Decimal, spent: Decimal) -> None:
        if self.dialect == "sqlite":
            return self._settle_sqlite(counters, reserved, spent)
        t = counters_table
        left = t.c.reserved_usd - reserved
        with self.store.engine.begin() as conn:
            for c in sorted(counters, key=lambda c: (c.scope, c.window)):
                conn.execute(
                    update(t)
                    .where(t.c.scope == c.scope, t.c.window == c.window)
                    .values(
                        reserved_usd=case((left < 0, ZERO), else_=left),
                        spent_usd=t.c.spent_usd + spent,
                        updated=time.time(),
                    )
                )

    def _snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        with self.store.engine.connect() as conn:
            return self._read(conn, scope, window)

    def _exists(self, conn: Connection, c: Counter) -> bool:
        t = counters_table
        return conn.execute(select(t.c.scope).where(t.c.scope == c.scope, t.c.window == c.window)).first() is not None

    def _create(self, conn: Connection, c: Counter, now: float) -> None:
        values = {"scope": c.scope, "window": c.window, "spent_usd": ZERO, "reserved_usd": ZERO, "updated": now}
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(counters_table).values(**values).on_conflict_do_nothing())
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(counters_table).values(**values).on_conflict_do_nothing())
        else:  # pragma: no cover - other databases: a savepoint around a plain insert
            from sqlalchemy.exc import IntegrityError

            try:
                with conn.begin_nested():
                    conn.execute(insert(counters_table).values(**values))
            except IntegrityError:
                pass

    def _read(self, conn: Connection, scope: str, window: str) -> tuple[Decimal, Decimal]:
        t = counters_table
        row = conn.execute(
            select(t.c.spent_usd, t.c.reserved_usd).where(t.c.scope == scope, t.c.window == window)
        ).first()
        if row is None:
            return ZERO, ZERO
        return Decimal(row[0] or 0).quantize(UNIT), Decimal(row[1] or 0).quantize(UNIT)


_SQLITE_RESERVE = (
    'UPDATE budget_counters SET reserved_usd = reserved_usd + ?, updated = ? WHERE scope = ? AND "window" = ?'
    " AND spent_usd + reserved_usd + ? <= ?"
)
_SQLITE_CREATE = (
    'INSERT OR IGNORE INTO budget_counters (scope, "window", spent_usd, reserved_usd, updated) VALUES (?, ?, 0, 0, ?)'
)
_SQLITE_SETTLE = (
    "UPDATE budget_counters SET reserved_usd = MAX(reserved_usd - ?, 0), spent_usd = spent_usd + ?, updated = ?"
    ' WHERE scope = ? AND "window" = ?'
)

# KEYS: the counters. ARGV: amount, then each counter's cap, then each counter's expiry (unix s).
_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if spent + reserved + amount > tonumber(ARGV[1 + i]) then
    return {i, spent, reserved}
  end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[1 + n + i]))
end
return {0, 0, 0}
"""

# KEYS: the counters. ARGV: reserved to release, cost to add.
_SETTLE = """
for i = 1, #KEYS do
  local left = redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1]))
  if left < 0 then redis.call('HSET', KEYS[i], 'reserved', 0) end
  redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2]))
end
return 0
"""


def _units(amount: Decimal) -> int:
    return int(amount * _UNITS_PER_USD)


def _usd(units: Any) -> Decimal:
    return (Decimal(int(units or 0)) / _UNITS_PER_USD).quantize(UNIT)


class RedisBudgetStore:
    def __init__(self, redis: Any, prefix: str = "ferryman:budget:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    def key(self, scope: str, window: str) -> str:
        return f"{self.prefix}{scope}|{window}"

    async def reserve(self, counters: list[Counter], amount: Decimal) -> Refusal | None:
        keys = [self.key(c.scope, c.window) for c in counters]
        caps = [_units(c.cap) for c in counters]
        args = [_units(amount), *caps, *(c.expires_at for c in counters)]
        index, spent, reserved = await self._reserve(keys=keys, args=args)
        if int(index) == 0:
            return None
        return Refusal(counters[int(index) - 1], _usd(spent), _usd(reserved))

    async def settle(self, counters: list[Counter], reserved: Decimal, spent: Decimal) -> None:
        keys = [self.key(c.scope, c.window) for c in counters]
        await self._settle(keys=keys, args=[_units(reserved), _units(spent)])

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        spent, reserved = await self.redis.hmget(self.key(scope, window), ["spent", "reserved"])
        return _usd(spent), _usd(reserved)


def budget_store(store: Store) -> BudgetStore:
    """Redis when the store has it (several processes share one limit), else the database."""
    redis = store.redis()
    return RedisBudgetStore(redis, store.redis_prefix + "budget:") if redis is not None else SQLBudgetStore(store)


__all__ = ["UNIT", "BudgetStore", "Counter", "RedisBudgetStore", "Refusal", "SQLBudgetStore", "budget_store"]
