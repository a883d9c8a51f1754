"""``kill -9`` of a gateway under load: the audit chain still verifies, every reply a caller
received in full has its audit row, with its usage and cost, and so does every stream the kill
cut after it had delivered bytes (complete, or ``interrupted`` with an estimate).

A real ``ferryman serve`` subprocess (on SQLite, and on PostgreSQL when it runs here) takes a
steady load from the official async SDK: plain chat calls and slow streamed ones (the mock waits
between chunks), so streams are open when SIGKILL lands. A reply counts as received in full when
its body arrived to the end: a plain 200, or a stream whose ``[DONE]`` came and whose body then
ended cleanly; anything the kill cut is allowed either way. Afterwards ``ferryman audit verify``
must pass, the rows are matched to the replies by ``x-request-id``, and a restarted gateway on
the same store carries the chain on: before it is ready, it has closed the write-ahead rows the
kill left (``audit_open``) into interrupted records.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from sqlalchemy import select

from ferryman.audit.chain import Chain, Report
from ferryman.audit.keys import CheckpointKey
from ferryman.audit.recovery import INTERRUPTED
from ferryman.mock.control_client import MockControl
from ferryman.store.database import make_engine
from ferryman.store.tables import audit, audit_open
from tests.gateway.processes import (
    CHECKPOINT_REF,
    CHECKPOINT_SECRET,
    GatewayProcess,
    gateway_env,
    run_cli,
)
from tests.gateway.processes import start_gateway as start

MESSAGES = [{"role": "user", "content": "Tell me about the river."}]
WORKERS = 12  # half plain, half streamed
# A mock fault rule (control API): streams stay open for a while. It matches every chat call, but a
# chunk delay only acts between stream chunks, so the plain calls are answered as fast as ever.
SLOW_STREAM = "path=/v1/chat/completions;chunk_delay_ms=8"
KILL_AFTER = 40  # completed replies before the kill, of which at least
STREAMS_BEFORE_KILL = 4  # this many streams


@dataclass
class Load:
    completed: dict[str, str] = field(default_factory=dict)  # x-request-id -> "plain" | "stream"
    delivered: dict[str, int] = field(default_factory=dict)  # x-request-id -> body bytes a stream's caller got
    cut: int = 0  # calls the kill broke (or refused, once it was dead)
    streams_open: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False

    def done(self, request_id: str, kind: str) -> None:
        self.completed[request_id] = kind
        streams = sum(1 for k in self.completed.values() if k == "stream")
        if len(self.completed) >= KILL_AFTER and streams >= STREAMS_BEFORE_KILL and self.streams_open > 0:
            self.enough.set()


async def _plain(client: openai.AsyncOpenAI, load: Load) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    reply = raw.parse()
    assert raw.status_code == 200 and reply.usage is not None
    load.done(raw.headers["x-request-id"], "plain")


async def _stream(client: openai.AsyncOpenAI, load: Load) -> None:
    load.streams_open += 1
    try:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            request_id = response.headers["x-request-id"]
            seen_done = False
            async for line in response.iter_lines():  # to the body's end: a cut raises here
                assert not line.startswith('data: {"error"'), line
                if line:
                    load.delivered[request_id] = load.delivered.get(request_id, 0) + len(line) + 1
                seen_done = seen_done or line.strip() == "data: [DONE]"
    finally:
        load.streams_open -= 1
    assert seen_done
    load.done(request_id, "stream")


async def _worker(client: openai.AsyncOpenAI, load: Load, streamed: bool) -> None:
    while not load.stop:
        try:
            await (_stream if streamed else _plain)(client, load)
        except Exception as error:  # the SDK's errors, a cut body, a failed check
            if not load.stop:  # before the kill, every call must succeed
                raise AssertionError(f"a call failed before the kill: {type(error).__name__}") from error
            load.cut += 1


async def _load_then_kill(gateway: GatewayProcess, key: str) -> Load:
    load = Load()
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20.0)
    workers = [asyncio.ensure_future(_worker(client, load, streamed=i % 2 == 1)) for i in range(WORKERS)]
    waiting = asyncio.ensure_future(load.enough.wait())
    try:
        await asyncio.wait([waiting, *workers], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for worker in workers:  # a worker that ended early failed: say why
            if worker.done():
                worker.result()
        assert load.enough.is_set(), f"only {len(load.completed)} replies in 30 s"
        load.stop = True
        gateway.kill()
        await asyncio.wait_for(asyncio.gather(*workers), 30)
    finally:
        for task in (waiting, *workers):
            task.cancel()
        await client.close()
    return load


def audit_rows(store_url: str) -> list[dict[str, Any]]:
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(audit).order_by(audit.c.seq))]
    finally:
        engine.dispose()


def open_rows(store_url: str) -> list[dict[str, Any]]:
    """The write-ahead rows of streams in flight (or left by a gateway that died)."""
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(audit_open))]
    finally:
        engine.dispose()


def verify(store_url: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    result = run_cli("audit", "verify", "--db", store_url, "--key", CHECKPOINT_REF, "--json", env=env, cwd=cwd)
    assert result.returncode == 0, f"ferryman audit verify: {result.stdout}{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] and not report["problems"]
    return report


def verify_in_process(store_url: str) -> Report:
    """The same check as ``ferryman audit verify``, without starting another interpreter."""
    engine = make_engine(store_url)
    try:
        return Chain(engine, CheckpointKey(CHECKPOINT_SECRET.encode(), CHECKPOINT_REF)).verify()
    finally:
        engine.dispose()


def test_kill_9_under_load_leaves_a_verifiable_chain_and_a_row_for_every_completed_reply(
    store_url: str, ferryman_mock: MockControl, tmp_path: Path
):
    env = gateway_env(ferryman_mock.base_url, tmp_path / "data")
    gateway = start(env, tmp_path, "--store", store_url)
    ferryman_mock.set_faults([SLOW_STREAM])
    try:
        gateway.wait_ready()
        key, key_id = gateway.create_key("crash")
        load = asyncio.run(_load_then_kill(gateway, key))
    finally:
        ferryman_mock.set_faults([])  # not for the restarted gateway's call, nor a later test
        gateway.stop()
    assert gateway.process.returncode == -9
    gateway.assert_no_secrets_logged()
    assert load.cut > 0, "the kill cut no call: it did not land under load"
    assert "stream" in load.completed.values() and "plain" in load.completed.values()
    cut = [rid for rid in load.delivered if rid not in load.completed]  # streams the kill cut mid-body
    left = {row["record"]["fields"]["request_id"] for row in open_rows(store_url)}
    assert set(cut) <= left | {row["request_id"] for row in audit_rows(store_url)}

    # A gateway restarted on the same store closes the write-ahead rows the kill left as it
    # starts (before it is ready), and appends to the chain, which still verifies.
    again = start(env, tmp_path, "--store", store_url)
    try:
        again.wait_ready()
        assert open_rows(store_url) == []
        report = verify(store_url, env, tmp_path)
        rows = audit_rows(store_url)
        assert report["records"] == len(rows)
        by_id = {row["request_id"]: row for row in rows if row["request_id"]}
        missing = [rid for rid in load.completed if rid not in by_id]
        assert not missing, f"{len(missing)} of {len(load.completed)} completed replies have no audit row"
        for request_id in load.completed:
            row = by_id[request_id]
            assert row["principal"] == key_id and row["status"] == 200
            assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0
        unrecorded = [rid for rid in cut if rid not in by_id]
        assert not unrecorded, f"{len(unrecorded)} of {len(cut)} streams the kill cut have no audit row"
        for request_id in cut:  # its record came before the kill, or was made from its row after
            row = by_id[request_id]
            assert row["principal"] == key_id and row["status"] == 200 and row["cost_usd"] > 0
            if row["error"] is not None:
                assert row["error"].startswith(INTERRUPTED) and "estimate" in row["error"], row["error"]
                assert '"usage_estimated":true' in row["response_body"]

        client = openai.OpenAI(base_url=again.base_url, api_key=key, max_retries=0, timeout=20.0)
        with client:
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert raw.status_code == 200
    finally:
        again.stop()
    again.assert_no_secrets_logged()
    after = verify_in_process(store_url)
    assert after.ok and after.records == report["records"] + 1, after.problems
    assert audit_rows(store_url)[-1]["request_id"] == raw.headers["x-request-id"]
