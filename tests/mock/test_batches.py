"""``/v1/batches`` on the mock, through the official SDK over real HTTP."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import openai
import pytest

from ferryman import pricing
from ferryman.mock import batch_lines, spec
from ferryman.mock.app import MockApp, key_id
from ferryman.mock.server import BackgroundServer
from ferryman.mock.settings import MockSettings

CHAT = "/v1/chat/completions"
DONE = ("completed", "failed", "cancelled", "expired")


def chat_line(i: int, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say something about {i}."}], **extra}
    return {"custom_id": f"request-{i}", "method": "POST", "url": CHAT, "body": body}


def upload_jsonl(client: openai.OpenAI, lines: list[Any]) -> str:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=("input.jsonl", text.encode()), purpose="batch").id


def create(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT, **extra: Any) -> Any:
    raw = client.batches.with_raw_response.create(
        input_file_id=upload_jsonl(client, lines),
        endpoint=endpoint,
        completion_window="24h",
        **extra,  # type: ignore[arg-type]
    )
    assert spec.response_errors("Batch", raw.http_response.json()) == []
    return raw.parse()


def retrieve(client: openai.OpenAI, batch_id: str) -> Any:
    raw = client.batches.with_raw_response.retrieve(batch_id)
    assert spec.response_errors("Batch", raw.http_response.json()) == []
    return raw.parse()


def wait(client: openai.OpenAI, batch_id: str, until: Any = DONE, timeout: float = 10.0) -> Any:
    """Poll until the batch's status is in ``until`` (or ``until(batch)`` is true)."""
    test = until if callable(until) else (lambda b: b.status in until)
    deadline = time.monotonic() + timeout
    while True:
        batch = retrieve(client, batch_id)
        if test(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {batch}"
        time.sleep(0.01)


def read_jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    raw = client.files.with_raw_response.retrieve(file_id)
    assert spec.response_errors("OpenAIFile", raw.http_response.json()) == []
    assert raw.parse().purpose == "batch_output"
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture
def mock(ferryman_mock):
    ferryman_mock.settings(batch_seconds=0.3)
    return ferryman_mock


def test_chat_batch_runs_every_line_and_bills_at_batch_prices(mock):
    client = mock.client
    created = create(client, [chat_line(i) for i in range(20)], metadata={"job": "nightly"})
    assert created.id.startswith("batch_")
    assert (created.object, created.status, created.endpoint, created.model) == (
        "batch",
        "validating",
        CHAT,
        "gpt-4o-mini",
    )
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"job": "nightly"}
    assert created.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}

    batch = wait(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 20, "completed": 20, "failed": 0}
    assert created.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert (batch.error_file_id, batch.errors, batch.failed_at, batch.cancelled_at) == (None, None, None, None)

    output = read_jsonl(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"request-{i}" for i in range(20))
    usage_sum = {"input": 0, "output": 0}
    cost = Decimal(0)
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        assert spec.response_errors("CreateChatCompletionResponse", body) == []
        usage_sum["input"] += body["usage"]["prompt_tokens"]
        usage_sum["output"] += body["usage"]["completion_tokens"]
        cost += pricing.cost_usd("gpt-4o-mini", body["usage"], tier="batches")
    assert batch.usage.input_tokens == usage_sum["input"]
    assert batch.usage.output_tokens == usage_sum["output"]
    assert batch.usage.total_tokens == usage_sum["input"] + usage_sum["output"]
    assert batch.usage.input_tokens_details.cached_tokens == 0
    assert mock.app.quota.spent[key_id(mock.api_key)] == cost > 0
    # Batch prices are half the synchronous ones.
    full = sum(pricing.cost_usd("gpt-4o-mini", line["response"]["body"]["usage"]) for line in output)
    assert cost == full / 2
    # Batch lines are run in-process: they are not requests in the mock's request log.
    assert all(r["path"] != CHAT for r in mock.requests())


def test_request_counts_grow_while_in_progress(mock):
    mock.settings(batch_seconds=1.5)
    created = create(mock.client, [chat_line(i) for i in range(20)])
    midway = wait(mock.client, created.id, lambda b: b.status == "in_progress" and 0 < b.request_counts.completed < 20)
    assert midway.request_counts.total == 20
    assert midway.in_progress_at is not None and midway.finalizing_at is None
    mock.settings(batch_seconds=0.1)  # read live: the rest runs at the new pace
    assert wait(mock.client, created.id, timeout=3).status == "completed"


def test_embeddings_batch(mock):
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": [f"text {i}", "more"]},
        }
        for i in range(3)
    ]
    batch = wait(mock.client, create(mock.client, lines, endpoint="/v1/embeddings").id)
    assert batch.status == "completed"
    assert batch.request_counts.completed == 3
    output = read_jsonl(mock.client, batch.output_file_id)
    assert {line["custom_id"] for line in output} == {"e0", "e1", "e2"}
    for line in output:
        assert spec.response_errors("CreateEmbeddingResponse", line["response"]["body"]) == []
        assert len(line["response"]["body"]["data"]) == 2
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert batch.usage.output_tokens == 0


