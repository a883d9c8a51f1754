"""The audit chain: append, verify, prune and export hash-chained records (reading stored
values back for verify: :mod:`ferryman.audit.stored`).

Each record's ``hash`` is ``sha256(prev_hash || canonical JSON of its fields, seq included)``;
the first record's ``prev_hash`` is 64 zeros. A signed ``head`` checkpoint (HMAC-SHA256 over kind,
seq, hash and count, see :mod:`ferryman.audit.keys`) is updated in the same transaction as every
append, so removing records from the end, or rewriting the whole chain, shows. ``prune`` deletes
the oldest records and signs a ``prune`` checkpoint holding the last deleted record's seq and
hash, from which the rest still verifies.

Appends serialise across processes: on PostgreSQL with a transaction-scoped advisory lock, on
SQLite by taking the write lock first (a no-op UPDATE) before reading the head.

Fields added after the chain's first release (:data:`ADDED`, migration 0008: what the report's
advice needs, see :mod:`ferryman.pipeline.audit_advice`) are hashed only when they hold a value.
A record written before them reads them back as NULL, so its canonical bytes, and its hash, are
exactly what they were when it was written: old chains keep verifying, with no re-hashing and no
version field. A new record's values are covered like any other field (``via_batch`` False is a
value, and hashed). A field added later must follow the same rule.

A stream's record may close its write-ahead row (``audit_open``, see
:mod:`ferryman.audit.inflight`) in the transaction that appends it (``close``), and a
recovered stream's ``interrupted`` record is appended only together with the deletion of the
row it was made from, as it was read (:meth:`Chain.append_claimed`): however many instances
recover at once, each row becomes exactly one record. The chain itself stays append-only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, delete, func, inspect, select, text

from ferryman.audit.head import Head, HeadWriter
from ferryman.audit.keys import CheckpointKey
from ferryman.audit.stored import HEX, RAW_RECORDS, brief, column_processors, parse_record
from ferryman.store.tables import audit, audit_checkpoints, audit_open

ZERO_HASH = "0" * 64
# Hashed only when not None (see above): a record from before them hashes as it always did.
ADDED = (
    "output_cap",
    "service_tier",
    "via_batch",
    "request_fp",
    "deterministic",
    "prefix_fp",
    "prefix_tokens",
    "ratelimit",
    "source",
)
_ADDED = frozenset(ADDED)
# The fields a record's hash covers, in the order the table lists them.
FIELDS = (
    "seq",
    "ts",
    "request_id",
    "principal",
    "upstream",
    "model",
    "endpoint",
    "status",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cache",
    "tags",
    "error",
    "request_body",
    "response_body",
    *ADDED,
)
_FLOATS = {"ts": 6, "latency_ms": 3, "ttft_ms": 3}
_USD_STEP = Decimal("1E-10")  # the column's scale: Numeric(20, 10)
# pg_advisory_xact_lock key: the first 8 bytes of sha256("ferryman.audit"), as a signed bigint.
LOCK_ID = int.from_bytes(hashlib.sha256(b"ferryman.audit").digest()[:8], "big", signed=True)
# Statements built once (parameters passed at execution keep SQLAlchemy's compiled cache hot).
_INSERT = audit.insert()
_PUT_CHECKPOINT = audit_checkpoints.update().where(audit_checkpoints.c.kind == bindparam("_kind"))
_ADD_CHECKPOINT = audit_checkpoints.insert()
_SQLITE_LOCK = text("UPDATE audit_checkpoints SET kind = kind WHERE kind = 'head'")
_CLOSE_OPEN = audit_open.delete().where(audit_open.c.id == bindparam("_open"))


class _ClaimLost(Exception):
    """The write-ahead row to close was gone or changed: someone else closed (or renewed) it."""


def normalise(record: Mapping[Any, Any]) -> dict[str, Any]:
    """The hashed fields as stored and read back: rounded floats, cost as a fixed-point string."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = record.get(name)
        if name in _FLOATS and value is not None:
            value = round(float(value), _FLOATS[name])
        elif name == "cost_usd":
            value = format(Decimal(str(value or 0)).quantize(_USD_STEP), "f")
        elif name == "tags":
            value = dict(value or {})
        elif name == "ratelimit" and value is not None:
            value = dict(value)
        out[name] = value
    return out


