"""Write-ahead audit for streams: a stream has its ``audit_open`` row before its caller gets a
byte, the row goes with the stream's record, and a row left by a gateway that died becomes an
``interrupted`` chain record with estimated usage and cost, which ``ferryman audit verify``
accepts like any other.

The in-process tests drive the audit stage (a stream whose chunks the test hands out; another
connection holding SQLite's write lock shows the first chunk waits for the row) and the SDK
against the mock. The last test kills a real ``ferryman serve`` with SIGKILL while its streams
flow (the mock waits between chunks), restarts it on the same store (SQLite, and PostgreSQL when
it runs here) and checks every cut stream's record. The rules of recovery, row by row, are in
``test_audit_recovery.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from sqlalchemy import Engine, select

from ferryman.audit import Chain, load_key
from ferryman.audit.recovery import INTERRUPTED, this_process
from ferryman.exchange import Exchange, Reply
from ferryman.mock.control_client import MockControl
from ferryman.pipeline.audit import Audit
from ferryman.store.database import make_engine
from ferryman.store.tables import audit_open
from ferryman.tokens import count_request_prompt_tokens
from tests.gateway.processes import GatewayProcess, gateway_env, start_gateway
from tests.gateway.test_crash import (
    audit_rows,
)
from tests.gateway.test_crash import verify as cli_verify
from tests.pipeline.conftest import UPSTREAM_KEY
from tests.pipeline.test_audit import records

FAKE_KEY = "sk-proj-" + "Zx3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kM9q"
EMAIL = "jane.doe@example.com"
MESSAGES = [{"role": "user", "content": f"Tell me a story. My key is {FAKE_KEY}, mail {EMAIL}."}]
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
WORDS = ["Once", " upon", " a", " time", " there", " was", " a", " river", "."]
DEADLINE_S = 15.0


def chunk(content: str) -> bytes:
    event = {
        "id": "chatcmpl-wal",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def open_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit_open)).mappings()]


def verify(engine: Engine) -> Any:
    return Chain(engine, load_key()).verify()


async def poll(check: Any, what: str, deadline_s: float = DEADLINE_S) -> Any:
    """``check()`` until it returns something true, with a deadline (never a sleep for ordering)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not (found := check()):
        assert loop.time() < deadline, f"not within {deadline_s}s: {what}"
        await asyncio.sleep(0.02)
    return found