def test_failing_lines_go_to_the_error_file(mock):
    lines = [
        chat_line(0),
        chat_line(1, model="gpt-nonexistent"),
        chat_line(2, stream=True),
        chat_line(3),
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini"}},
    ]
    batch = wait(mock.client, create(mock.client, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    assert {line["custom_id"] for line in read_jsonl(mock.client, batch.output_file_id)} == {"request-0", "request-3"}
    errors = {line["custom_id"]: line for line in read_jsonl(mock.client, batch.error_file_id)}
    assert set(errors) == {"request-1", "request-2", "no-messages"}
    unknown = errors["request-1"]["response"]
    assert unknown["status_code"] == 404
    assert unknown["body"]["error"]["code"] == "model_not_found"
    assert errors["request-2"]["response"]["status_code"] == 400
    assert errors["request-2"]["response"]["body"]["error"]["param"] == "stream"
    assert errors["no-messages"]["response"]["body"]["error"]["param"] == "messages"
    for line in errors.values():
        assert line["error"] is None
        assert spec.response_errors("ErrorResponse", line["response"]["body"]) == []


def test_a_batch_whose_every_line_fails_has_no_output_file(mock):
    batch = wait(mock.client, create(mock.client, [chat_line(i, model="gpt-nope") for i in range(3)]).id)
    assert (batch.status, batch.output_file_id) == ("completed", None)
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    assert len(read_jsonl(mock.client, batch.error_file_id)) == 3
    assert batch.usage.total_tokens == 0


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([chat_line(0), chat_line(0)], [("duplicate_custom_id", 2, "custom_id")]),
        (
            [chat_line(0), "{not json", chat_line(2), "[1, 2]"],
            [("invalid_json_line", 2, None), ("invalid_json_line", 4, None)],
        ),
        ([chat_line(0), {**chat_line(1), "url": "/v1/embeddings"}], [("invalid_url", 2, "url")]),
        ([{**chat_line(0), "method": "GET"}], [("invalid_method", 1, "method")]),
        ([{"custom_id": "x", "method": "POST", "url": CHAT}], [("missing_required_parameter", 1, "body")]),
        ([{**chat_line(0), "custom_id": 7}], [("invalid_request", 1, "custom_id")]),
        (["", "   "], [("empty_file", None, None)]),
    ],
)
def test_invalid_input_files_fail_the_batch_naming_the_line(mock, lines, expected):
    batch = wait(mock.client, create(mock.client, lines).id)
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    assert batch.errors.object == "list"
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == expected
    assert all(e.message for e in batch.errors.data)


def test_too_many_requests_fail_the_batch(mock, monkeypatch):
    monkeypatch.setattr(batch_lines, "MAX_REQUESTS", 3)
    batch = wait(mock.client, create(mock.client, [chat_line(i) for i in range(4)]).id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [("batch_request_limit_exceeded", 4)]
    assert wait(mock.client, create(mock.client, [chat_line(i) for i in range(3)]).id).status == "completed"


def test_too_many_embedding_inputs_fail_the_batch(mock, monkeypatch):
    monkeypatch.setattr(batch_lines, "MAX_EMBEDDING_INPUTS", 5)
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": ["a", "b"]},
        }
        for i in range(3)
    ]
    batch = wait(mock.client, create(mock.client, lines, endpoint="/v1/embeddings").id)
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [
        ("embedding_input_limit_exceeded", 3, "body.input")
    ]


