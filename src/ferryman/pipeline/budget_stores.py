"""Where budget counters live: the SQL database always (the source of truth), and Redis in front
of it when several processes share one limit (a fast counter, rebuilt from the database).

A counter is one budget scope in one window (``process`` in ``2026-11-25``): ``spent`` is
settled cost, ``reserved`` is held by calls in flight. Each call's reservation is a :class:`Hold`
with a row of its own (``budget_reservations``, and one ``budget_holds`` row per counter): the
instance holding it, a lease that instance renews while it lives, and the call's deadline, past
which no renewal reaches. A lease that runs out (its instance was killed) is released by any
instance that finds it (:meth:`SQLBudgetStore.reap`), so a crash blocks a budget for the length of
the lease, not of the budget period.

Reserving is check-and-add in one atomic step, for all the counters a call touches at once (all
or none):

- **SQL** (``budget_counters``): ``UPDATE … SET reserved = reserved + :amt WHERE spent +
  reserved + :amt <= :cap`` per counter, in one transaction with the reservation's rows, in a
  fixed order. On PostgreSQL the conditional UPDATE re-checks its condition after taking the row
  lock, so concurrent callers (in any number of processes) cannot pass the cap together; SQLite
  allows one writer at a time (and the store runs SQLite work on one thread).
- **Redis** (:mod:`ferryman.pipeline.budget_redis`): the same rows are written to the database
  first, without the check; then one Lua script checks every counter and reserves on all.

Settling deletes the reservation's rows and adds the cost in one transaction; a reservation
already released by a reaper (its call outlived its lease) releases nothing twice, but its cost
is still added. A store remembers the holds it settled (the last :data:`SETTLED_KEPT`): settling
one again changes nothing in the database and reports what the first settlement found, so a
settlement whose next step failed (the Redis store's write, after the database's) can be tried
again whole.

Amounts are rounded to 1e-10 USD: reservations up, settled costs to nearest.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from sqlalchemy import Connection, and_, case, delete, insert, select, update

from ferryman.store import Store
from ferryman.store.tables import budget_counters as counters_table
from ferryman.store.tables import budget_holds as holds_table
from ferryman.store.tables import budget_reservations as reservations_table

UNIT = Decimal("1e-10")
ZERO = Decimal(0)
REAP_BATCH = 100  # expired reservations released per pass
SETTLED_KEPT = 8192  # settled holds remembered (past that, a retry settles again: counted twice, never lost)


def reservation(amount: Decimal) -> Decimal:
    return max(ZERO, amount).quantize(UNIT, rounding=ROUND_CEILING)


def settled(amount: Decimal) -> Decimal:
    return max(ZERO, amount).quantize(UNIT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Counter:
    scope: str  # process | key:ID | team:NAME | tag:NAME=VALUE
    window: str  # 2026-11-25 (day) | 2026-11 (month), UTC
    period: str  # day | month
    cap: Decimal
    expires_at: int  # unix seconds: a day after the window ends


@dataclass(frozen=True)
class Hold:
    """One call's reservation of ``amount`` on each of ``counters``."""

    id: str
    instance: str
    amount: Decimal
    counters: list[Counter]
    lease_until: float
    deadline: float
    created: float = 0.0

    def ordered(self) -> list[Counter]:
        return sorted(self.counters, key=lambda c: (c.scope, c.window))  # one lock order: no deadlocks


@dataclass(frozen=True)
class Released:
    """A reservation a reaper released: what it held, and where."""

    id: str
    amount: Decimal
    counters: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Refusal:
    counter: Counter
    spent: Decimal
    reserved: Decimal


class BudgetStore(Protocol):
    async def reserve(self, hold: Hold) -> Refusal | None:
        """Reserve ``hold.amount`` on every counter, or on none (the first that would pass its cap)."""
        ...

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        """Release the hold and add ``spent`` on every counter."""
        ...

    async def renew(self, instance: str, now: float, lease_s: float) -> int:
        """Extend the leases of ``instance``'s reservations (up to each one's deadline)."""
        ...

    async def reap(self, now: float) -> list[Released]:
        """Release reservations whose lease ran out before ``now``."""
        ...

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        """``(spent, reserved)`` of one counter (zeros when it does not exist)."""
        ...


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.counter.scope)
        self.refusal = refusal


