"""The telemetry stage: Prometheus metrics, OpenTelemetry GenAI spans, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from ferryman.config import Settings
from ferryman.exchange import Exchange, Reply
from ferryman.logs import configure_json_logging, remove_json_logging
from ferryman.pipeline import telemetry
from ferryman.pipeline.telemetry import (
    REGISTRY,
    Telemetry,
    TelemetryError,
    endpoint_label,
    model_label,
    token_counts,
)
from ferryman.pipeline.telemetry_otel import Tracing
from ferryman.transport import FerrymanTransport

MESSAGES = [{"role": "user", "content": "hi"}]
TAGS = "ferryman-tags"
LEAKY_KEY = "sk-telemetry-test-key-abcdef"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chat(model: str = "gpt-4o-mini", endpoint: str = "/chat/completions", status: str = "200") -> float:
    return sample("ferryman_requests_total", endpoint=endpoint, model=model, deployment="mock", status=status)


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider.get_tracer("test")), exporter
    provider.shutdown()


def sdk_on(pipeline: Any) -> openai.OpenAI:
    http = httpx2.Client(transport=FerrymanTransport(pipeline))
    return openai.OpenAI(base_url="http://ferryman.test/v1", api_key="placeholder", http_client=http, max_retries=0)


async def run_stage(stage: Telemetry, reply: Reply | BaseException, **fields: Any) -> tuple[Exchange, Reply]:
    """Drive the stage alone: the inner call fills ``fields`` into the exchange, then answers."""
    exchange = Exchange.build("POST", "/chat/completions", {}, json.dumps({"model": "gpt-4o-mini"}).encode())

    async def inner(ex: Exchange) -> Reply:
        for name, value in fields.items():
            setattr(ex, name, value)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return exchange, await stage.handle(exchange, inner)


# -- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/chat/completions", "/chat/completions"),
        ("/files/file-abc123/content", "/files/{id}/content"),
        ("/fine_tuning/jobs/ftjob-9/events", "/fine_tuning/jobs/{id}/events"),
        ("/responses/resp_1/input_items", "/responses/{id}/input_items"),
        ("/files/a/b/c/d", "/files/…"),
        ("/sk-label-key-0123456789/x", "other"),
        ("", "other"),
    ],
)
def test_endpoint_labels_are_templates(path, label):
    assert endpoint_label(path) == label


def test_model_labels_are_bounded_and_secret_free():
    assert model_label("gpt-4o-mini") == "gpt-4o-mini"
    assert model_label("gpt-made-up-7") == "other"
    assert model_label(LEAKY_KEY) == "other"
    fine_tuned = "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
    assert model_label(fine_tuned) == "ft:gpt-4o-mini-2024-07-18"  # never the org, suffix or id
    assert LEAKY_KEY not in model_label(f"ft:gpt-4o-mini:{LEAKY_KEY}:x")
    assert len(model_label("ft:" + "x" * 200)) <= 96
    assert model_label(None) == "none"


def test_token_counts_read_both_usage_shapes():
    chat_usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    responses_usage = {"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"cached_tokens": None}}
    assert token_counts(chat_usage) == (10, 4, 5, 2)
    assert token_counts(responses_usage) == (7, 0, 3, 0)
    assert token_counts(None) == (0, 0, 0, 0)
    assert token_counts({"prompt_tokens": "lots", "completion_tokens": True}) == (0, 0, 0, 0)


# -- Prometheus through the SDK -----------------------------------------------------------------


def test_a_plain_call_counts_request_tokens_cost_and_durations(ferryman_client):
    client = ferryman_client()
    before = (
        chat(),
        sample("ferryman_request_duration_seconds_count", endpoint="/chat/completions", model="gpt-4o-mini"),
        sample("ferryman_overhead_seconds_count"),
        sample("ferryman_tokens_total", model="gpt-4o-mini", kind="input"),
        sample("ferryman_tokens_total", model="gpt-4o-mini", kind="output"),
        sample("ferryman_cost_usd_total", model="gpt-4o-mini"),
    )
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
    after = (
        chat(),
        sample("ferryman_request_duration_seconds_count", endpoint="/chat/completions", model="gpt-4o-mini"),
        sample("ferryman_overhead_seconds_count"),
        sample("ferryman_tokens_total", model="gpt-4o-mini", kind="input"),
        sample("ferryman_tokens_total", model="gpt-4o-mini", kind="output"),
        sample("ferryman_cost_usd_total", model="gpt-4o-mini"),
    )
    assert after[:3] == (before[0] + 1, before[1] + 1, before[2] + 1)
    assert reply.usage is not None
    assert after[3] - before[3] == reply.usage.prompt_tokens
    assert after[4] - before[4] == reply.usage.completion_tokens
    assert after[5] > before[5]


def test_a_stream_is_recorded_when_it_ends_with_time_to_first_token(ferryman_client):
    client = ferryman_client()
    ttft = sample("ferryman_time_to_first_token_seconds_count", model="gpt-4o-mini")
    output = sample("ferryman_tokens_total", model="gpt-4o-mini", kind="output")
    before = chat()
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert chat() == before  # the reply is back, but the stream has not ended
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert chat() == before + 1
    assert sample("ferryman_time_to_first_token_seconds_count", model="gpt-4o-mini") == ttft + 1
    # The usage the account stage read from the stream's end is counted (the SDK stops at [DONE]).
    assert sample("ferryman_tokens_total", model="gpt-4o-mini", kind="output") > output


def test_a_stream_the_caller_abandons_is_recorded_once(ferryman_client):
    client = ferryman_client()
    before = chat()
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    assert chat() == before + 1


def test_unknown_models_are_labelled_other(ferryman_client):
    client = ferryman_client(retry={"max_attempts": 1})
    before = chat(model="other", status="404")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope-unknown", messages=MESSAGES)
    assert chat(model="other", status="404") == before + 1
    assert "gpt-nope-unknown" not in generate_latest(REGISTRY).decode()


# -- Prometheus: what inner stages learned ------------------------------------------------------


async def test_retries_429s_cache_hits_and_budget_refusals_come_from_the_exchange():
    stage = Telemetry()
    deployment = SimpleNamespace(name="east", settings=SimpleNamespace(base_url="https://east.example/v1"))
    retries, limited, hits = (
        sample("ferryman_retries_total", deployment="east"),
        sample("ferryman_upstream_429_total", deployment="east"),
        sample("ferryman_cache_hits_total"),
    )
    notes = {"retries": 2, "upstream_429s": 1}
    await run_stage(stage, Reply(200, body=b"{}"), deployment=deployment, notes=notes, cache="hit")
    assert sample("ferryman_retries_total", deployment="east") == retries + 2
    assert sample("ferryman_upstream_429_total", deployment="east") == limited + 1
    assert sample("ferryman_cache_hits_total") == hits + 1

    refused = sample("ferryman_budget_refusals_total", scope="tag")
    error = {"message": "Over budget", "type": "insufficient_quota", "param": "tag:team=a", "code": "budget_exceeded"}
    await run_stage(stage, Reply.of_json(429, {"error": error}))
    assert sample("ferryman_budget_refusals_total", scope="tag") == refused + 1


def test_a_budget_refusal_through_the_pipeline_is_counted_by_scope(ferryman_client):
    client = ferryman_client(budgets=[{"scope": "tag:team=a", "usd": "0.000000001"}], retry={"max_attempts": 1})
    before = sample("ferryman_budget_refusals_total", scope="tag")
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={TAGS: "team=a"})
    assert caught.value.code == "budget_exceeded"
    assert sample("ferryman_budget_refusals_total", scope="tag") == before + 1


async def test_missing_or_odd_fields_count_as_zero():
    stage = Telemetry()
    tokens = generate_latest(REGISTRY).decode().count("ferryman_tokens_total{")
    before = sample("ferryman_requests_total", endpoint="/chat/completions", model="gpt-4o-mini", deployment="none",
                    status="200")  # fmt: skip
    await run_stage(stage, Reply(200), usage={"prompt_tokens": None}, notes={"retries": "many"}, cost_usd=None)
    after = sample("ferryman_requests_total", endpoint="/chat/completions", model="gpt-4o-mini", deployment="none",
                   status="200")  # fmt: skip
    assert after == before + 1
    assert generate_latest(REGISTRY).decode().count("ferryman_tokens_total{") == tokens


async def test_a_failed_call_is_counted_as_error_and_reraised():
    stage = Telemetry()
    before = sample("ferryman_requests_total", endpoint="/chat/completions", model="gpt-4o-mini", deployment="none",
                    status="error")  # fmt: skip
    with pytest.raises(httpx2.ConnectError):
        await run_stage(stage, httpx2.ConnectError("refused"))
    after = sample("ferryman_requests_total", endpoint="/chat/completions", model="gpt-4o-mini", deployment="none",
                   status="error")  # fmt: skip
    assert after == before + 1


async def test_a_telemetry_failure_never_breaks_the_call(spans, caplog, monkeypatch):
    tracing, exporter = spans

    def broken(model: str | None) -> str:
        raise RuntimeError("a bug in telemetry")

    monkeypatch.setattr(telemetry, "model_label", broken)
    reply = Reply(200, body=b"{}")
    _, got = await run_stage(Telemetry(tracing=tracing), reply)
    assert got is reply
    assert "telemetry could not record" in caplog.text
    assert len(exporter.get_finished_spans()) == 1  # the span still ended


async def test_error_bodies_that_echo_a_key_are_redacted():
    error = {"message": f"Incorrect API key provided: {LEAKY_KEY}", "type": "invalid_request_error"}
    _, reply = await run_stage(Telemetry(), Reply.of_json(401, {"error": error}))
    assert LEAKY_KEY not in reply.body.decode()
    assert "[REDACTED]" in reply.json()["error"]["message"]


def test_all_telemetry_off_leaves_the_stage_out(ferryman_settings):
    settings = ferryman_settings(telemetry={"prometheus": False, "otel": False, "json_logs": False})
    assert Telemetry.from_settings(settings) is None


async def test_prometheus_off_records_nothing():
    before = generate_latest(REGISTRY)
    await run_stage(Telemetry(prometheus=False), Reply(200), cost_usd=Decimal("0.5"))
    assert generate_latest(REGISTRY) == before


# -- OpenTelemetry ------------------------------------------------------------------------------


def test_a_chat_span_carries_genai_attributes(ferryman_pipeline, spans):
    tracing, exporter = spans
    pipeline = ferryman_pipeline(telemetry={"otel": True})
    pipeline.stage(Telemetry).tracing = tracing
    reply = sdk_on(pipeline).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=12, temperature=0.5
    )
    (span,) = exporter.get_finished_spans()
    a = span.attributes
    assert span.name == "chat gpt-4o-mini"
    assert span.kind.name == "CLIENT"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 12
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.response.id"] == reply.id
    assert a["gen_ai.response.model"] == reply.model
    assert a["gen_ai.response.finish_reasons"] == (reply.choices[0].finish_reason,)
    assert reply.usage is not None
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert a["server.address"] == "127.0.0.1"
    assert isinstance(a["server.port"], int)
    assert "error.type" not in a


def test_a_stream_span_ends_with_the_stream(ferryman_pipeline, spans):
    tracing, exporter = spans
    pipeline = ferryman_pipeline(telemetry={"otel": True})
    pipeline.stage(Telemetry).tracing = tracing
    stream = sdk_on(pipeline).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert exporter.get_finished_spans() == ()
    chunks = list(stream)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["gen_ai.response.id"] == chunks[0].id
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.attributes["ferryman.stream.completed"] is True


def test_embeddings_and_responses_operations(ferryman_pipeline, spans):
    tracing, exporter = spans
    pipeline = ferryman_pipeline(telemetry={"otel": True})
    pipeline.stage(Telemetry).tracing = tracing
    client = sdk_on(pipeline)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    client.responses.create(model="gpt-4o-mini", input="hello")
    embeddings, responses = exporter.get_finished_spans()
    assert (embeddings.name, embeddings.attributes["gen_ai.operation.name"]) == (
        "embeddings text-embedding-3-small",
        "embeddings",
    )
    assert (responses.name, responses.attributes["gen_ai.operation.name"]) == ("chat gpt-4o-mini", "chat")
    assert responses.attributes["gen_ai.response.finish_reasons"] == ("completed",)


def test_an_error_reply_sets_error_type(ferryman_pipeline, spans):
    tracing, exporter = spans
    pipeline = ferryman_pipeline(telemetry={"otel": True}, retry={"max_attempts": 1})
    pipeline.stage(Telemetry).tracing = tracing
    with pytest.raises(openai.NotFoundError):
        sdk_on(pipeline).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["error.type"] == "model_not_found"
    assert span.status.status_code.name == "ERROR"


async def test_an_exception_is_recorded_redacted(spans):
    tracing, exporter = spans
    with pytest.raises(httpx2.ConnectError):
        await run_stage(Telemetry(prometheus=False, tracing=tracing), httpx2.ConnectError(f"refused {LEAKY_KEY}"))
    (span,) = exporter.get_finished_spans()
    assert span.attributes["error.type"] == "ConnectError"
    (event,) = span.events
    assert LEAKY_KEY not in str(event.attributes) + str(span.status.description)
    assert "[REDACTED]" in event.attributes["exception.message"]


def test_otel_on_without_opentelemetry_is_a_clear_startup_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    settings = Settings(telemetry={"otel": True}, deployments=[{"name": "x", "api_keys": []}])
    with pytest.raises(TelemetryError, match=r"ferryman\[otel\]"):
        Telemetry.from_settings(settings)


# -- JSON logs ----------------------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_json_logging("INFO", stream=stream)
    yield stream
    remove_json_logging()


def test_one_json_line_per_call_without_bodies_or_headers(ferryman_client, json_lines):
    client = ferryman_client(telemetry={"json_logs": True})
    secret_prompt = [{"role": "user", "content": "the body must not be logged"}]
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=secret_prompt, extra_headers={"ferryman-tags": "team=search"}
    )
    (line,) = [json.loads(x) for x in json_lines.getvalue().splitlines() if '"ferryman.telemetry"' in x]
    assert line["level"] == "INFO"
    assert line["time"].endswith("Z")
    assert (line["model"], line["endpoint"], line["status"]) == ("gpt-4o-mini", "/chat/completions", 200)
    assert line["request_id"] == reply._request_id
    assert line["attempts"] >= 1
    assert line["latency_ms"] > 0
    assert line["cache"] == "off"
    assert line["tags"] == {"team": "search"}
    assert line["cost_usd"] > 0
    text = json_lines.getvalue()
    assert "must not be logged" not in text
    assert "authorization" not in text.lower()


def test_from_settings_installs_the_json_handler_once(ferryman_settings):
    try:
        settings = ferryman_settings(telemetry={"json_logs": True})
        Telemetry.from_settings(settings)
        Telemetry.from_settings(settings)
        handlers = [h for h in logging.getLogger("ferryman").handlers if getattr(h, "ferryman_json", False)]
        assert len(handlers) == 1
    finally:
        remove_json_logging()
