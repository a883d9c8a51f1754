"""The job's journal: one SQLite file beside the output (``RESULTS.jsonl.journal``) that records
each line's state, so a job killed at any moment resumes without paying twice.

A line is ``pending`` until its result is **committed** here (``done`` or ``failed``, with the
response, status, attempts, tokens and cost); a resumed job sends only ``pending`` lines, so a
line whose result was recorded is never sent again, and one that was in flight when the process
died is sent once more (its first result never arrived). ``bad`` lines (unreadable input) are
recorded with their reason and never sent. Batch API parts (which lines, their input file, batch
and output files) are recorded as they are made, so a restart picks the batches up where they
are. The results file is written from the journal, whole, at the end of every run.

It is a local, single-writer file, so the standard library's ``sqlite3`` (WAL, one commit per
result) is all it needs; the journal belongs to one input file (its sha256 is kept).

A write that does not fit on the disk raises :class:`~ferryman.batch.disk.DiskFull` naming the
journal, and changes nothing (SQLite rolls the commit back whole). With a reserve held
(:meth:`Journal.hold_reserve`), the first such write gives the reserve's room back and is tried
once more, and :attr:`Journal.full` tells the runner to take no new line (see
:mod:`ferryman.batch.disk`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ferryman.batch.disk import DiskFull, Reserve, room
from ferryman.batch.inputs import BadLine, Line
from ferryman.files import private_database
from ferryman.store.faults import disk_full

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    custom_id TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    url TEXT,
    state TEXT NOT NULL,            -- pending | done | failed | bad
    status INTEGER,
    response BLOB,                  -- the reply's JSON body
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT NOT NULL DEFAULT '0',
    via TEXT,                       -- live | batch-api
    finished REAL,
    seq INTEGER                     -- completion order
);
CREATE INDEX IF NOT EXISTS lines_state ON lines (state, number);
CREATE TABLE IF NOT EXISTS parts (
    part INTEGER PRIMARY KEY,
    custom_ids BLOB NOT NULL,       -- JSON list
    input_file_id TEXT,
    batch_id TEXT,
    status TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    merged INTEGER NOT NULL DEFAULT 0
);
"""


class JournalMismatch(Exception):
    """The journal was made for another input file."""


@dataclass(frozen=True)
class Result:
    custom_id: str
    status: int | None  # HTTP status of the final reply (None: no reply)
    response: Any  # the reply's JSON body (or None)
    error: str | None = None  # why the line failed (None: it succeeded)
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    via: str = "live"

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


