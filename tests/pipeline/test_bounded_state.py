"""Callers naming ever new models, tags and paths cannot grow Ferryman's state.

Metric labels come from bounded sets (no key id, tag, fine-tune suffix or other caller-supplied
string), the pacing lanes and their buckets are capped (least recently used idle lane out; a lane
with a call queued or in flight is never dropped), and the access log's fields are cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from ferryman.config import DeploymentSettings, PacingSettings, Settings
from ferryman.exchange import Exchange, Reply
from ferryman.gateway.access_log import FIELD_MAX, QUERY_NAMES_MAX, AccessLog, query_names
from ferryman.pipeline.buckets import MAX_LANES as BUCKETS_MAX
from ferryman.pipeline.buckets import Cost, MemoryBuckets, Seed
from ferryman.pipeline.chain import Pipeline
from ferryman.pipeline.pacing import KEY_MODEL_MAX, MAX_LANES, Pacing, lane_key
from ferryman.pipeline.telemetry import (
    REGISTRY,
    Telemetry,
    configured_models,
    deployment_label,
    endpoint_label,
    model_label,
    scope_label,
    status_label,
)

MESSAGES = [{"role": "user", "content": "hi"}]
# Built at run time: no key-shaped literal in the source.
LEAKY_KEY = "-".join(("sk", "bounded", "state", "test", "key", "0123456789abcdef"))
GROWTH_MAX = 20 * 1024


def exposition() -> bytes:
    return generate_latest(REGISTRY)


def random_model(i: int) -> str:
    if i % 3 == 0:
        return f"ft:gpt-4o-mini:org:secretproj-{uuid.uuid4().hex[:8]}:{uuid.uuid4().hex[:8]}"
    if i % 3 == 1:
        return f"random-{uuid.uuid4()}"
    return f"ft:nobase-{uuid.uuid4().hex[:6]}:org:secretproj-{uuid.uuid4().hex[:6]}:x"


def random_tags() -> tuple[str, str]:
    team, feature = f"tagteam{uuid.uuid4().hex[:10]}", f"tagfeat{uuid.uuid4().hex[:10]}"
    return team, f"team={team},feature={feature}"


def chat(model: str, tags: str = "", path: str = "/chat/completions", **headers: str) -> Exchange:
    sent = {"content-type": "application/json", **headers}
    if tags:
        sent["ferryman-tags"] = tags
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": 8}).encode()
    return Exchange.build("POST", path, sent, body)


# -- labels ---------------------------------------------------------------------------------------


def test_model_labels_name_only_known_models():
    assert model_label("gpt-4o-mini") == "gpt-4o-mini"
    assert model_label("gpt-4o-mini-2024-07-18") == "gpt-4o-mini-2024-07-18"  # a snapshot the table lists
    assert model_label("gpt-4o-mini-2031-02-03") == "gpt-4o-mini"  # one it does not: its family
    assert model_label("random-2031-02-03") == "other"
    assert model_label("ft:gpt-4o-mini-2024-07-18:acme:secretproj:abc123") == "ft:gpt-4o-mini-2024-07-18"
    assert model_label("ft:gpt-4o-mini:acme:secretproj:abc123") == "ft:gpt-4o-mini"
    assert model_label("ft:unknown-base:acme:secretproj:abc123") == "other"
    assert model_label(f"ft:gpt-4o-mini:{LEAKY_KEY}:x") == "ft:gpt-4o-mini"
    assert model_label("ft:") == model_label("ft::::") == "other"
    assert model_label(LEAKY_KEY) == "other"
    assert model_label("gpt-4o-mini" * 100) == "other"
    assert model_label("x" * 8 * 1024 * 1024) == "other"
    assert model_label(None) == model_label("") == "none"


def test_configured_models_are_labels_globs_and_secrets_are_not(ferryman_settings):
    settings: Settings = ferryman_settings(
        routing={"aliases": {"fast": ["house-model-1", "gpt-4o-mini"]}},
        deployments=[
            {"name": "a", "api_keys": [], "models": ["house-model-*", "house-model-2", "ft:house-model-2:o:s:i"]},
            {"name": "b", "api_keys": [], "kind": "azure", "azure_deployments": {"house-model-3": "dep3"}},
            {"name": "c", "api_keys": [], "models": [LEAKY_KEY]},
        ],
    )
    known = configured_models(settings)
    assert {"fast", "house-model-1", "house-model-2", "house-model-3"} <= known
    assert "house-model-*" not in known and LEAKY_KEY not in known
    assert model_label("fast", known) == "fast"
    assert model_label("house-model-9", known) == "other"  # matched by a glob only
    assert model_label("ft:house-model-2:o:secretproj:i", known) == "ft:house-model-2"  # never the suffix
    assert model_label(LEAKY_KEY, known) == "other"


def test_deployment_status_scope_and_endpoint_labels_are_bounded():
    def on(name: Any) -> Exchange:
        exchange = chat("gpt-4o-mini")
        exchange.deployment = SimpleNamespace(name=name) if name is not None else None  # type: ignore[assignment]
        return exchange

    configured = frozenset({"east", "west"})
    assert deployment_label(on("east"), configured) == "east"
    assert deployment_label(on("made-up"), configured) == "other"
    assert deployment_label(on(None), configured) == "none"
    assert status_label(200) == "200" and status_label(599) == "599"
    assert status_label(99) == status_label(600) == status_label(-1) == status_label("teapot") == "other"
    assert status_label("error") == "error" and status_label("cancelled") == "cancelled"
    assert scope_label("key:kid_0123456789") == "key"
    assert scope_label("team:acme") == "team"
    assert scope_label("tag:team=secret-value") == "tag"
    assert scope_label("process") == "process"
    assert scope_label(LEAKY_KEY) == scope_label("whatever:x") == "other"
    assert endpoint_label("/files/file-" + "x" * 100_000 + "/content") == "/files/{id}/content"
    assert endpoint_label("/" + "y" * 100_000) == "other"


# -- the telemetry stage, driven alone --------------------------------------------------------------


async def _drive(stage: Telemetry, exchange: Exchange, reply: Reply, **fields: Any) -> None:
    async def inner(ex: Exchange) -> Reply:
        for name, value in fields.items():
            setattr(ex, name, value)
        return reply

    await stage.handle(exchange, inner)


def _budget_refusal(scope: str) -> Reply:
    error = {
        "message": f"Ferryman budget exceeded for scope '{scope}' (day 2026-01-01): ...",
        "type": "insufficient_quota",
        "param": scope,
        "code": "budget_exceeded",
    }
    return Reply.of_json(429, {"error": error})


async def test_5000_random_models_and_tags_add_no_series_to_the_stage():
    stage = Telemetry(deployments=frozenset({"mock"}))
    deployment = SimpleNamespace(name="mock", settings=SimpleNamespace(base_url="https://mock.example/v1"))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    tag_values: list[str] = []

    async def one(i: int) -> None:
        team, tags = random_tags()
        tag_values.append(team)
        exchange = chat(random_model(i), tags, path=f"/chat/completions/chatcmpl-{uuid.uuid4().hex}")
        kind = i % 5
        if kind == 0:  # an upstream refusal of an unknown model
            reply = Reply.of_json(404, {"error": {"message": "no such model", "code": "model_not_found"}})
            await _drive(stage, exchange, reply, deployment=deployment)
        elif kind == 1:  # a budget refusal on a per-tag counter
            await _drive(stage, exchange, _budget_refusal(f"tag:team={team}"))
        elif kind == 2:  # a per-key counter, with retries named by an unknown deployment
            notes = {"budget_scope": f"key:kid_{uuid.uuid4().hex}", "retries": {f"dep-{team}": 1}}
            await _drive(stage, exchange, _budget_refusal("key"), notes=notes)
        else:  # a reply that was billed
            await _drive(stage, exchange, Reply(200, body=b"{}"), deployment=deployment, usage=usage,
                          cost_usd=Decimal("0.001"), notes={"upstream_429s": {f"dep-{team}": 1}})  # fmt: skip

    for i in range(50):  # warm-up: every label combination this test can make exists now
        await one(i)
    before = exposition()
    for i in range(5_000):
        await one(i)
    after = exposition()
    text = after.decode()
    print(f"\ntelemetry stage: exposition {len(before)} -> {len(after)} bytes after 5,000 calls")
    assert len(after) - len(before) < GROWTH_MAX
    assert "secretproj" not in text and "random-" not in text and "nobase" not in text
    assert "tagteam" not in text and "tagfeat" not in text and "kid_" not in text and "dep-" not in text
    assert 'scope="tag"' in text and 'scope="key"' in text
    assert 'model="ft:gpt-4o-mini"' in text and 'endpoint="/chat/completions/{id}"' in text


# -- the whole pipeline against the mock ----------------------------------------------------------


async def test_calls_through_the_pipeline_add_no_series(ferryman_pipeline: Callable[..., Pipeline]):
    pipeline = ferryman_pipeline(
        budgets=[{"scope": "tag:team", "usd": "0.000000001"}, {"scope": "key", "usd": "1000"}],
        retry={"max_attempts": 1},
    )
    secrets_seen: list[str] = []
    statuses: set[int] = set()

    async def one(i: int) -> None:
        team, tags = random_tags()
        secrets_seen.append(team)
        # Known models with a random tag are refused by the per-tag budget; random models
        # (no price, nothing reserved) go upstream and the mock refuses them.
        model = "gpt-4o-mini" if i % 4 == 0 else random_model(i)
        reply = await pipeline(chat(model, tags))
        statuses.add(reply.status)

    try:
        for i in range(40):
            await one(i)
        before = exposition()
        for i in range(400):
            await one(i)
        after = exposition()
    finally:
        await pipeline.terminal.aclose()  # type: ignore[attr-defined]
    text = after.decode()
    print(f"\npipeline: exposition {len(before)} -> {len(after)} bytes after 400 calls, statuses {sorted(statuses)}")
    assert 429 in statuses and len(statuses) > 1
    assert len(after) - len(before) < GROWTH_MAX
    assert "secretproj" not in text and "random-" not in text
    assert not any(team in text for team in secrets_seen)
    pacing = pipeline.stage(Pacing)
    assert isinstance(pacing, Pacing) and isinstance(pacing.buckets, MemoryBuckets)
    assert pacing.lane_count() <= MAX_LANES and len(pacing.buckets.lanes) <= BUCKETS_MAX


# -- pacing ---------------------------------------------------------------------------------------


LIMITS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "1000000",
    "x-ratelimit-remaining-tokens": "999000",
    "x-ratelimit-reset-tokens": "60ms",
}


def pacing_stage(max_lanes: int = MAX_LANES, **deployment: Any) -> Pacing:
    buckets = MemoryBuckets(max_lanes=max_lanes)
    return Pacing(PacingSettings(max_wait_s=5), [DeploymentSettings(name="d", **deployment)], buckets, max_lanes)


async def test_5000_random_models_keep_pacing_within_its_caps():
    pacing = pacing_stage()
    assert isinstance(pacing.buckets, MemoryBuckets)

    async def upstream(exchange: Exchange) -> Reply:
        return Reply(200, dict(LIMITS))

    for i in range(5_000):
        reply = await pacing.handle(chat(random_model(i)), upstream)
        assert reply.status == 200
    print(f"\npacing: {pacing.lane_count()} lanes, {len(pacing.buckets.lanes)} buckets after 5,000 models")
    assert pacing.lane_count() <= MAX_LANES
    assert len(pacing.buckets.lanes) <= BUCKETS_MAX
    assert max(len(key) for key in pacing.buckets.lanes) < 2 * KEY_MODEL_MAX


async def test_a_small_cap_holds_and_the_known_lane_stays():
    pacing = pacing_stage(max_lanes=16, rpm=100_000)
    assert isinstance(pacing.buckets, MemoryBuckets)

    async def upstream(exchange: Exchange) -> Reply:
        return Reply(200, dict(LIMITS))

    for i in range(500):
        await pacing.handle(chat("gpt-4o-mini"), upstream)  # the lane in use: always the youngest
        await pacing.handle(chat(random_model(i)), upstream)
        assert pacing.lane_count() <= 16 and len(pacing.buckets.lanes) <= 16
    assert "d|gpt-4o-mini" in pacing.buckets.lanes


async def test_a_lane_with_a_call_in_flight_or_queued_is_never_evicted():
    pacing = pacing_stage(max_lanes=4)  # unseeded: the first call is a probe, the next waits for it
    release = asyncio.Event()

    async def slow(exchange: Exchange) -> Reply:
        await release.wait()
        return Reply(200, dict(LIMITS))

    async def quick(exchange: Exchange) -> Reply:
        return Reply(200)  # no headers: the lane is learned to be open

    probe = asyncio.create_task(pacing.handle(chat("gpt-4o-mini"), slow))
    for _ in range(5):
        await asyncio.sleep(0)
    waiter = asyncio.create_task(pacing.handle(chat("gpt-4o-mini"), quick))
    for _ in range(5):
        await asyncio.sleep(0)
    held = pacing.lane("d|gpt-4o-mini")
    assert held.probing and not held.idle
    for i in range(50):
        await pacing.handle(chat(random_model(i)), quick)
    assert pacing.lane("d|gpt-4o-mini") is held  # still the same lane: probe and waiter kept
    assert pacing.lane_count() <= 4 + 1
    release.set()
    first, second = await asyncio.wait_for(asyncio.gather(probe, waiter), 5)
    assert first.status == second.status == 200
    assert held.idle and held.in_flight == {}


async def test_memory_buckets_are_capped_and_keep_paused_lanes():
    now = [0.0]
    buckets = MemoryBuckets(clock=lambda: now[0], max_lanes=8)
    seed = Seed(requests=60)
    await buckets.pause("paused", 30.0, seed)
    for i in range(100):
        now[0] += 0.01
        await buckets.take(f"lane-{i}", Cost(1, 0), seed)
        assert len(buckets.lanes) <= 8
    assert "paused" in buckets.lanes  # passed over while it is paused
    assert await buckets.take("paused", Cost(1, 0), seed) > 0
    now[0] += 31
    for i in range(20):
        await buckets.take(f"later-{i}", Cost(1, 0), seed)
    assert "paused" not in buckets.lanes and len(buckets.lanes) <= 8


def test_long_model_names_make_short_lane_keys():
    huge = "m" * 8 * 1024 * 1024
    key = lane_key("d", huge)
    assert len(key) < 2 * KEY_MODEL_MAX
    assert key == lane_key("d", huge) and key != lane_key("d", huge + "n")
    assert lane_key("d", "gpt-4o-mini") == "d|gpt-4o-mini"


# -- the access log -------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_log_fields_are_capped():
    access = logging.getLogger("ferryman.access")
    lines = _Lines()
    access.addHandler(lines)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        huge = "m" * 8 * 1024 * 1024
        exchange = chat("x")
        exchange.model = huge
        exchange.request_id = "req_" + "r" * 100_000
        exchange.error = "e" * 100_000
        query = "&".join(f"name{i}=v" for i in range(1_000)) + "&" + "q" * 50_000 + "=1"
        scope = {"query_string": query.encode(), "client": ("127.0.0.1", 1)}
        path = "/files/" + "p" * 238 + "/" + LEAKY_KEY + "/" + "p" * 100_000  # the key across the cut
        AccessLog().write("POST", path, 404, 0.0, "kid_1", exchange, scope)
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
    (record,) = lines.records
    fields: dict[str, Any] = record.__dict__
    for name in ("path", "model", "request_id", "error"):
        assert len(fields[name]) <= FIELD_MAX and fields[name].endswith("…"), name
    assert "sk-bo" not in fields["path"] and fields["path"].endswith("/[REDAC…")  # redacted whole, then cut
    assert len(fields["query_params"]) == QUERY_NAMES_MAX + 1 and fields["query_params"][-1] == "…"
    assert all(len(name) <= FIELD_MAX for name in fields["query_params"])
    assert len(record.getMessage()) < 4 * FIELD_MAX


def test_query_names_are_redacted_clipped_and_few():
    assert query_names(b"b=1&a=2&a=3") == ["a", "b"]
    names = query_names(f"{LEAKY_KEY}=1&{'z' * 1000}=2")
    assert LEAKY_KEY not in names[0] and len(names[1]) == FIELD_MAX and names[1].endswith("…")


@pytest.mark.parametrize("size", [0, 10, FIELD_MAX])
def test_short_fields_are_whole(size):
    lines = _Lines()
    access = logging.getLogger("ferryman.access")
    access.addHandler(lines)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        exchange = chat("m" * size if size else "gpt-4o-mini")
        AccessLog().write("POST", "/chat/completions", 200, 0.0, "kid_1", exchange, {})
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
    assert lines.records[0].__dict__["model"] == (exchange.model or "")
    assert lines.records[0].__dict__["path"] == "/v1/chat/completions"


def test_models_without_a_price_are_warned_of_a_bounded_number_of_times(caplog):
    """Random unpriced model names: each of the first WARNED_MAX is named once (cut to 100
    characters), then one warning says the rest go unnamed; the set behind it stays bounded."""
    from ferryman.pipeline.budget import WARNED_MAX, Budget
    from ferryman.pricing import PriceTable

    budget = Budget([], store=None, prices=PriceTable.for_settings(Settings()))  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="ferryman.budget")
    for i in range(WARNED_MAX * 4):
        model = "x" * 5000 if i == 0 else f"random-{uuid.uuid4()}"
        exchange = Exchange("POST", "/chat/completions", {}, b"{}")
        exchange.json, exchange.model = {"model": model, "messages": MESSAGES}, model
        assert budget.worst_case(exchange) == 0  # no price: nothing to reserve
    warnings = [r.getMessage() for r in caplog.records if r.name == "ferryman.budget"]
    assert len(warnings) == WARNED_MAX + 1
    assert "further ones are not named" in warnings[-1]
    assert max(len(w) for w in warnings) < 300
    assert len(budget._unpriced) == WARNED_MAX + 1
