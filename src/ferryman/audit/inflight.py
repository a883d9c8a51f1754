"""Write-ahead records of streams in flight: a row in ``audit_open`` per stream being delivered.

A stream's chain record is written when the stream ends, because its usage and cost are known
only then. A gateway killed mid-stream (``kill -9``, the OOM killer, a lost host) used to leave
nothing for the streams it was delivering, although their callers had received part of a reply
and the upstream bills what it generated. So before the first byte of a stream reaches its
caller, a row in the mutable side table ``audit_open`` says the stream started: who owns it, the
fields of its chain record known by then (the request body rendered and redacted exactly as the
record will have it) and, updated at most every :data:`FLUSH_S` or :data:`FLUSH_BYTES` per stream
(one batched ``UPDATE`` per instance, never a write per chunk), what it has delivered so far:
bytes, events, output counted, the usage if it came. Each update renews the row's lease
(:data:`LEASE_S`), and rows of streams that send nothing are renewed every third of it. The row
is deleted in the transaction that appends the stream's chain record
(:meth:`ferryman.audit.chain.Chain.append`), so after a crash a stream has its record or its
row, never both and never neither; :mod:`ferryman.audit.recovery` turns the rows of dead
gateways into ``interrupted`` records.

The row costs a stream one small insert before its first byte: on SQLite, done on the event
loop through a connection of its own that never waits (tens of µs; a commit in WAL mode does
not fsync), else, or when the database is busy, on a store thread while the upstream's first
chunk is awaited. Counting the prompt's tokens (a tokenizer pass) is left to the first progress
update, so streams shorter than a second never pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Engine, bindparam, delete, event, insert, update

from ferryman import redact
from ferryman.audit.chain import Chain
from ferryman.audit.record import StreamRecorder
from ferryman.audit.recovery import Owner, recover
from ferryman.pricing import PriceTable
from ferryman.store import Store
from ferryman.store.tables import audit_open

log = logging.getLogger("ferryman.audit")

LEASE_S = 60.0  # a row's owner renews it at least every third of this
FLUSH_S = 1.0  # progress is written at most this often per stream ...
FLUSH_BYTES = 64 * 1024  # ... unless this much more was delivered since
MIN_FLUSH_GAP_S = 0.1  # and never more often than this per instance
_COLUMNS = ("id", "instance", "process", "started", "updated", "lease_until", "record", "bytes", "events", "progress")
_SQLITE_INSERT = f"INSERT INTO audit_open ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"

_UPDATE = (
    update(audit_open)
    .where(audit_open.c.id == bindparam("_id"))
    .values(
        updated=bindparam("updated"),
        lease_until=bindparam("lease_until"),
        bytes=bindparam("bytes"),
        events=bindparam("events"),
        progress=bindparam("progress", type_=audit_open.c.progress.type),
    )
)


class Tracker:
    """One stream's write-ahead row, as its owner knows it."""

    __slots__ = (
        "bytes",
        "count_prompt",
        "dirty",
        "flushed_bytes",
        "id",
        "orphan",
        "prompt_tokens",
        "recorder",
        "renewed",
        "started",
        "written",
    )

    def __init__(self, recorder: StreamRecorder, started: float, count_prompt: Callable[[], int] | None) -> None:
        self.id = uuid.uuid4().hex
        self.recorder = recorder
        self.count_prompt = count_prompt  # the prompt's tokens, when not known yet (on a store thread)
        self.prompt_tokens: int | None = None
        self.started = started  # perf_counter at the call's start: the time to first token's origin
        self.bytes = 0  # forwarded to the caller
        self.flushed_bytes = 0
        self.renewed = 0.0  # wall-clock time of the row's last write
        self.written = False  # the row is in the table
        self.orphan = False  # the record was written without waiting for the row: delete it once in
        self.dirty = False

    def progress(self, now: float, lease_s: float) -> dict[str, Any]:
        recorder = self.recorder
        progress = recorder.progress()
        if recorder.first_at is not None:
            progress["ttft_ms"] = (recorder.first_at - self.started) * 1000
        if self.prompt_tokens is not None:
            progress["prompt_tokens"] = self.prompt_tokens
        self.dirty, self.flushed_bytes, self.renewed = False, self.bytes, now
        return {
            "_id": self.id,
            "updated": now,
            "lease_until": now + lease_s,
            "bytes": self.bytes,
            "events": recorder.events,
            "progress": progress,
        }