def _hashed(row: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised row as hashed: the :data:`ADDED` fields left out where they are None."""
    return {name: value for name, value in row.items() if value is not None or name not in _ADDED}


def canonical(record: Mapping[Any, Any]) -> bytes:
    return orjson.dumps(_hashed(normalise(record)), option=orjson.OPT_SORT_KEYS)


def record_hash(prev_hash: str, record: Mapping[Any, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(record)).hexdigest()


def _row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """:func:`record_hash` of a row :func:`normalise` made already (normalising twice changes nothing)."""
    data = orjson.dumps(_hashed(row), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode("ascii") + data).hexdigest()


def _checkpoint_problem(cp: Checkpoint) -> str | None:
    for name in ("seq", "count"):
        value = getattr(cp, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} is not a whole number ({brief(value)})"
    if not isinstance(cp.hash, str) or not HEX.fullmatch(cp.hash):
        return f"hash is not 64 lowercase hex digits ({brief(cp.hash)})"
    if not isinstance(cp.signature, str):
        return f"signature is not text ({brief(cp.signature)})"
    return None


@dataclass(frozen=True)
class Checkpoint:
    kind: str  # head | prune
    seq: int
    hash: str
    count: int
    signature: str
    ts: float = 0.0


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the first record concerned, when there is one
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.message}" if self.seq is not None else self.message


@dataclass
class Report:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: Checkpoint | None = None
    prune: Checkpoint | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Appended:
    seq: int
    hash: str
    anchored: bool  # False when the head checkpoint was missing or forged and was left as found


@dataclass(frozen=True)
class Pruned:
    deleted: int
    seq: int | None  # the last deleted record
    report: Report  # the verification done first; nothing is deleted from a broken chain


MAX_PROBLEMS = 100


class Chain:
    """The audit chain in one database, signed with one key (all methods block: run them off the loop)."""

    def __init__(self, engine: Engine, key: CheckpointKey) -> None:
        self.engine = engine
        self.key = key
        self.writer = HeadWriter(engine, LOCK_ID)

    # -- append ----------------------------------------------------------------------------

    def append(self, record: Mapping[Any, Any], close: str | None = None) -> Appended:
        """Add one record (its fields as in :data:`FIELDS`, no seq) at the head of the chain;
        ``close``: the id of a write-ahead row (``audit_open``) to delete in the same transaction."""
        appended = self._append_known(record, wait=True, close=close)
        if appended is not None:
            return appended
        with self.writer.lock:
            return self._append_read(record, close=close)

    def try_append(self, record: Mapping[Any, Any], close: str | None = None) -> Appended | None:
        """:meth:`append` for an event loop's thread: only when it needs no wait and no read (SQLite,
        this process wrote the head last, the database is not busy); None otherwise, and then the
        caller runs :meth:`append` on a thread."""
        if not self.writer.sqlite:
            return None
        return self._append_known(record, wait=False, close=close)

    def append_claimed(self, record: Mapping[Any, Any], open_id: str, lease_until: float) -> Appended | None:
        """Append ``record`` in the transaction that deletes the write-ahead row ``open_id``, only
        if that row is still as it was read (its lease ``lease_until``): None, and nothing
        appended, when another instance closed it first or its owner renewed it meanwhile."""
        with self.writer.lock:
            try:
                return self._append_read(record, claim=(open_id, lease_until))
            except _ClaimLost:
                return None

    def checkpoint_wal(self) -> None:
        """Fold SQLite's write-ahead log into the database (from a thread, every so many
        :meth:`try_append`; see :attr:`wal_checkpoint_due`)."""
        self.writer.checkpoint_wal()

    @property
    def wal_checkpoint_due(self) -> bool:
        return self.writer.checkpoint_due

    def _append_known(self, record: Mapping[Any, Any], *, wait: bool, close: str | None) -> Appended | None:
        """The fast path (see :mod:`ferryman.audit.head`): from the head this process wrote last."""
        writer = self.writer
        if writer.head is None or not writer.lock.acquire(blocking=wait):
            return None
        try:
            head = writer.head
            if head is None:
                return None
            row = normalise({**record, "seq": head.seq + 1})
            digest = _row_hash(head.hash, row)
            seq, count = row["seq"], head.count + 1
            after = Head(seq, digest, count, self.key.sign("head", seq, digest, count))
            if not writer.write(head, after, row, time.time(), wait=wait, close=close):
                return None
            return Appended(seq, digest, True)
        finally:
            writer.lock.release()

    def _append_read(
        self, record: Mapping[Any, Any], close: str | None = None, claim: tuple[str, float] | None = None
    ) -> Appended:
        """The full path: lock, read and check the head, append; remember the head when anchored."""
        self.writer.head = None
        after: Head | None = None
        with self.engine.begin() as conn:
            _lock(conn)
            if claim is not None:
                t = audit_open
                gone = conn.execute(delete(t).where(t.c.id == claim[0], t.c.lease_until == claim[1])).rowcount
                if gone != 1:
                    raise _ClaimLost
            elif close is not None:
                conn.execute(_CLOSE_OPEN, {"_open": close})
            found = _checkpoints(conn)
            heads, prune = found.get("head", []), found.get("prune", [])
            last = conn.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
            head = heads[0] if len(heads) == 1 else None
            anchored = head is not None and self._signed(head) and (last is None or last.seq <= head.seq)
            if anchored and head is not None:
                prev_seq, prev_hash, count = head.seq, head.hash, head.count
            elif last is not None:  # never re-sign over a missing or forged head: chain on, leave it be
                prev_seq, prev_hash, count = last.seq, last.hash, 0
            else:
                anchored = not heads and not prune  # the very first record
                prev_seq, prev_hash, count = (prune[0].seq, prune[0].hash, 0) if prune else (0, ZERO_HASH, 0)
            row = normalise({**record, "seq": prev_seq + 1})
            digest = _row_hash(prev_hash, row)
            stored = {**row, "cost_usd": Decimal(row["cost_usd"]), "prev_hash": prev_hash, "hash": digest}
            conn.execute(_INSERT, stored)
            if anchored:
                signature = self._put_checkpoint(conn, "head", row["seq"], digest, count + 1)
                after = Head(row["seq"], digest, count + 1, signature)
        # Remembered once committed: the next append in this process can skip the reads.
        self.writer.head = after
        return Appended(row["seq"], digest, anchored)

    # -- verify ----------------------------------------------------------------------------

    def verify(self) -> Report:
        """Check every record and both checkpoints, in one consistent snapshot."""
        with snapshot(self.engine) as conn:
            return self._verify(conn)

    def _verify(self, conn: Connection) -> Report:
        report = Report()
        problems = report.problems
        columns = {c["name"] for c in inspect(conn).get_columns("audit")}
        missing = [c.name for c in audit.columns if c.name not in columns]
        if missing:
            problems.append(
                Problem(None, f"the audit table has no column {', '.join(missing)}: its schema was changed")
            )
            return report
        found = _checkpoints(conn)
        unusable: set[str] = set()  # checkpoints too malformed to check the chain against
        for kind in ("head", "prune"):
            rows = found.get(kind, [])
            if len(rows) > 1:
                problems.append(Problem(None, f"{len(rows)} {kind} checkpoints where there must be one (forged)"))
            for cp in rows:
                malformed = _checkpoint_problem(cp)
                if malformed is not None:
                    problems.append(Problem(None, f"the {kind} checkpoint is malformed: {malformed}"))
                    unusable.add(kind)
                elif not self._signed(cp):
                    problems.append(
                        Problem(
                            None,
                            f"the {kind} checkpoint (seq {cp.seq}) has a bad signature: forged, or "
                            "signed with another key",
                        )
                    )
            if rows:
                setattr(report, kind, rows[0])
        head, prune = report.head, report.prune
        # None: not known (after a malformed record or checkpoint), so not checked
        expected_seq: int | None = (prune.seq + 1 if prune else 1) if "prune" not in unusable else None
        expected_prev: str | None = (prune.hash if prune else ZERO_HASH) if "prune" not in unusable else None
        last_seq: int | None = None  # the seq of the last record read whose seq could be read
        result = conn.execute(RAW_RECORDS.execution_options(yield_per=500))
        processors = column_processors(conn, result.cursor.description if result.cursor is not None else None)
        for raw in result:
            row, wrong = parse_record(raw, processors)
            seq = row["seq"]
            report.records += 1
            if seq is None:
                after = f"after seq {last_seq}" if last_seq is not None else "first"
                problems.append(Problem(None, f"malformed record (the one {after}): {'; '.join(wrong)}"))
            else:
                report.first_seq = seq if report.first_seq is None else report.first_seq
                report.last_seq = last_seq = seq
                if wrong:
                    problems.append(Problem(seq, f"malformed record: {'; '.join(wrong)}"))
                if expected_seq is not None and seq != expected_seq:
                    if seq < expected_seq:
                        what = f"at or before the prune checkpoint (seq {prune.seq})" if prune else "out of order"
                        problems.append(Problem(seq, f"record is {what}: inserted"))
                    else:
                        gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                        problems.append(Problem(expected_seq, f"record(s) {gap} missing: removed"))
            if expected_prev is not None and row["prev_hash"] is not None and row["prev_hash"] != expected_prev:
                problems.append(
                    Problem(
                        seq,
                        "prev_hash does not match the previous record's hash: records removed, inserted or reordered",
                    )
                )
            if not wrong and record_hash(row["prev_hash"], row) != row["hash"]:
                problems.append(Problem(seq, "contents do not match the record's hash: edited"))
            expected_seq = seq + 1 if seq is not None else None
            expected_prev = row["hash"]
            if len(problems) >= MAX_PROBLEMS:
                return report
        if head is None:
            if report.records or prune is not None:
                problems.append(Problem(None, "the head checkpoint is missing: removed"))
            return report
        if "head" in unusable or "prune" in unusable:
            return report  # reported above; nothing sound to compare the end of the log with
        if last_seq is None:
            last_seq = prune.seq if prune else 0
        if head.seq > last_seq:
            problems.append(
                Problem(
                    last_seq + 1,
                    f"truncated: the head checkpoint is at seq {head.seq}, the log ends at "
                    f"{last_seq if report.records else 'no record'}",
                )
            )
        elif head.seq < last_seq:
            problems.append(Problem(head.seq + 1, f"records after the head checkpoint (seq {head.seq}): inserted"))
        elif expected_prev is not None and head.hash != expected_prev:
            problems.append(Problem(head.seq, "the head checkpoint's hash does not match the last record"))
        expected_count = head.count - (prune.count if prune else 0)
        if expected_count != report.records:
            problems.append(
                Problem(None, f"the checkpoints account for {expected_count} records, the log holds {report.records}")
            )
        return report

    # -- prune -----------------------------------------------------------------------------

    def prune(self, cutoff: float) -> Pruned:
        """Delete the records older than ``cutoff`` (unix seconds) at the start of the chain.

        Records are cut as a prefix (by seq): the cut stops at the first record at or after the
        cutoff. The chain is verified first, in the same transaction; a broken one is left as is.
        """
        with self.engine.begin() as conn:
            _lock(conn)
            report = self._verify(conn)
            if not report.ok:
                return Pruned(0, None, report)
            newer = conn.execute(select(func.min(audit.c.seq)).where(audit.c.ts >= cutoff)).scalar()
            cut = newer - 1 if newer is not None else report.last_seq
            if cut is None or report.first_seq is None or cut < report.first_seq:
                return Pruned(0, None, report)
            cut_hash = conn.execute(select(audit.c.hash).where(audit.c.seq == cut)).scalar_one()
            deleted = conn.execute(audit.delete().where(audit.c.seq <= cut)).rowcount
            previous = report.prune.count if report.prune else 0
            self._put_checkpoint(conn, "prune", cut, cut_hash, previous + deleted)
            return Pruned(deleted, cut, report)

    # -- export ----------------------------------------------------------------------------

    def export(self, out: IO[str], since: float | None = None, until: float | None = None) -> int:
        return export(self.engine, out, since, until)

    # -- helpers ---------------------------------------------------------------------------

    def _signed(self, cp: Checkpoint) -> bool:
        return self.key.check(cp.kind, cp.seq, cp.hash, cp.count, cp.signature)

    def _put_checkpoint(self, conn: Connection, kind: str, seq: int, hash_: str, count: int) -> str:
        signature = self.key.sign(kind, seq, hash_, count)
        values = {"ts": time.time(), "seq": seq, "hash": hash_, "count": count, "signature": signature}
        if conn.execute(_PUT_CHECKPOINT, {"_kind": kind, **values}).rowcount == 0:
            conn.execute(_ADD_CHECKPOINT, {"kind": kind, **values})
        return signature


def _lock(conn: Connection) -> None:
    """Serialise chain writers: every append and prune takes this first in its transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_ID})
    else:  # SQLite: a write statement takes the database's write lock before the head is read
        conn.execute(_SQLITE_LOCK)


