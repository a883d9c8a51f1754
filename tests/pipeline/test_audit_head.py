"""The audit chain's fast append: the head this process wrote last, one short transaction."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from ferryman.audit import Chain, CheckpointKey
from ferryman.audit import head as head_module
from ferryman.audit.chain import normalise, record_hash
from ferryman.config import Settings
from ferryman.pipeline.audit import Audit
from ferryman.store import open_store
from ferryman.store.database import make_engine
from ferryman.store.tables import audit

KEY = CheckpointKey(b"a-test-checkpoint-key-0123456789", "test")
MESSAGES = [{"role": "user", "content": "hi"}]


def record(i: int) -> dict[str, Any]:
    return {
        "ts": time.time(),
        "request_id": f"req_{i}",
        "principal": "process",
        "upstream": "mock",
        "model": "gpt-4o-mini",
        "endpoint": "/chat/completions",
        "status": 200,
        "attempts": 1,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "input_tokens": 10,
        "cached_tokens": 0,
        "output_tokens": 20,
        "reasoning_tokens": 0,
        "cost_usd": Decimal("0.0000123") * (i + 1),
        "cache": "off",
        "tags": {"team": "a"},
        "error": None,
        "request_body": '{"n": 1}',
        "response_body": None,
    }


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(Settings(store={"url": url}), url)
    store.close()
    yield url


@pytest.fixture
def chains(sqlite_url: str) -> Iterator[Callable[[], Chain]]:
    """``chains()`` → another Chain (another 'process') on the same database."""
    engines: list[Engine] = []

    def make() -> Chain:
        engines.append(make_engine(sqlite_url))
        return Chain(engines[-1], KEY)

    yield make
    for engine in engines:
        engine.dispose()


def count_full_appends(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    full = chain._append_read

    def counted(record: Any, **options: Any) -> Any:
        calls.append(1)
        return full(record, **options)

    monkeypatch.setattr(chain, "_append_read", counted)
    return calls


def test_only_the_first_append_reads_the_head(chains, monkeypatch):
    chain = chains()
    full = count_full_appends(chain, monkeypatch)
    for i in range(5):
        appended = chain.append(record(i))
        assert appended.anchored and appended.seq == i + 1
    assert len(full) == 1
    assert chain.writer.head is not None and chain.writer.head.seq == 5
    report = chain.verify()
    assert report.ok and report.records == 5 and report.head is not None and report.head.count == 5


def test_another_writer_is_noticed_and_the_chain_stays_whole(chains, monkeypatch):
    first, second = chains(), chains()
    full = count_full_appends(first, monkeypatch)
    first.append(record(0))
    first.append(record(1))
    second.append(record(2))  # the head moved under the first writer
    assert first.append(record(3)).seq == 4
    assert first.try_append(record(4)) is not None
    assert len(full) == 2  # its first append, and the one after the other writer's
    report = first.verify()
    assert report.ok and report.records == 5 and report.head is not None and report.head.count == 5


def test_a_busy_database_makes_the_loop_side_step_aside(chains, sqlite_url):
    chain = chains()
    chain.append(record(0))
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        assert chain.try_append(record(1)) is None  # at once, rather than waiting on the event loop
    finally:
        other.rollback()
        other.close()
    assert chain.writer.head is not None  # busy is no reason to forget the head
    assert chain.try_append(record(1)) is not None
    assert chain.verify().ok


def test_an_insert_that_collides_falls_back_to_the_full_path(chains):
    chain = chains()
    first = chain.append(record(0))
    with chain.engine.begin() as conn:  # seq 2 written behind the writer's back, the checkpoint left as is
        row = normalise({**record(9), "seq": 2})
        stored = {**row, "cost_usd": Decimal(row["cost_usd"])}
        conn.execute(audit.insert().values(**stored, prev_hash=first.hash, hash=record_hash(first.hash, row)))
    assert chain.try_append(record(1)) is None and chain.writer.head is None
    appended = chain.append(record(1))  # the full path: chained on, the checkpoint never re-signed over it
    assert appended.seq == 3 and not appended.anchored
    assert any("after the head checkpoint" in str(p) for p in chain.verify().problems)


def test_the_stage_writes_on_the_loop_and_checkpoints_the_wal(ferryman_client, ferryman_settings, monkeypatch):
    monkeypatch.setattr(head_module, "CHECKPOINT_EVERY", 3)
    client = ferryman_client()
    stage = client._client._transport.pipeline.stage(Audit)
    assert isinstance(stage, Audit)
    calls: list[int] = []
    checkpoint = stage.chain.writer.checkpoint_wal

    def counted() -> None:
        calls.append(1)
        checkpoint()

    monkeypatch.setattr(stage.chain.writer, "checkpoint_wal", counted)
    for _ in range(7):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    deadline = time.monotonic() + 10
    while not calls:  # spawned on the loop after the third append: wait for it to run
        assert time.monotonic() < deadline, "no WAL checkpoint was run"
        time.sleep(0.01)
    engine = make_engine(ferryman_settings().database_url())
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(audit)).scalar() == 7
        assert Chain(engine, stage.chain.key).verify().ok
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    schema = f"audit_head_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    store = open_store(Settings(store={"url": url}), url)
    store.close()
    yield url
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.mark.postgres
def test_postgres_writers_take_turns_on_one_chain(pg_url, monkeypatch):
    first, second = Chain(make_engine(pg_url), KEY), Chain(make_engine(pg_url), KEY)
    try:
        full = count_full_appends(first, monkeypatch)
        for i in range(3):
            first.append(record(i))
        second.append(record(3))
        first.append(record(4))
        assert first.try_append(record(5)) is None  # never on an event loop: a network round trip
        assert len(full) == 2
        report = first.verify()
        assert report.ok and report.records == 5 and report.head is not None and report.head.count == 5
    finally:
        first.engine.dispose()
        second.engine.dispose()
