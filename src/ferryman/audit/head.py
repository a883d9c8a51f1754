"""The fast append: the chain's head as this process last wrote it, and one short transaction.

A process that appends keeps the head it wrote last (seq, hash, count, signature). The next
append then needs no read: one conditional ``UPDATE`` of the head checkpoint (``WHERE`` it is
still exactly the row this process wrote), one ``INSERT`` of the record (and, for a stream, one
``DELETE`` of its write-ahead row in ``audit_open``, so the two never disagree after a crash),
one ``COMMIT``, through a raw DB-API cursor. When the ``UPDATE`` matches no row (another process appended, or someone
changed the checkpoint) or the ``INSERT`` collides (a record already holds that seq), the
transaction is rolled back, the remembered head is forgotten and :class:`~ferryman.audit.chain.Chain`
takes its full path (lock, read and check the head, append), which remembers the head again.

On SQLite the writer keeps one connection of its own. Appends from an event loop use it without
waiting (``busy_timeout`` 0: a busy database means "use the store's thread instead") and without
WAL autocheckpoints (they would stall the loop on an fsync); :meth:`HeadWriter.checkpoint_wal`
runs one from a thread every :data:`CHECKPOINT_EVERY` such appends. On PostgreSQL every append
takes the transaction-scoped advisory lock first, as the full path does, so a concurrent prune
never sees half an append.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event

from ferryman.store.tables import audit

CHECKPOINT_EVERY = 256  # loop-side appends between two WAL checkpoints run from a thread


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    count: int
    signature: str


class HeadWriter:
    def __init__(self, engine: Engine, lock_id: int) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # held for every append of this process (fast or full)
        self.head: Head | None = None
        dialect = engine.dialect
        self.sqlite = dialect.name == "sqlite"
        self.postgres = dialect.name == "postgresql"
        self.lock_id = lock_id
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        columns = list(audit.columns)
        self._columns: list[tuple[str, Any]] = []  # (name, how its value is bound) for the hashed fields
        for column in columns[:-2]:  # prev_hash and hash (strings) come last
            process: Any = column.type.dialect_impl(dialect).bind_processor(dialect)
            if column.name == "cost_usd" and process is None:
                process = Decimal  # stored as normalised: a fixed-point string
            self._columns.append((column.name, process))
        names = ", ".join(c.name for c in columns)
        self._insert = f"INSERT INTO audit ({names}) VALUES ({', '.join(mark for _ in columns)})"
        self._update = (
            f"UPDATE audit_checkpoints SET ts = {mark}, seq = {mark}, hash = {mark}, count = {mark}, "
            f"signature = {mark} WHERE kind = 'head' AND seq = {mark} AND hash = {mark} AND count = {mark} "
            f"AND signature = {mark}"
        )
        self._close = f"DELETE FROM audit_open WHERE id = {mark}"
        self._conn: Any = None
        self._busy_ms = -1
        self.unchecked = 0  # appends since the last WAL checkpoint, on the writer's own connection
        if self.sqlite:
            event.listen(engine, "engine_disposed", self._disposed)

    @property
    def checkpoint_due(self) -> bool:
        return self.sqlite and self.unchecked >= CHECKPOINT_EVERY

    def write(
        self, before: Head, after: Head, row: dict[str, Any], ts: float, *, wait: bool, close: str | None = None
    ) -> bool:
        """Move the head from ``before`` to ``after`` and insert ``row`` (the normalised record,
        seq included), chained on ``before``, in one transaction; ``close``: the id of the
        write-ahead row (``audit_open``) deleted in it. False when that cannot be done this way
        (the caller falls back); the held :attr:`lock` is the caller's."""
        params = [row[name] if p is None else p(row[name]) for name, p in self._columns]
        params += (before.hash, after.hash)
        moved = (ts, after.seq, after.hash, after.count, after.signature)
        conn = self._connection(wait)
        try:
            cursor = conn.cursor()
            try:
                if self.postgres:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_id,))
                cursor.execute(self._update, (*moved, before.seq, before.hash, before.count, before.signature))
                if cursor.rowcount != 1:  # not the checkpoint this process wrote: read it again
                    conn.rollback()
                    self.head = None
                    return False
                cursor.execute(self._insert, params)
                if close is not None:
                    cursor.execute(self._close, (close,))
                conn.commit()
            finally:
                cursor.close()
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            if not self._is_busy(exc):
                self.head = None  # an insert that collided, a broken connection...: start from the database
                self._drop(conn)
            return False
        finally:
            if not self.sqlite:
                conn.close()  # back to the pool
        self.head = after
        if self.sqlite:
            self.unchecked += 1
            if wait and self.unchecked >= CHECKPOINT_EVERY:  # on a thread already: no need to hand it off
                self.unchecked = 0
                with contextlib.suppress(Exception):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return True

    def checkpoint_wal(self) -> None:
        """A passive WAL checkpoint (from a thread: it may wait on the disk)."""
        self.unchecked = 0
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _connection(self, wait: bool) -> Any:
        if not self.sqlite:
            return self.engine.raw_connection()
        if self._conn is None:
            fairy = self.engine.raw_connection()
            fairy.detach()  # this writer's own: out of the pool, closed with the engine
            conn: Any = fairy.dbapi_connection  # the sqlite3 connection itself (no proxy per call)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn, self._busy_ms = conn, -1
        busy = 10_000 if wait else 0
        if busy != self._busy_ms:
            self._conn.execute(f"PRAGMA busy_timeout={busy}")
            self._busy_ms = busy
        return self._conn

    def _is_busy(self, exc: Exception) -> bool:
        message = str(exc).lower()
        return self.sqlite and ("locked" in message or "busy" in message)

    def _drop(self, conn: Any) -> None:
        if self.sqlite and conn is self._conn:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()

    def _disposed(self, _engine: Engine) -> None:
        with self.lock:
            if self._conn is not None:
                self._drop(self._conn)
