"""Recovery of write-ahead rows: a row whose owner is gone (its process no longer runs, its lease
ran out, or it had this instance's given name) becomes an ``interrupted`` chain record with its
usage (the upstream's, when it had come) or an estimate and its cost; a row whose owner lives, or
that was renewed after it was read, stays; instances recovering at once make one record per row.

The rows are written here as a gateway leaves them when it dies mid-stream (what a real
``kill -9`` leaves is checked in ``test_audit_write_ahead.py``).
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, insert, update

from ferryman.audit import Chain, load_key
from ferryman.audit.recovery import INTERRUPTED, host_key, recover, this_process
from ferryman.pipeline.audit import Audit
from ferryman.pricing import PriceTable
from ferryman.store.database import make_engine
from ferryman.store.tables import audit_open
from ferryman.tokens import count_request_prompt_tokens
from tests.gateway.processes import fresh_postgres_database
from tests.pipeline.test_audit_write_ahead import (
    DONE,
    WORDS,
    Upstream,
    chunk,
    exchange,
    open_rows,
    poll,
    records,
    verify,
)


@pytest.fixture
def audit_db(ferryman_settings: Any) -> Iterator[Engine]:
    engine = make_engine(ferryman_settings().database_url())
    yield engine
    engine.dispose()


def dead_process() -> str:
    """The ``process`` of a process of this host that ran and exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{host_key()}:{child.pid}:1"


LEFT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[REDACTED] a story"}], "stream": True}


def left_row(
    engine: Engine,
    *,
    instance: str,
    process: str | None,
    lease_in_s: float,
    prompt_tokens: int | None = 12,
    **progress: Any,
) -> str:
    """A write-ahead row as a gateway leaves it when it dies mid-stream."""
    now = time.time()
    open_id = uuid.uuid4().hex
    request_id = f"req_{open_id[:12]}"
    record = {
        "fields": {
            "ts": now - 5,
            "request_id": request_id,
            "principal": "key_abc",
            "upstream": "mock",
            "model": "gpt-4o-mini",
            "endpoint": "/chat/completions",
            "status": 200,
            "attempts": 1,
            "cache": "miss",
            "tags": {"team": "a"},
            "request_body": orjson.dumps(LEFT_BODY).decode(),
        },
        "prompt_tokens": prompt_tokens,
        "service_tier": None,
        "priced": True,
        "bodies": "redacted",
    }
    row = {
        "id": open_id,
        "instance": instance,
        "process": process,
        "started": now - 5,
        "updated": now - 1,
        "lease_until": now + lease_in_s,
        "record": record,
        "bytes": 4000,
        "events": 30,
        "progress": {
            "content_events": 28,
            "content_chars": 150,
            "other_chars": 0,
            "usage": None,
            "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "ttft_ms": 180.0,
            **progress,
        },
    }
    with engine.begin() as conn:
        conn.execute(insert(audit_open).values(**row))
    return request_id


def by_request(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["request_id"]: row for row in records(engine)}


