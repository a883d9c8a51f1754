"""``kill -9`` of one of two gateways while its streams hold a key's budget: the other instance
admits the key again once the dead one's reservation leases run out, and every stream that had
delivered bytes to its caller has an audit record with a cost; the chain still verifies.

Two ``ferryman serve`` processes (A and B) share a PostgreSQL and a Redis of the test's own, with
a short reservation lease (``FERRYMAN_BUDGET__LEASE_S``). A key's budget fits 3 worst-case calls;
3 slow streams on A (the mock waits between chunks) hold all of it, so B refuses the key. A gets
SIGKILL mid-stream: nothing of it settles or releases anything. B must admit the key again within
the lease (plus slack), the reaper releasing the dead instance's reservations. Then A is started
again on the same store, and each cut stream must have its record (status complete, or marked
``interrupted``) with a cost; ``ferryman audit verify`` passes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest

from ferryman.mock.control_client import MockControl
from tests.faults.conftest import Fleet
from tests.faults.services import RedisServer
from tests.gateway.processes import GatewayProcess
from tests.gateway.test_crash import audit_rows, verify
from tests.gateway.test_multi_instance import STORY, chat_body, worst_case_usd

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LEASE_S = 3
STREAMS = 3  # the budget fits exactly these
SLOW_STREAM = "path=/v1/chat/completions;chunk_delay_ms=400"  # plain calls are not slowed (no chunks)
ADMIT_DEADLINE_S = LEASE_S + 10
RECORD_DEADLINE_S = LEASE_S + 10


@dataclass
class Stream:
    request_id: str | None = None
    received: int = 0  # bytes of the body the caller got
    completed: bool = False  # [DONE] came and the body ended cleanly
    failure: str | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


async def _stream(client: openai.AsyncOpenAI, stream: Stream) -> None:
    try:
        async with client.chat.completions.with_streaming_response.create(
            **chat_body(), stream=True, stream_options={"include_usage": True}
        ) as response:
            stream.request_id = response.headers.get("x-request-id")
            seen_done = False
            async for line in response.iter_lines():  # to the body's end: the kill raises here
                stream.received += len(line.encode()) + 1
                stream.flowing.set()
                seen_done = seen_done or line.strip() == "data: [DONE]"
        stream.completed = seen_done
    except Exception as error:  # the SDK's errors, a cut body
        stream.failure = type(error).__name__


async def _status(client: openai.AsyncOpenAI) -> tuple[int, str | None]:
    try:
        raw = await client.chat.completions.with_raw_response.create(**chat_body())
        raw.parse()
        return raw.status_code, None
    except openai.APIStatusError as error:
        return error.status_code, error.code


async def _kill_mid_stream(a: GatewayProcess, b: GatewayProcess, key: str) -> tuple[list[Stream], float, float]:
    """3 streams on A, then SIGKILL A; how long after the kill B admitted the key."""
    on_a = openai.AsyncOpenAI(base_url=a.base_url, api_key=key, max_retries=0, timeout=30.0)
    on_b = openai.AsyncOpenAI(base_url=b.base_url, api_key=key, max_retries=0, timeout=30.0)
    streams = [Stream() for _ in range(STREAMS)]
    tasks = [asyncio.ensure_future(_stream(on_a, s)) for s in streams]
    try:
        flowing = asyncio.gather(*(s.flowing.wait() for s in streams))
        await asyncio.wait_for(flowing, 20)
        assert all(s.request_id and not s.completed for s in streams), streams
        # The 3 reservations hold the whole budget: B refuses the key while they are in flight.
        assert await _status(on_b) == (429, "budget_exceeded")

        killed_at = time.monotonic()
        await asyncio.to_thread(a.kill)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

        deadline = killed_at + ADMIT_DEADLINE_S
        refusals = []
        while True:  # polling with a deadline: refused for the budget until the leases run out
            status = await _status(on_b)
            if status[0] == 200:
                return streams, killed_at, time.monotonic() - killed_at
            assert status == (429, "budget_exceeded"), status
            refusals.append(status)
            assert time.monotonic() < deadline, (
                f"instance B still refused the key {ADMIT_DEADLINE_S}s after A was killed "
                f"({len(refusals)} refusals): the dead instance's reservations were never released"
            )
            await asyncio.sleep(0.2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await on_a.close()
        await on_b.close()


def _described(row: dict[str, Any]) -> str | None:
    """``complete`` or ``interrupted``, as a record says (None when it says neither)."""
    words = " ".join(str(value) for name, value in row.items() if name not in ("hash", "prev_hash"))
    if "interrupted" in words.lower():
        return "interrupted"
    if row["status"] == 200 and not row.get("error"):
        return "complete"
    return None


def _records(database: str, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The last audit record of each request id (a write-ahead record may precede the final one)."""
    last: dict[str, dict[str, Any]] = {}
    for row in audit_rows(database):
        if row["request_id"] in request_ids:
            last[row["request_id"]] = row
    return last


def _reserved(database: str, key_id: str) -> Decimal:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(reserved_usd), 0) FROM budget_counters WHERE scope = %s", (f"key:{key_id}",)
        ).fetchone()
    assert row is not None
    return Decimal(row[0])


def test_kill_9_mid_stream_releases_the_budget_within_the_lease_and_leaves_a_record_for_each_stream(
    redis_server: RedisServer, database: str, fleet: Fleet, ferryman_mock: MockControl
):
    ferryman_mock.set_fixtures([{"match": "budget probe", "content": STORY}])
    lease = str(LEASE_S)
    a = fleet.start(database, redis_server, BUDGET__LEASE_S=lease)
    b = fleet.start(database, redis_server, BUDGET__LEASE_S=lease)
    each = worst_case_usd()
    key, key_id = a.create_key("kill-9", budget=f"{each * STREAMS + each / 2}/day")

    ferryman_mock.set_faults([SLOW_STREAM])
    try:
        streams, _, admitted_after = asyncio.run(_kill_mid_stream(a, b, key))
    finally:
        ferryman_mock.set_faults([])
    assert a.process.returncode == -9
    assert admitted_after <= ADMIT_DEADLINE_S
    delivered = [s for s in streams if s.received > 0 and s.request_id]
    assert len(delivered) == STREAMS and not any(s.completed for s in delivered), streams

    # A, started again on the same store; each stream that reached its caller has its record.
    again = fleet.start(database, redis_server, BUDGET__LEASE_S=lease)
    ids = [s.request_id for s in delivered if s.request_id]
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while True:  # polling with a deadline: a record may be finished by recovery, after the restart
        records = _records(database, ids)
        lacking = {
            rid: (_described(records[rid]), records[rid]["cost_usd"]) if rid in records else "no record"
            for rid in ids
            if rid not in records or _described(records[rid]) is None or not records[rid]["cost_usd"] > 0
        }
        if not lacking or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not lacking, f"streams cut by the kill without a complete/interrupted record with a cost: {lacking}"
    for rid in ids:
        assert records[rid]["principal"] == key_id

    verify(database, fleet.env(BUDGET__LEASE_S=lease), fleet.workdir)  # ferryman audit verify: the chain holds
    assert _reserved(database, key_id) == 0  # the dead instance's reservations were all released
    assert again.process.poll() is None