def test_create_checks_the_input_file_and_parameters(mock):
    client = mock.client
    with pytest.raises(openai.NotFoundError) as caught:
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id"
    other = client.files.create(file=("notes.jsonl", b"{}\n"), purpose="user_data").id
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=other, endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id"
    good = upload_jsonl(client, [chat_line(0)])
    for bad, param in [
        ({"endpoint": "/v1/fine_tuning/jobs"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
    ]:
        args = {"input_file_id": good, "endpoint": CHAT, "completion_window": "24h", **bad}
        with pytest.raises(openai.BadRequestError) as caught:
            client.batches.create(**args)
        assert caught.value.param == param
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=good, endpoint=CHAT, completion_window="24h", metadata={f"k{i}": "v" for i in range(17)}
        )
    assert caught.value.param == "metadata"
    assert client.batches.list().data == []


def test_output_expires_after_sets_the_output_files_expiry(mock):
    batch = create(mock.client, [chat_line(0)], output_expires_after={"anchor": "created_at", "seconds": 7200})
    output = mock.client.files.retrieve(wait(mock.client, batch.id).output_file_id)
    assert output.expires_at == output.created_at + 7200
    assert output.filename == f"{batch.id}_output.jsonl"


def test_cancel_keeps_partial_results(mock):
    mock.settings(batch_seconds=30)
    client = mock.client
    created = create(client, [chat_line(i) for i in range(20)])
    mock.settings(batch_seconds=3)  # read live, even by the running batch: now each line takes ~0.12 s
    wait(client, created.id, lambda b: b.request_counts.completed >= 2, timeout=8)
    raw = client.batches.with_raw_response.cancel(created.id)
    assert spec.response_errors("Batch", raw.http_response.json()) == []
    cancelling = raw.parse()
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait(client, created.id, timeout=2)
    assert batch.status == "cancelled" and batch.cancelled_at is not None and batch.completed_at is None
    done = batch.request_counts.completed
    assert 2 <= done < 20 and batch.request_counts.total == 20
    assert len(read_jsonl(client, batch.output_file_id)) == done
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        client.batches.cancel(created.id)


def test_cancel_while_validating_and_after_completion(mock):
    mock.settings(batch_seconds=60)
    client = mock.client
    created = create(client, [chat_line(0)])
    assert client.batches.cancel(created.id).status == "cancelling"
    batch = wait(client, created.id, timeout=2)
    assert (batch.status, batch.output_file_id, batch.request_counts.completed) == ("cancelled", None, 0)

    mock.settings(batch_seconds=0.1)
    finished = wait(client, create(client, [chat_line(0)]).id)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
        client.batches.cancel(finished.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.batches.cancel("batch_nope")
    assert caught.value.code == "batch_not_found"


def test_list_is_newest_first_and_paginates(mock):
    mock.settings(batch_seconds=60)
    client = mock.client
    ids = [create(client, [chat_line(i)]).id for i in range(3)]
    raw = client.batches.with_raw_response.list(limit=2)
    body = raw.http_response.json()
    assert spec.response_errors("ListBatchesResponse", body) == []
    assert [b["id"] for b in body["data"]] == [ids[2], ids[1]]
    assert (body["first_id"], body["last_id"], body["has_more"]) == (ids[2], ids[1], True)
    rest = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in rest.data] == [ids[0]] and rest.has_more is False
    assert [b.id for b in client.batches.list(limit=1)] == list(reversed(ids))  # SDK auto-pagination
    assert [b.id for b in client.batches.list()] == list(reversed(ids))
    for limit in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=limit)
    with pytest.raises(openai.NotFoundError, match="No batch found"):
        client.batches.retrieve("batch_nope")


def test_a_batch_survives_a_restart(tmp_path):
    lines = [chat_line(i) for i in range(5)]
    first = MockApp(MockSettings(state_dir=tmp_path, batch_seconds=4))
    with BackgroundServer(first) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        created = create(client, lines, metadata={"run": "1"})
        file_id = created.input_file_id
        wait(client, created.id, lambda b: b.request_counts.completed >= 1, timeout=5)
        client.close()
    # The server stopped mid-run: the batch is on disk, unfinished.
    assert json.loads((tmp_path / "batches" / f"{created.id}.json").read_bytes())["status"] == "in_progress"

    second = MockApp(MockSettings(state_dir=tmp_path, batch_seconds=0.3))
    with BackgroundServer(second) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        assert client.files.retrieve(file_id).purpose == "batch"
        assert client.files.content(file_id).text.count("\n") == 5
        batch = wait(client, created.id)
        assert batch.status == "completed"
        assert batch.metadata == {"run": "1"}
        assert batch.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
        output = read_jsonl(client, batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
        client.close()


def test_responses_and_moderations_batches(mock):
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": f"Tell me about {i}."},
        }
        for i in range(2)
    ]
    batch = wait(mock.client, create(mock.client, lines, endpoint="/v1/responses").id)
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 2, "failed": 0}
    output = read_jsonl(mock.client, batch.output_file_id)
    for line in output:
        assert spec.response_errors("Response", line["response"]["body"]) == []
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["input_tokens"] for line in output)
    assert batch.usage.output_tokens == sum(line["response"]["body"]["usage"]["output_tokens"] for line in output)

    lines = [
        {
            "custom_id": "m",
            "method": "POST",
            "url": "/v1/moderations",
            "body": {"model": "omni-moderation-latest", "input": "hello"},
        }
    ]
    batch = wait(mock.client, create(mock.client, lines, endpoint="/v1/moderations").id)
    assert batch.request_counts.completed == 1
    [line] = read_jsonl(mock.client, batch.output_file_id)
    assert spec.response_errors("CreateModerationResponse", line["response"]["body"]) == []


def test_lines_past_the_quota_fail_with_insufficient_quota(mock):
    mock.set_limits(quota_usd=0.000_000_1)  # the first line's cost uses it up
    batch = wait(mock.client, create(mock.client, [chat_line(i) for i in range(3)]).id)
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    errors = read_jsonl(mock.client, batch.error_file_id)
    assert [line["response"]["status_code"] for line in errors] == [429, 429]
    assert {line["response"]["body"]["error"]["type"] for line in errors} == {"insufficient_quota"}