class SQLBudgetStore:
    """Counters and reservations in the database; ``check=False`` (for the Redis store) records
    reservations without checking caps, which Redis does."""

    def __init__(self, store: Store, check: bool = True) -> None:
        self.store = store
        self.check = check
        self.dialect = store.engine.dialect.name
        self._local = threading.local()
        self._settled: OrderedDict[str, bool] = OrderedDict()  # hold id: whether it was still held
        self._settled_lock = threading.Lock()

    async def reserve(self, hold: Hold) -> Refusal | None:
        with self._settled_lock:  # reserved (again): its next settlement is a new one
            self._settled.pop(hold.id, None)
        return await self.store.run(self._reserve, hold)

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        await self.settle_reporting(hold, spent)

    async def settle_reporting(self, hold: Hold, spent: Decimal) -> bool:
        """Settle; True when the reservation was still held (not released by a reaper). A hold
        settled already is not settled twice: the answer is the first settlement's."""
        with self._settled_lock:
            known = self._settled.get(hold.id)
        if known is not None:
            return known
        held = await self.store.run(self._settle, hold, spent)
        with self._settled_lock:
            self._settled[hold.id] = held
            while len(self._settled) > SETTLED_KEPT:
                self._settled.popitem(last=False)
        return held

    async def renew(self, instance: str, now: float, lease_s: float) -> int:
        return await self.store.run(self._renew, instance, now, lease_s)

    async def reap(self, now: float) -> list[Released]:
        return await self.store.run(self._reap, now)

    async def snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        return await self.store.run(self._snapshot, scope, window)

    # -- blocking work, on the store's threads ----------------------------------------------------

    def _reserve(self, hold: Hold) -> Refusal | None:
        if self.dialect == "sqlite":
            return self._reserve_sqlite(hold)
        t = counters_table
        amount = hold.amount
        try:
            with self.store.engine.begin() as conn:
                for c in hold.ordered():
                    where = [t.c.scope == c.scope, t.c.window == c.window]
                    if self.check:
                        where.append(t.c.spent_usd + t.c.reserved_usd + amount <= c.cap)
                    more = {"reserved_usd": t.c.reserved_usd + amount, "updated": hold.created}
                    change = update(t).where(and_(*where)).values(**more)
                    if conn.execute(change).rowcount == 1:
                        continue
                    if not self._exists(conn, c):
                        self._create(conn, c, hold.created)
                        if conn.execute(change).rowcount == 1:
                            continue
                    spent, reserved = self._read(conn, c.scope, c.window)
                    raise _Refused(Refusal(c, spent, reserved))
                conn.execute(insert(reservations_table).values(**_reservation_row(hold)))
                conn.execute(insert(holds_table), _hold_rows(hold))
        except _Refused as refused:
            return refused.refusal
        return None

    def _settle(self, hold: Hold, spent: Decimal) -> bool:
        if self.dialect == "sqlite":
            return self._settle_sqlite(hold, spent)
        t = counters_table
        with self.store.engine.begin() as conn:
            held = conn.execute(delete(reservations_table).where(reservations_table.c.id == hold.id)).rowcount == 1
            conn.execute(delete(holds_table).where(holds_table.c.reservation_id == hold.id))
            left = t.c.reserved_usd - (hold.amount if held else ZERO)
            for c in hold.ordered():
                conn.execute(
                    update(t)
                    .where(t.c.scope == c.scope, t.c.window == c.window)
                    .values(
                        reserved_usd=case((left < 0, ZERO), else_=left),
                        spent_usd=t.c.spent_usd + spent,
                        updated=time.time(),
                    )
                )
        return held

    def _renew(self, instance: str, now: float, lease_s: float) -> int:
        r = reservations_table
        until = now + lease_s
        with self.store.engine.begin() as conn:
            change = (
                update(r)
                .where(r.c.instance == instance, r.c.deadline > now)
                .values(lease_until=case((r.c.deadline < until, r.c.deadline), else_=until))
            )
            return int(conn.execute(change).rowcount or 0)

    def _reap(self, now: float) -> list[Released]:
        r, h, t = reservations_table, holds_table, counters_table
        with self.store.engine.connect() as conn:
            expired = conn.execute(
                select(r.c.id, r.c.amount_usd).where(r.c.lease_until < now).limit(REAP_BATCH)
            ).all()
        released = []
        for rid, amount in expired:
            amount = Decimal(amount or 0).quantize(UNIT)
            with self.store.engine.begin() as conn:
                gone = conn.execute(delete(r).where(r.c.id == rid, r.c.lease_until < now)).rowcount == 1
                if not gone:  # renewed, settled or reaped by someone else meanwhile
                    continue
                where = h.c.reservation_id == rid
                counters = [tuple(row) for row in conn.execute(select(h.c.scope, h.c.window).where(where))]
                conn.execute(delete(h).where(h.c.reservation_id == rid))
                left = t.c.reserved_usd - amount
                for scope, window in sorted(counters):
                    conn.execute(
                        update(t)
                        .where(t.c.scope == scope, t.c.window == window)
                        .values(reserved_usd=case((left < 0, ZERO), else_=left))
                    )
            released.append(Released(rid, amount, [(str(s), str(w)) for s, w in counters]))
        return released

    def _snapshot(self, scope: str, window: str) -> tuple[Decimal, Decimal]:
        with self.store.engine.connect() as conn:
            return self._read(conn, scope, window)

    def rebuild(self, c: Counter, apply: Any) -> Any:
        """``apply(spent, [(reservation id, amount), …])`` with the counter's settled spend and open
        reservations, while its row is locked, so no settlement lands between the reading and
        what ``apply`` does with it (the Redis store writes the counter back inside)."""
        t, r, h = counters_table, reservations_table, holds_table
        with self.store.engine.begin() as conn:
            if not self._exists(conn, c):
                self._create(conn, c, 0.0)
            conn.execute(update(t).where(t.c.scope == c.scope, t.c.window == c.window).values(updated=t.c.updated))
            spent, _ = self._read(conn, c.scope, c.window)
            rows = conn.execute(
                select(r.c.id, r.c.amount_usd)
                .select_from(h.join(r, r.c.id == h.c.reservation_id))
                .where(h.c.scope == c.scope, h.c.window == c.window)
            ).all()
            return apply(spent, [(str(rid), Decimal(amount or 0).quantize(UNIT)) for rid, amount in rows])

    # SQLite: the per-call statements as plain SQL (no statement building on every call: this runs
    # twice per call on the store's one database thread). SQLite keeps the amounts as REAL.

    def _sqlite(self) -> Any:
        """This thread's own driver connection (the store runs SQLite work on one thread)."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            raw = self._local.raw = self.store.engine.raw_connection()
        return raw

    def _reserve_sqlite(self, hold: Hold) -> Refusal | None:
        now, add = hold.created, float(hold.amount)
        raw = self._sqlite()
        cursor = raw.cursor()
        statement = _SQLITE_RESERVE if self.check else _SQLITE_RECORD
        try:
            for c in hold.ordered():
                params: tuple[Any, ...] = (add, now, c.scope, c.window)
                if self.check:
                    params += (add, float(c.cap))
                if cursor.execute(statement, params).rowcount == 1:
                    continue
                cursor.execute(_SQLITE_CREATE, (c.scope, c.window, now))
                if cursor.execute(statement, params).rowcount == 1:
                    continue
                raw.rollback()
                with self.store.engine.connect() as conn:
                    return Refusal(c, *self._read(conn, c.scope, c.window))
            row = _reservation_row(hold)
            cursor.execute(_SQLITE_HOLD, (row["id"], row["instance"], add, hold.lease_until, hold.deadline, now))
            cursor.executemany(_SQLITE_HOLD_ON, [(hold.id, c.scope, c.window) for c in hold.counters])
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
        return None

    def _settle_sqlite(self, hold: Hold, spent: Decimal) -> bool:
        raw = self._sqlite()
        cursor = raw.cursor()
        try:
            held = cursor.execute(_SQLITE_DROP, (hold.id,)).rowcount == 1
            cursor.execute(_SQLITE_DROP_ON, (hold.id,))
            release = float(hold.amount) if held else 0.0
            for c in hold.ordered():
                cursor.execute(_SQLITE_SETTLE, (release, float(spent), time.time(), c.scope, c.window))
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
        return held

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


def _reservation_row(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "instance": hold.instance[:256],
        "amount_usd": hold.amount,
        "lease_until": hold.lease_until,
        "deadline": hold.deadline,
        "created": hold.created,
    }


def _hold_rows(hold: Hold) -> list[dict[str, Any]]:
    return [{"reservation_id": hold.id, "scope": c.scope, "window": c.window} for c in hold.counters]


_SQLITE_RESERVE = (
    'UPDATE budget_counters SET reserved_usd = reserved_usd + ?, updated = ? WHERE scope = ? AND "window" = ?'
    " AND spent_usd + reserved_usd + ? <= ?"
)
_SQLITE_RECORD = (
    'UPDATE budget_counters SET reserved_usd = reserved_usd + ?, updated = ? WHERE scope = ? AND "window" = ?'
)
_SQLITE_CREATE = (
    'INSERT OR IGNORE INTO budget_counters (scope, "window", spent_usd, reserved_usd, updated) VALUES (?, ?, 0, 0, ?)'
)
_SQLITE_HOLD = (
    "INSERT INTO budget_reservations (id, instance, amount_usd, lease_until, deadline, created)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SQLITE_HOLD_ON = 'INSERT INTO budget_holds (reservation_id, scope, "window") VALUES (?, ?, ?)'
_SQLITE_DROP = "DELETE FROM budget_reservations WHERE id = ?"
_SQLITE_DROP_ON = "DELETE FROM budget_holds WHERE reservation_id = ?"
_SQLITE_SETTLE = (
    "UPDATE budget_counters SET reserved_usd = MAX(reserved_usd - ?, 0), spent_usd = spent_usd + ?, updated = ?"
    ' WHERE scope = ? AND "window" = ?'
)


def budget_store(store: Store) -> BudgetStore:
    """Redis in front of the database when the store has it (several processes share one limit),
    else the database alone."""
    if store.redis() is None:
        return SQLBudgetStore(store)
    from ferryman.pipeline.budget_redis import RedisBudgetStore

    return RedisBudgetStore(store)


__all__ = [
    "SETTLED_KEPT",
    "UNIT",
    "BudgetStore",
    "Counter",
    "Hold",
    "Refusal",
    "Released",
    "SQLBudgetStore",
    "budget_store",
    "reservation",
    "settled",
]
