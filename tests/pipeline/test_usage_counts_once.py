"""Usage counts once: only the call that spends tokens records them. A poll, retrieve or list
whose body repeats a ``usage`` object (a finished batch, a stored response) records zero, so the
audit log (and the dashboard and reports over it) add each token once; the numbers are checked
against the replies' own ``usage``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select

from ferryman.store.tables import audit

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


def records(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def tokens(row: dict[str, Any]) -> tuple[int, int]:
    return row["input_tokens"], row["output_tokens"]


def test_a_batch_polled_many_times_adds_no_tokens(ferryman_client, ferryman_mock, audit_db):
    ferryman_mock.settings(batch_seconds=0)
    client = ferryman_client()
    lines = [
        {"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20}}
        for i in range(3)
    ]  # fmt: skip
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(200):  # the mock finishes a batch of batch_seconds=0 on the next look
        batch = client.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
    for _ in range(10):
        again = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and again.usage is not None and again.usage.total_tokens > 0  # the test bites
    polls = [r for r in records(audit_db) if r["endpoint"].startswith("/batches/")]
    assert len(polls) >= 11
    assert all(tokens(r) == (0, 0) and r["cached_tokens"] == 0 and r["reasoning_tokens"] == 0 for r in polls)
    assert sum(r["input_tokens"] + r["output_tokens"] for r in records(audit_db)) == 0


def test_a_stored_response_retrieved_counts_once(ferryman_client, audit_db):
    client = ferryman_client()
    created = client.responses.create(model="gpt-4o-mini", input="Say hello in five words.", store=True)
    for _ in range(3):
        fetched = client.responses.retrieve(created.id)
    assert fetched.usage is not None and fetched.usage.input_tokens == created.usage.input_tokens
    rows = records(audit_db)
    [spent] = [r for r in rows if r["endpoint"] == "/responses"]
    assert tokens(spent) == (created.usage.input_tokens, created.usage.output_tokens)
    retrieves = [r for r in rows if r["endpoint"].startswith("/responses/")]
    assert len(retrieves) == 3 and all(tokens(r) == (0, 0) for r in retrieves)
    total = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    assert total == created.usage.input_tokens + created.usage.output_tokens


def test_the_calls_that_spend_tokens_still_record_them(ferryman_client, audit_db):
    client = ferryman_client()
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    streamed = [c for c in stream]
    embedded = client.embeddings.create(model="text-embedding-3-small", input=["ferry", "man"])
    rows = records(audit_db)
    assert tokens(rows[0]) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert rows[1]["output_tokens"] > 0 and streamed
    assert rows[2]["input_tokens"] == embedded.usage.prompt_tokens