@dataclass(frozen=True)
class Part:
    part: int
    custom_ids: list[str]
    input_file_id: str | None
    batch_id: str | None
    status: str | None
    output_file_id: str | None
    error_file_id: str | None
    merged: bool


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".journal")


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserve: Reserve | None = None
        self.full: DiskFull | None = None  # set when a full disk took the reserve: stop sending
        try:
            private_database(path)  # 0600 before SQLite opens it, so its -wal and -shm are 0600 too
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except OSError as error:
            if disk_full(error):
                raise DiskFull(path, "the journal", error) from error
            raise
        try:
            self._write(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self.db.execute("PRAGMA synchronous=NORMAL")  # a committed row survives kill -9
            self._write(lambda: self.db.executescript(SCHEMA))
        except BaseException:
            self.db.close()
            raise
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM lines").fetchone()
        self._seq = int(row[0])

    @classmethod
    def open(cls, path: Path, input_sha256: str) -> Journal:
        journal = cls(path)
        found = journal.meta("input_sha256")
        if found is None:
            journal.set_meta("input_sha256", input_sha256)
            journal.set_meta("created", str(time.time()))
        elif found != input_sha256:
            journal.close()
            raise JournalMismatch(
                f"{path} was made for a different input file (it changed, or -o names another job's results); "
                "use another -o, or --restart to start this output over"
            )
        return journal

    def close(self) -> None:
        """Close the database and delete the reserve (a run holds it only while it sends)."""
        try:
            self.db.close()
        finally:
            if self.reserve is not None:
                self.reserve.release()

    def hold_reserve(self, size: int) -> None:
        """Allocate ``size`` bytes beside the journal (at most a quarter of the room left, so a
        nearly full disk still runs), for the results of the lines in flight should the disk fill;
        :class:`DiskFull` now if even that does not fit."""
        reserve = Reserve(self.path.with_name(self.path.name + "-reserve"), min(size, room(self.path) // 4))
        reserve.make()
        self.reserve = reserve

    def _write(self, write: Callable[[], T]) -> T:
        """``write()``, with a full disk made a :class:`DiskFull`; the first time, after giving
        the reserve's room back and trying once more."""
        try:
            return write()
        except sqlite3.Error as error:
            if not disk_full(error):
                raise
            failure = DiskFull(self.path, "the journal", error)
            if self.reserve is None or not self.reserve.release():
                raise failure from error
            self.full = failure
        try:
            return write()
        except sqlite3.Error as error:
            if disk_full(error):
                raise DiskFull(self.path, "the journal", error) from error
            raise

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda: self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)))

    # -- lines ----------------------------------------------------------------------------------

    def add(self, items: Iterable[Line | BadLine]) -> None:
        """Record the input's lines (those already known keep their state).

        A bad line is kept under its ``custom_id`` unless a runnable line or an earlier bad line
        has that id (a repeated id, say): then under ``bad-line-N``, so it never hides another."""
        items = list(items)
        taken = {item.custom_id for item in items if isinstance(item, Line)}
        rows: list[tuple[Any, ...]] = []
        for item in items:
            if isinstance(item, Line):
                rows.append((item.custom_id, item.number, item.url, "pending", None))
            else:
                key = item.custom_id if item.custom_id and item.custom_id not in taken else f"bad-line-{item.number}"
                taken.add(key)
                rows.append((key, item.number, None, "bad", item.reason))
        self._write(lambda: self._insert(rows))

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT OR IGNORE INTO lines (custom_id, number, url, state, error) VALUES (?, ?, ?, ?, ?)", rows
            )
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a COMMIT that failed for room may have rolled back already
                self.db.execute("ROLLBACK")
            raise

    def pending_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT custom_id FROM lines WHERE state = 'pending'")}

    def retry_failed(self) -> int:
        """Put failed lines back to pending (``--retry-failed``)."""
        cursor = self._write(
            lambda: self.db.execute(
                "UPDATE lines SET state = 'pending', error = NULL, status = NULL WHERE state = 'failed'"
            )
        )
        return cursor.rowcount

    def record(self, result: Result) -> bool:
        """Commit a line's result; False if it had one already (it is then left as it was)."""
        self._seq += 1
        cursor = self._write(lambda: self._update(result))
        return cursor.rowcount == 1

    def _update(self, result: Result) -> sqlite3.Cursor:
        return self.db.execute(
            "UPDATE lines SET state = ?, status = ?, response = ?, error = ?, attempts = ?, input_tokens = ?,"
            " output_tokens = ?, cost_usd = ?, via = ?, finished = ?, seq = ?"
            " WHERE custom_id = ? AND state = 'pending'",
            (
                "done" if result.ok else "failed",
                result.status,
                orjson.dumps(result.response) if result.response is not None else None,
                result.error,
                result.attempts,
                result.input_tokens,
                result.output_tokens,
                format(result.cost_usd, "f"),  # a plain decimal, never 2E-8
                result.via,
                time.time(),
                self._seq,
                result.custom_id,
            ),
        )

    def counts(self) -> dict[str, int]:
        counts = {"pending": 0, "done": 0, "failed": 0, "bad": 0}
        for state, count in self.db.execute("SELECT state, COUNT(*) FROM lines GROUP BY state"):
            counts[state] = count
        return counts

    def totals(self) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
            " COALESCE(SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END), 0) FROM lines"
        ).fetchone()
        cost = sum((Decimal(c) for (c,) in self.db.execute("SELECT cost_usd FROM lines")), Decimal(0))
        return {"input_tokens": int(row[0]), "output_tokens": int(row[1]), "retried": int(row[2]), "cost_usd": cost}

    def rows(self, order: str = "input", states: tuple[str, ...] = ("done", "failed")) -> Iterator[dict[str, Any]]:
        marks = ",".join("?" for _ in states)
        by = "number" if order == "input" else "seq, number"
        query = (
            "SELECT custom_id, number, state, status, response, error, attempts, input_tokens, output_tokens,"
            f" cost_usd, via FROM lines WHERE state IN ({marks}) ORDER BY {by}"
        )
        for row in self.db.execute(query, states):
            yield {
                "custom_id": row[0],
                "line": row[1],
                "state": row[2],
                "status": row[3],
                "response": orjson.loads(row[4]) if row[4] is not None else None,
                "error": row[5],
                "attempts": row[6],
                "input_tokens": row[7],
                "output_tokens": row[8],
                "cost_usd": row[9],
                "via": row[10],
            }

    # -- Batch API parts ------------------------------------------------------------------------

    def parts(self) -> list[Part]:
        rows = self.db.execute(
            "SELECT part, custom_ids, input_file_id, batch_id, status, output_file_id, error_file_id, merged"
            " FROM parts ORDER BY part"
        )
        return [Part(r[0], orjson.loads(r[1]), r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in rows]

    def add_part(self, custom_ids: list[str]) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(part), 0) + 1 FROM parts").fetchone()
        part = int(row[0])
        ids = orjson.dumps(custom_ids)
        self._write(lambda: self.db.execute("INSERT INTO parts (part, custom_ids) VALUES (?, ?)", (part, ids)))
        return part

    def update_part(self, part: int, **fields: Any) -> None:
        allowed = {"input_file_id", "batch_id", "status", "output_file_id", "error_file_id", "merged"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown part fields: {sorted(unknown)}")
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._write(lambda: self.db.execute(f"UPDATE parts SET {columns} WHERE part = ?", (*fields.values(), part)))