def test_a_dead_process_s_rows_become_interrupted_records_when_a_pipeline_starts(ferryman_pipeline, audit_db):
    ferryman_pipeline()  # makes the database (and recovers nothing)
    estimated = left_row(audit_db, instance="gw-host:4242", process=dead_process(), lease_in_s=60)
    counted = left_row(
        audit_db,
        instance="gw-host:4242",
        process=dead_process(),
        lease_in_s=60,
        usage={"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
    )
    early = left_row(audit_db, instance="gw-host:4242", process=dead_process(), lease_in_s=60, prompt_tokens=None)
    elsewhere = left_row(audit_db, instance="other-host:7", process="0123456789abcdef:7:99", lease_in_s=60)
    mine = left_row(audit_db, instance=this_process().instance, process=this_process().process, lease_in_s=60)
    ferryman_pipeline()  # a gateway or SDK client starting again on the same store

    found = by_request(audit_db)
    assert set(found) == {estimated, counted, early}  # another host's live lease, and this live process's, stay open
    assert {row["record"]["fields"]["request_id"] for row in open_rows(audit_db)} == {elsewhere, mine}
    prices = PriceTable.default()
    guess = found[estimated]
    assert guess["error"].startswith(INTERRUPTED) and "its process no longer runs" in guess["error"]
    assert "estimate" in guess["error"] and '"usage_estimated":true' in guess["response_body"]
    assert (guess["input_tokens"], guess["output_tokens"]) == (12, max(28, math.ceil(150 / 4)))
    expected = prices.cost_usd("gpt-4o-mini-2024-07-18", {"prompt_tokens": 12, "completion_tokens": 38})
    assert guess["cost_usd"] == Decimal(expected).quantize(Decimal("1E-10")) and guess["cost_usd"] > 0
    assert guess["status"] == 200 and guess["principal"] == "key_abc" and guess["tags"] == {"team": "a"}
    assert guess["ttft_ms"] == 180.0 and guess["latency_ms"] == pytest.approx(4000, abs=1)
    exact = found[counted]
    assert (exact["input_tokens"], exact["output_tokens"]) == (12, 40)
    assert exact["error"].startswith(INTERRUPTED) and "estimate" not in exact["error"]
    assert '"usage_estimated":false' in exact["response_body"]
    # Cut before its first progress update counted the prompt: counted from the body as recorded.
    assert found[early]["input_tokens"] == count_request_prompt_tokens("/chat/completions", LEFT_BODY) > 0
    assert verify(audit_db).ok


def test_a_lease_that_ran_out_is_closed_from_anywhere_and_a_named_instance_closes_its_own(ferryman_pipeline, audit_db):
    pipeline = ferryman_pipeline()
    stage = pipeline.stage(Audit)
    assert isinstance(stage, Audit)
    expired = left_row(audit_db, instance="lost-host:1", process=None, lease_in_s=-1)
    named = left_row(audit_db, instance="gateway-a", process="0123456789abcdef:9:9", lease_in_s=60)
    assert stage.recover() == 1  # the expired lease only: the named row's owner may be alive
    assert set(by_request(audit_db)) == {expired}
    assert "its lease ran out" in by_request(audit_db)[expired]["error"]

    other = Audit(pipeline.store, Chain(pipeline.store.engine, load_key()), instance="gateway-b")
    assert other.recover(startup=True) == 0
    again = Audit(pipeline.store, Chain(pipeline.store.engine, load_key()), instance="gateway-a")
    assert again.recover() == 0  # only as it starts: then no other process can hold that name
    assert again.recover(startup=True) == 1
    assert "started again" in by_request(audit_db)[named]["error"]
    assert open_rows(audit_db) == [] and verify(audit_db).ok


async def test_a_live_instance_renews_its_leases_and_closes_the_expired_ones(ferryman_pipeline, audit_db):
    pipeline = ferryman_pipeline()
    stage = Audit(pipeline.store, Chain(pipeline.store.engine, load_key()), lease_s=0.9)
    stale = left_row(audit_db, instance="lost-host:1", process=None, lease_in_s=-1)
    upstream = Upstream([chunk(w) for w in WORDS] + [DONE])
    upstream.release(1)
    reply = await stage.handle(exchange(), upstream)
    assert reply.stream is not None
    chunks = reply.stream.__aiter__()
    await chunks.__anext__()  # then the stream sends nothing for a while

    def mine() -> dict[str, Any]:
        [row] = [row for row in open_rows(audit_db) if row["id"] in stage.inflight.tracked]
        return row

    leased = mine()["lease_until"]
    await poll(lambda: mine()["lease_until"] > leased + 0.5, "the idle stream's lease renewed")
    await poll(lambda: stale in by_request(audit_db), "the expired row closed by the live instance")
    assert "its lease ran out" in by_request(audit_db)[stale]["error"]
    assert mine()["lease_until"] > time.time()  # its own stream's row, never
    upstream.release(len(WORDS))
    assert [piece async for piece in chunks][-1] == DONE
    assert open_rows(audit_db) == [] and len(records(audit_db)) == 2 and verify(audit_db).ok


def test_a_row_renewed_meanwhile_is_not_closed(ferryman_pipeline, audit_db):
    """The claim deletes the row as it was read: a lease renewed after the read wins."""
    pipeline = ferryman_pipeline()
    left_row(audit_db, instance="slow-host:1", process=None, lease_in_s=-1)
    chain = Chain(pipeline.store.engine, load_key())
    [row] = open_rows(audit_db)
    with audit_db.begin() as conn:
        conn.execute(update(audit_open).values(lease_until=time.time() + 60))
    assert chain.append_claimed({"ts": 1.0}, row["id"], row["lease_until"]) is None
    assert records(audit_db) == [] and len(open_rows(audit_db)) == 1


@pytest.mark.postgres
def test_instances_recovering_at_once_make_one_record_per_row(postgres_url: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    with fresh_postgres_database(postgres_url) as url:
        engine = make_engine(url)
        try:
            ids = {left_row(engine, instance=f"dead-{i}", process=None, lease_in_s=-1) for i in range(20)}
            key = load_key(None, create=True)
            owners = [this_process(f"recoverer-{i}") for i in range(4)]
            closed: list[int] = []
            barrier = threading.Barrier(len(owners))

            def run(owner: Any) -> None:
                barrier.wait()
                closed.append(recover(Chain(engine, key), owner, PriceTable.default()))

            threads = [threading.Thread(target=run, args=(owner,)) for owner in owners]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert sum(closed) == 20
            assert sorted(r["request_id"] for r in records(engine)) == sorted(ids)
            assert open_rows(engine) == []
            report = Chain(engine, key).verify()
            assert report.ok and report.records == 20, report.problems
        finally:
            engine.dispose()