def _checkpoints(conn: Connection) -> dict[str, list[Checkpoint]]:
    found: dict[str, list[Checkpoint]] = {}
    table = audit_checkpoints
    for row in conn.execute(select(table).order_by(table.c.id)).mappings():
        cp = Checkpoint(row["kind"], row["seq"], row["hash"], row["count"], row["signature"], row["ts"])
        found.setdefault(cp.kind, []).append(cp)
    return found


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only connection that sees one consistent state of both tables."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
        else:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # pysqlite would run each SELECT on its own
            try:
                yield conn
            finally:
                conn.rollback()


def export(engine: Engine, out: IO[str], since: float | None = None, until: float | None = None) -> int:
    """Write the records with ``since <= ts < until`` as JSON lines (cost as a string); the count.

    Each line holds the hashed fields as hashed, plus ``prev_hash`` and ``hash``, so
    ``record_hash(line["prev_hash"], line) == line["hash"]`` can be checked from the file alone.
    """
    query = select(audit).order_by(audit.c.seq)
    if since is not None:
        query = query.where(audit.c.ts >= since)
    if until is not None:
        query = query.where(audit.c.ts < until)
    written = 0
    with snapshot(engine) as conn:
        for row in conn.execute(query.execution_options(yield_per=500)).mappings():
            line = {**normalise(row), "prev_hash": row["prev_hash"], "hash": row["hash"]}
            out.write(orjson.dumps(line).decode() + "\n")
            written += 1
    return written
