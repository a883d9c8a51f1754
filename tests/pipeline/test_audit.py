"""The audit stage: one redacted, hash-chained record per call, through the SDK against the mock."""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
from sqlalchemy import Engine, select

from ferryman.audit import Chain, load_key
from ferryman.audit.chain import ZERO_HASH, record_hash
from ferryman.audit.keys import key_file
from ferryman.errors import OpenAIError
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.audit import Audit
from ferryman.store.database import make_engine
from ferryman.store.tables import audit, audit_checkpoints
from tests.pipeline.conftest import UPSTREAM_KEY

MESSAGES = [{"role": "user", "content": "hi"}]
EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
CARD, IBAN = "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32"
FAKE_KEY = "sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kM9n"
PERSONAL = f"Write to {EMAIL} or call {PHONE}; card {CARD}; IBAN {IBAN}; my key is {FAKE_KEY}."


def records(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def verify(engine: Engine) -> Any:
    return Chain(engine, load_key()).verify()


def test_each_call_is_one_record_with_its_facts(ferryman_client, audit_db):
    client = ferryman_client()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"ferryman-tags": "team=search,feature=qa"}
    )
    reply = raw.parse()
    [row] = records(audit_db)
    assert row["seq"] == 1 and row["prev_hash"] == ZERO_HASH and len(row["hash"]) == 64
    assert row["endpoint"] == "/chat/completions" and row["model"] == "gpt-4o-mini"
    assert row["status"] == 200 and row["upstream"] == "mock" and row["principal"] == "process"
    assert row["request_id"] == raw.headers["x-request-id"]
    assert row["attempts"] >= 1 and row["latency_ms"] > 0 and row["ttft_ms"] is None
    assert row["input_tokens"] == reply.usage.prompt_tokens
    assert row["output_tokens"] == reply.usage.completion_tokens
    assert row["tags"] == {"team": "search", "feature": "qa"}
    assert row["cache"] == raw.headers["x-ferryman-cache"] and row["error"] is None
    if "x-ferryman-cost-usd" in raw.headers:
        assert row["cost_usd"] == Decimal(raw.headers["x-ferryman-cost-usd"]).quantize(Decimal("1E-10"))
    assert reply.choices[0].message.content in row["response_body"]
    assert '"hi"' in row["request_body"]


def test_responses_usage_shape_and_a_chained_second_record(ferryman_client, audit_db):
    client = ferryman_client()
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    reply = client.responses.create(model="gpt-4o-mini", input="hello there")
    first, second = records(audit_db)
    assert second["endpoint"] == "/responses" and second["prev_hash"] == first["hash"]
    assert second["input_tokens"] == reply.usage.input_tokens
    assert second["output_tokens"] == reply.usage.output_tokens
    assert second["cached_tokens"] == reply.usage.input_tokens_details.cached_tokens
    assert second["reasoning_tokens"] == reply.usage.output_tokens_details.reasoning_tokens
    assert verify(audit_db).ok