class InFlight:
    """This process's write-ahead rows: written before a stream's first byte goes out, their
    progress and leases kept up by one task per process (while it has streams), and closed rows
    of owners that are gone (:func:`recover`)."""

    def __init__(self, store: Store, chain: Chain, owner: Owner, prices: PriceTable, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.chain = chain
        self.owner = owner
        self.prices = prices
        self.lease_s = lease_s
        self.tracked: dict[str, Tracker] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._recovered_at = time.monotonic()
        self._warned = False
        # SQLite: this instance's own connection for rows written from the event loop (never waits).
        self._quick: Any = None
        self._quick_lock = threading.Lock()
        if store.is_sqlite:
            event.listen(store.engine, "engine_disposed", self._disposed)

    def recover(self, startup: bool = False, keep: frozenset[str] | None = None) -> int:
        """Close the rows of owners that are gone, but ``keep`` (this process's streams, taken
        on their loop: by default :attr:`tracked` as it is now). Blocking; see :func:`recover`."""
        keep = frozenset(self.tracked) if keep is None else keep
        self._recovered_at = time.monotonic()
        closed = recover(self.chain, self.owner, self.prices, startup=startup, keep=keep)
        if closed:
            log.warning(
                "audit: %d stream(s) cut when their gateway stopped are recorded as interrupted, with usage "
                "and cost estimated from what they had delivered",
                closed,
            )
        return closed

    def track(self, recorder: StreamRecorder, started: float, count_prompt: Callable[[], int] | None = None) -> Tracker:
        """A stream of this process (on the running loop), before its row is written."""
        tracker = Tracker(recorder, started, count_prompt)
        self.tracked[tracker.id] = tracker  # kept out of this process's own recoveries from now on
        self._keep_running()
        return tracker

    def _row(self, tracker: Tracker, started: float, now: float, record: dict[str, Any]) -> dict[str, Any]:
        owner = self.owner
        return {
            "id": tracker.id,
            "instance": owner.instance,
            "process": owner.process,
            "started": started,
            "updated": now,
            "lease_until": now + self.lease_s,
            "record": record,
            "bytes": 0,
            "events": 0,
            "progress": None,
        }

    def open_now(self, tracker: Tracker, started: float, record: Callable[[], dict[str, Any]]) -> bool:
        """SQLite, on the event loop: write the tracker's row at once if the database is free.
        False when it is not (or this is not SQLite): then :meth:`open`."""
        if not self.store.is_sqlite or not self._quick_lock.acquire(blocking=False):
            return False
        try:
            conn = self._quick_connection()
            now = time.time()
            row = self._row(tracker, started, now, record())
            row["record"] = orjson.dumps(row["record"]).decode()
            try:
                conn.execute(_SQLITE_INSERT, tuple(row[name] for name in _COLUMNS))
                conn.commit()
            except Exception:  # busy (another writer), or broken: the store's thread does it, or says why
                with contextlib.suppress(Exception):
                    conn.rollback()
                return False
        except Exception:
            return False
        finally:
            self._quick_lock.release()
        tracker.written, tracker.renewed = True, now
        return True

    def _quick_connection(self) -> Any:
        if self._quick is None:
            fairy = self.store.engine.raw_connection()
            fairy.detach()  # this instance's own: out of the pool, closed with the engine
            conn: Any = fairy.dbapi_connection
            conn.execute("PRAGMA busy_timeout=0")  # busy: hand the write to the store's thread
            conn.execute("PRAGMA wal_autocheckpoint=0")  # no fsync on the loop (the store's threads do them)
            self._quick = conn
        return self._quick

    def _disposed(self, _engine: Engine) -> None:
        with self._quick_lock:
            if self._quick is not None:
                with contextlib.suppress(Exception):
                    self._quick.close()
                self._quick = None

    async def open(self, tracker: Tracker, started: float, record: Callable[[], dict[str, Any]]) -> bool:
        """Write the tracker's row on a store thread (``record()``, the record's fields known
        now, runs there too)."""
        now = time.time()
        engine = self.store.engine

        def write() -> None:
            row = self._row(tracker, started, now, record())
            with engine.begin() as conn:
                conn.execute(insert(audit_open), row)

        try:
            await self.store.run(write)
            if tracker.orphan:
                await self.store.run(_delete_row, engine, tracker.id)
                return False
        except Exception as exc:  # the stream goes on; its record is still written when it ends
            self.tracked.pop(tracker.id, None)
            log.error("audit: the write-ahead record of a stream was not written: %s", _describe(exc))
            return False
        tracker.written, tracker.renewed = True, now
        return True

    def delivered(self, tracker: Tracker, size: int) -> None:
        """``size`` more bytes are on their way to the caller."""
        tracker.bytes += size
        tracker.dirty = True
        if tracker.bytes - tracker.flushed_bytes >= FLUSH_BYTES:
            self._poke()

    def done(self, tracker: Tracker) -> None:
        """The stream's record is written (its row deleted with it), or could not be."""
        self.tracked.pop(tracker.id, None)  # the progress task ends at its next tick if that was the last

    # -- the progress task -------------------------------------------------------------------

    def _keep_running(self) -> None:
        loop = asyncio.get_running_loop()
        task, running = self._task, self._loop
        if task is not None and not task.done() and running is not None and not running.is_closed():
            return  # running (on this loop, or another: it sees every tracker)
        self._loop, self._wake = loop, asyncio.Event()
        self._task = loop.create_task(self._run())

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                wake.set()
                return
        except RuntimeError:
            pass
        with contextlib.suppress(RuntimeError):  # its loop is closed
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        last = 0.0
        tick = min(FLUSH_S, self.lease_s / 3)
        while self.tracked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), tick)
            wake.clear()
            pause = last + MIN_FLUSH_GAP_S - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            last = loop.time()
            await self._flush()
            if time.monotonic() - self._recovered_at >= self.lease_s:
                try:
                    await self.store.run(self.recover, False, frozenset(self.tracked))
                except Exception as exc:
                    log.warning("audit: closing the write-ahead records of stopped gateways failed: %s", _describe(exc))

    async def _flush(self) -> None:
        """Write the progress of every stream that moved, and renew the leases of all that are due."""
        now = time.time()
        due = now - self.lease_s / 3
        trackers = [t for t in self.tracked.values() if t.written and (t.dirty or t.renewed <= due)]
        if not trackers:
            return
        rows = [t.progress(now, self.lease_s) for t in trackers]
        counting = [
            (row, t) for row, t in zip(rows, trackers, strict=True) if t.prompt_tokens is None and t.count_prompt
        ]
        try:
            await self.store.run(_write_progress, self.store.engine, rows, counting)
        except Exception as exc:  # tried again in a second; the leases run out if this goes on
            for tracker in trackers:
                tracker.dirty, tracker.renewed = True, 0.0
            if not self._warned:
                self._warned = True
                log.warning("audit: the progress of streams in flight was not written: %s", _describe(exc))
            return
        self._warned = False


def _write_progress(engine: Engine, rows: list[dict[str, Any]], counting: list[tuple[dict[str, Any], Tracker]]) -> None:
    """On a store thread: count the prompts not counted yet (once per stream), write the rows."""
    for row, tracker in counting:
        if tracker.count_prompt is not None:
            try:
                tracker.prompt_tokens = tracker.count_prompt()
            except Exception:  # an estimate's input: the body as recorded is counted instead, later
                tracker.count_prompt = None
                continue
            row["progress"]["prompt_tokens"] = tracker.prompt_tokens
    with engine.begin() as conn:
        conn.execute(_UPDATE, rows)


def _delete_row(engine: Engine, open_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(audit_open).where(audit_open.c.id == open_id))


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact.secrets(f"{type(exc).__name__}: {text}")[:300]