class Upstream:
    """A stream the test hands out chunk by chunk: ``release(n)`` lets n more through."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked = asyncio.Event()  # the first chunk was asked for, and is being handed over
        self.allowed = asyncio.Semaphore(0)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.allowed.release()

    async def stream(self) -> AsyncIterator[bytes]:
        for piece in self.chunks:
            await self.allowed.acquire()
            self.asked.set()
            yield piece

    async def __call__(self, exchange: Exchange) -> Reply:
        exchange.request_id = f"req_{uuid.uuid4().hex[:12]}"
        return Reply(200, {"content-type": "text/event-stream"}, stream=self.stream())


def exchange() -> Exchange:
    return Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, BODY)


@pytest.mark.parametrize("database", ["free", "busy"])
async def test_the_row_is_in_before_the_first_chunk_and_the_record_deletes_it(ferryman_pipeline, audit_db, database):
    """Free, the row is written at once, before the reply is even returned; busy (another writer
    holds SQLite's write lock), the first chunk waits for the row, written by the store's thread."""
    pipeline = ferryman_pipeline()
    stage = pipeline.stage(Audit)
    assert isinstance(stage, Audit)
    upstream = Upstream([chunk(w) for w in WORDS] + [DONE])
    upstream.release(len(WORDS) + 1)
    writer = sqlite3.connect(audit_db.url.database, isolation_level=None)
    try:
        if database == "busy":
            writer.execute("BEGIN IMMEDIATE")  # the database's one write lock, held
        reply = await stage.handle(exchange(), upstream)
        assert reply.stream is not None
        chunks = reply.stream.__aiter__()
        first = asyncio.ensure_future(chunks.__anext__())
        if database == "free":
            assert len(open_rows(audit_db)) == 1  # in before the caller has even asked for a byte
        else:
            await asyncio.wait_for(upstream.asked.wait(), DEADLINE_S)  # the first chunk is here...
            for _ in range(50):  # ...and every step it could take without the database is taken
                await asyncio.sleep(0)
            assert not first.done(), "the first chunk reached the caller before its write-ahead row was written"
            assert open_rows(audit_db) == []
    finally:
        if writer.in_transaction:
            writer.rollback()
        writer.close()
    assert await asyncio.wait_for(first, DEADLINE_S) == chunk(WORDS[0])

    [row] = open_rows(audit_db)  # in the table (committed) by the time the caller has a byte
    owner = this_process()
    assert row["instance"] == owner.instance and row["process"] == owner.process
    assert row["lease_until"] > time.time() and row["bytes"] == 0
    fields = row["record"]["fields"]
    assert fields["endpoint"] == "/chat/completions" and fields["model"] == "gpt-4o-mini"
    assert fields["principal"] == "process" and fields["status"] == 200 and fields["request_id"]
    assert FAKE_KEY not in repr(row) and EMAIL not in repr(row)  # the body as the record keeps it
    assert "[REDACTED]" in fields["request_body"] and "[EMAIL]" in fields["request_body"]

    rest = [piece async for piece in chunks]
    assert rest[-1] == DONE
    assert open_rows(audit_db) == []  # deleted with the record, in its transaction
    [record] = records(audit_db)
    assert record["status"] == 200 and record["error"] is None
    assert record["request_id"] == fields["request_id"]
    assert record["request_body"] == fields["request_body"]  # rendered once, for both
    assert "Once upon a time" in record["response_body"]
    assert verify(audit_db).ok


async def test_the_prompt_is_counted_with_the_first_progress_update(ferryman_pipeline, audit_db):
    stage = ferryman_pipeline().stage(Audit)
    assert isinstance(stage, Audit)
    upstream = Upstream([chunk(w) for w in WORDS] + [DONE])
    upstream.release(2)
    reply = await stage.handle(exchange(), upstream)
    assert reply.stream is not None
    chunks = reply.stream.__aiter__()
    await chunks.__anext__()
    [row] = open_rows(audit_db)
    assert row["record"]["prompt_tokens"] is None  # no stage had counted it: not on the way to the first byte
    await chunks.__anext__()

    def progressed() -> dict[str, Any] | None:
        rows = open_rows(audit_db)
        return rows[0] if rows and rows[0]["progress"] else None

    row = await poll(progressed, "the stream's first progress update")
    assert row["progress"]["prompt_tokens"] == count_request_prompt_tokens("/chat/completions", orjson.loads(BODY))
    assert row["bytes"] == len(chunk(WORDS[0])) + len(chunk(WORDS[1])) and row["events"] == 2
    assert row["progress"]["content_events"] == 2 and row["progress"]["content_chars"] == len("Once upon")
    upstream.release(len(WORDS))
    assert [piece async for piece in chunks][-1] == DONE
    assert open_rows(audit_db) == [] and len(records(audit_db)) == 1


async def test_progress_is_written_while_the_stream_flows(ferryman_async_client, ferryman_mock, audit_db):
    ferryman_mock.set_fixtures([{"match": "long story", "content": " ".join(f"word{i}" for i in range(300))}])
    client = ferryman_async_client()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a long story"}],
        stream=True,
        extra_headers={"x-ferryman-fault": "chunk_delay_ms=20"},
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 1:
            [row] = open_rows(audit_db)
            assert row["record"]["fields"]["request_id"]
        rows = open_rows(audit_db)
        if rows and rows[0]["bytes"] > 0:  # written within about a second, never per chunk
            break
    else:
        pytest.fail("the stream ended before its progress was written")
    [row] = rows
    assert row["events"] > 0 and row["progress"]["content_events"] > 0 and row["progress"]["model"]
    asked = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a long story"}], "stream": True}
    counted = row["record"]["prompt_tokens"]  # by the pacing or budget stage, else with the progress
    counted = row["progress"]["prompt_tokens"] if counted is None else counted
    assert counted == count_request_prompt_tokens("/chat/completions", asked) > 0
    assert 0 < row["progress"]["content_events"] <= received
    await stream.close()  # abandoned: its record is written and the row goes with it
    await client.close()
    [record] = await poll(lambda: records(audit_db), "the abandoned stream's record")
    assert "abandoned" in record["error"]
    assert open_rows(audit_db) == []


# -- a real gateway, killed mid-stream -----------------------------------------------------------------

STREAMS = 4
SLOW = "path=/v1/chat/completions;chunk_delay_ms=30"
STORY = " ".join(f"river{i}" for i in range(250))  # about 7 s of chunks: the kill lands mid-stream


@dataclass
class Seen:
    request_id: str | None = None
    lines: int = 0  # content lines the caller received
    chars: int = 0  # characters of content in them
    completed: bool = False
    failure: str | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


async def _read(client: openai.AsyncOpenAI, seen: Seen, ask: str) -> None:
    try:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": ask}], stream=True
        ) as response:
            seen.request_id = response.headers.get("x-request-id")
            async for line in response.iter_lines():
                if line.startswith("data: {"):
                    seen.lines += 1
                    for choice in orjson.loads(line[6:]).get("choices") or ():
                        seen.chars += len((choice.get("delta") or {}).get("content") or "")
                    seen.flowing.set()
                seen.completed = seen.completed or line.strip() == "data: [DONE]"
    except Exception as error:  # the kill cuts the body
        seen.failure = type(error).__name__


def _open_ids(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["record"]["fields"]["request_id"]: row for row in open_rows(engine)}


async def _stream_then_kill(gateway: GatewayProcess, key: str, engine: Engine) -> tuple[Seen, list[Seen]]:
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30.0)
    whole = Seen()
    cut = [Seen() for _ in range(STREAMS)]
    try:
        await _read(client, whole, "a short answer")  # one stream that ends before the kill
        tasks = [asyncio.ensure_future(_read(client, seen, "a long story")) for seen in cut]
        await asyncio.wait_for(asyncio.gather(*(seen.flowing.wait() for seen in cut)), DEADLINE_S)

        def progressed() -> bool:  # every stream's row has its progress written: it flows, durably
            rows = _open_ids(engine)
            return all(s.request_id in rows and rows[s.request_id]["bytes"] > 0 for s in cut)

        await poll(progressed, "the progress of every stream in its write-ahead row")
        await asyncio.to_thread(gateway.kill)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await client.close()
    return whole, cut


def test_streams_cut_by_kill_9_are_recorded_as_interrupted_when_the_gateway_starts_again(
    store_url: str, ferryman_mock: MockControl, tmp_path: Path
):
    ferryman_mock.set_fixtures(
        [{"match": "long story", "content": STORY}, {"match": "short answer", "content": "Yes, quite short."}]
    )
    env = gateway_env(ferryman_mock.base_url, tmp_path / "data")
    gateway = start_gateway(env, tmp_path, "--store", store_url)
    engine = make_engine(store_url)
    ferryman_mock.set_faults([SLOW])
    try:
        gateway.wait_ready()
        key, key_id = gateway.create_key("write-ahead")
        whole, cut = asyncio.run(_stream_then_kill(gateway, key, engine))
        assert gateway.process.returncode == -9
        assert whole.completed and whole.request_id
        assert all(s.request_id and s.lines > 0 and not s.completed and s.failure for s in cut), cut

        # Dead, before any restart: each cut stream has only its write-ahead row.
        left = _open_ids(engine)
        assert {s.request_id for s in cut} <= set(left)
        assert [r["request_id"] for r in audit_rows(store_url)].count(whole.request_id) == 1
        assert not {s.request_id for s in cut} & {r["request_id"] for r in audit_rows(store_url)}

        again = start_gateway(env, tmp_path, "--store", store_url)
        try:
            again.wait_ready()  # it closed its predecessor's rows as it started, before it was ready
            rows = {r["request_id"]: r for r in audit_rows(store_url)}
            assert open_rows(engine) == []
            for seen in cut:
                row = rows[seen.request_id]
                assert row["principal"] == key_id and row["status"] == 200
                assert row["error"].startswith(INTERRUPTED) and "estimate" in row["error"]
                assert '"usage_estimated":true' in row["response_body"]
                # Counted from what had been delivered when the progress was last written.
                assert row["input_tokens"] > 0 and 0 < row["output_tokens"] <= max(seen.lines, seen.chars / 4 + 1)
                assert row["cost_usd"] > 0 and row["ttft_ms"] is not None
                assert FAKE_KEY not in repr(row) and UPSTREAM_KEY not in repr(row)
            complete = rows[whole.request_id]
            assert complete["error"] is None and complete["cost_usd"] > 0
            report = cli_verify(store_url, env, tmp_path)  # ferryman audit verify
            assert report["records"] == len(rows) == STREAMS + 1
        finally:
            again.stop()
    finally:
        ferryman_mock.set_faults([])
        gateway.stop()
        engine.dispose()
    again.assert_no_secrets_logged()
    assert "recorded as interrupted" in again.output()