def test_a_stream_is_recorded_when_it_ends_with_ttft(ferryman_client, ferryman_mock, audit_db):
    ferryman_mock.set_fixtures([{"match": "poem", "content": "Rivers run to the patient sea."}])
    client = ferryman_client()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a poem"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    next(chunks)
    assert records(audit_db) == []  # not before the stream is over
    rest = list(chunks)
    [row] = records(audit_db)
    usage = next(c.usage for c in rest if c.usage)
    assert row["status"] == 200 and row["error"] is None
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]
    assert (row["input_tokens"], row["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert "Rivers run to the patient sea." in row["response_body"]  # reassembled from the deltas
    assert '"completed":true' in row["response_body"]


def test_a_responses_stream_is_recorded_with_its_final_response(ferryman_client, ferryman_mock, audit_db):
    ferryman_mock.set_fixtures([{"match": "poem", "content": "Stone bridges hold."}])
    client = ferryman_client()
    events = list(client.responses.create(model="gpt-4o-mini", input="a poem", stream=True))
    final = events[-1].response
    [row] = records(audit_db)
    assert row["endpoint"] == "/responses" and row["ttft_ms"] is not None
    assert row["output_tokens"] == final.usage.output_tokens
    assert "Stone bridges hold." in row["response_body"] and row["error"] is None


def test_an_abandoned_stream_is_recorded_when_closed(ferryman_client, audit_db):
    client = ferryman_client()
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    [row] = records(audit_db)
    assert "abandoned" in row["error"] and '"completed":false' in row["response_body"]


def test_a_stream_closed_unread_is_still_recorded(ferryman_client, audit_db):
    client = ferryman_client()
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as response:
        assert response.status_code == 200
    [row] = records(audit_db)  # written on the loop; the close waited for the stream's own close
    assert row["status"] == 200 and row["error"]


async def eventually(engine: Engine, count: int) -> list[dict[str, Any]]:
    """The rows, once there are ``count`` of them (written by a task the caller does not wait for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(rows := records(engine)) < count:
        assert loop.time() < deadline, f"{len(rows)} audit records, expected {count}"
        await asyncio.sleep(0.01)
    return rows


async def test_an_async_stream_closed_unread_is_recorded(ferryman_async_client, audit_db):
    client = ferryman_async_client()
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as response:
        assert response.status_code == 200
    [row] = await eventually(audit_db, 1)
    assert row["status"] == 200 and "closed before it was read" in row["error"]
    await client.close()


async def test_a_cancelled_call_is_recorded(ferryman_async_client, audit_db):
    client = ferryman_async_client()
    slow = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-ferryman-fault": "delay_ms=5000"}
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow, timeout=0.2)
    [row] = await eventually(audit_db, 1)
    assert row["status"] == 499 and "cancelled" in row["error"]
    await client.close()


def test_error_replies_and_transport_errors_are_recorded(ferryman_client, audit_db):
    client = ferryman_client(retry={"max_attempts": 1}, routing={"breaker_failures": 100})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-ferryman-fault": "reset"}
        )
    not_found, reset = records(audit_db)
    assert not_found["status"] == 404 and "model_not_found" in not_found["error"]
    assert reset["status"] == 599 and reset["error"]
    assert verify(audit_db).ok


async def test_refusals_by_inner_stages_are_recorded(ferryman_pipeline, audit_db):
    stage = ferryman_pipeline().stage(Audit)
    assert isinstance(stage, Audit)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})

    async def refuse(exchange: Exchange) -> Reply:
        error = OpenAIError(429, "Budget tag:team=a is spent.", "insufficient_quota", None, "budget_exceeded")
        return Reply.of_json(error.status, error.body())

    async def raise_refusal(exchange: Exchange) -> Reply:
        raise OpenAIError(400, f"Bad field for {EMAIL}", "invalid_request_error", "messages", None)

    await stage.handle(Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, body), refuse)
    with pytest.raises(OpenAIError):
        await stage.handle(
            Exchange.build("POST", "/chat/completions", {"content-type": "application/json"}, body), raise_refusal
        )
    returned, raised = records(audit_db)
    assert returned["status"] == 429 and returned["attempts"] == 0 and returned["upstream"] is None
    assert returned["error"] == "429 budget_exceeded: Budget tag:team=a is spent."
    assert raised["status"] == 400 and "[EMAIL]" in raised["error"] and EMAIL not in raised["error"]
    assert verify(audit_db).ok


def test_personal_data_and_keys_never_reach_the_row(ferryman_client, ferryman_mock, audit_db):
    # The reply repeats the personal data: streamed, it arrives split over many token-sized deltas.
    ferryman_mock.set_fixtures([{"match": "contact", "content": f"Sure: {EMAIL}, {PHONE}, {CARD}, {IBAN}."}])
    client = ferryman_client()
    messages = [{"role": "user", "content": f"contact details: {PERSONAL}"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    plain, streamed = records(audit_db)
    for row in (plain, streamed):
        stored = repr(row)
        for secret in (EMAIL, PHONE, CARD, IBAN, FAKE_KEY, UPSTREAM_KEY, "sk-caller-side-placeholder"):
            assert secret not in stored
        for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[REDACTED]"):
            assert placeholder in row["request_body"]
        for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"):
            assert placeholder in row["response_body"]
    assert verify(audit_db).ok


def test_full_bodies_keep_personal_data_but_never_keys(ferryman_client, audit_db):
    client = ferryman_client(audit={"bodies": "full"})
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PERSONAL}])
    [row] = records(audit_db)
    assert EMAIL in row["request_body"] and FAKE_KEY not in row["request_body"]
    assert "[REDACTED]" in row["request_body"]


def test_bodies_none_stores_no_bodies(ferryman_client, audit_db):
    client = ferryman_client(audit={"bodies": "none"})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PERSONAL}])
    [row] = records(audit_db)
    assert row["request_body"] is None and row["response_body"] is None
    assert row["output_tokens"] == reply.usage.completion_tokens


def test_disabled_audit_writes_nothing(ferryman_client, audit_db):
    ferryman_client(audit={"enabled": False}).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert records(audit_db) == []


def test_the_key_file_is_private_and_never_in_the_database(ferryman_client, audit_db):
    ferryman_client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    path = key_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    with audit_db.connect() as conn:
        dumped = repr(conn.execute(select(audit)).all()) + repr(conn.execute(select(audit_checkpoints)).all())
    assert key not in dumped and key not in repr(load_key()) and key not in str(load_key())


def test_a_checkpoint_key_reference_is_used(ferryman_client, audit_db, monkeypatch):
    monkeypatch.setenv("AUDIT_TEST_KEY", "a-long-enough-checkpoint-key-0123456789")
    ferryman_client(audit={"checkpoint_key": "env:AUDIT_TEST_KEY"}).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert not key_file().exists()
    assert Chain(audit_db, load_key("env:AUDIT_TEST_KEY")).verify().ok
    monkeypatch.setenv("AUDIT_TEST_KEY", "another-key-of-the-same-good-length-987")
    assert not Chain(audit_db, load_key("env:AUDIT_TEST_KEY")).verify().ok


async def test_fifty_concurrent_calls_make_one_chain(ferryman_async_client, audit_db):
    client = ferryman_async_client()

    async def call(stream: bool) -> None:
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
        if stream:
            assert [chunk async for chunk in reply]

    await asyncio.gather(*(call(stream=i % 2 == 0) for i in range(50)))
    await client.close()
    rows = records(audit_db)
    assert [r["seq"] for r in rows] == list(range(1, 51))
    report = verify(audit_db)
    assert report.ok and report.records == 50 and report.head is not None and report.head.count == 50


def test_exported_lines_rehash_to_their_stored_hashes(ferryman_client, audit_db):
    import io

    from ferryman.audit import export

    client = ferryman_client()
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    out = io.StringIO()
    assert export(audit_db, out) == 3
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["hash"] for line in lines] == [r["hash"] for r in records(audit_db)]
    assert all(record_hash(line["prev_hash"], line) == line["hash"] for line in lines)
    assert all(isinstance(line["cost_usd"], str) for line in lines)


# -- PostgreSQL: several writers, one chain --------------------------------------------------


@pytest.fixture
def pg_audit_url(postgres_url: str) -> Iterator[str]:
    """A fresh schema in the test database (other tests' audit rows never mix in), dropped after."""
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.mark.postgres
async def test_two_pipelines_append_to_one_postgres_chain(ferryman_async_client, pg_audit_url):
    first = ferryman_async_client(store={"url": pg_audit_url})
    second = ferryman_async_client(store={"url": pg_audit_url})

    async def calls(client: openai.AsyncOpenAI, n: int) -> None:
        await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(n))
        )

    await asyncio.gather(calls(first, 25), calls(second, 25))
    await first.close()
    await second.close()
    engine = make_engine(pg_audit_url)
    try:
        report = verify(engine)
        assert report.ok, report.problems
        assert report.records == 50 and report.last_seq == 50
        assert report.head is not None and report.head.count == 50
        pruned = Chain(engine, load_key()).prune(cutoff=time.time() + 60)  # everything, in one transaction
        assert pruned.deleted == 50 and pruned.seq == 50
        after = verify(engine)
        assert after.ok and after.records == 0 and after.prune is not None and after.prune.count == 50
    finally:
        engine.dispose()
