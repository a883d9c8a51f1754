"""The mock's organisation Usage and Costs API, reconciled against the replies the mock sent.

Tokens in the usage buckets must equal the sums of the replies' ``usage``; dollars in the costs
buckets must equal those tokens times the prices in ``ferryman/data/prices.json``, computed here
independently of ``ferryman.pricing``. Bucket boundaries use the app's injectable clock (no sleeps).
Every body the mock sends is checked against OpenAI's spec by the suite's ConformanceRecorder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from typing import Any

import httpx2
import openai
import pytest

from ferryman.mock.app import MockApp, key_id
from ferryman.mock.resources.organization import PROJECT_ID
from ferryman.mock.server import BackgroundServer
from ferryman.mock.settings import MockSettings
from tests.mock.test_batches import chat_line, create, read_jsonl, wait

# Keys are built at run time: no key-shaped literals in the test files.
ADMIN_KEY = "-".join(["sk", "admin", "usage", "test"])
OTHER_KEY = "-".join(["sk", "usage", "other"])
MINUTE = 60
T0 = 1_780_000_020  # a minute boundary (a multiple of 60), in 2026
MESSAGES = [{"role": "user", "content": "Tell me about ferries."}]
# Long enough that the mock's prompt cache serves part of it the second time: cached input is priced too.
LONG = [{"role": "system", "content": "You are a ferry timetable. " * 300}, *MESSAGES]
PRICES = json.loads(resources.files("ferryman.data").joinpath("prices.json").read_text())["models"]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mock(ferryman_mock: Any) -> Any:
    ferryman_mock.settings(batch_seconds=0.2)
    return ferryman_mock


@pytest.fixture
def admin(mock: Any) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=mock.base_url, api_key=mock.api_key, admin_api_key=ADMIN_KEY, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def http(mock: Any) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=mock.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client


@pytest.fixture
def clock(mock: Any, monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0 + 5)
    monkeypatch.setattr(mock.app, "clock", fake)
    return fake


def usd(model: str, plain_in: int, cached_in: int, out: int, *, batch: bool = False) -> Decimal:
    """Dollars for these tokens from the price JSON itself (USD per 1M tokens)."""
    p = {k: Decimal(str(v)) for k, v in PRICES[model].items() if "usd_per_1m" in k and v is not None}
    suffix = "_batches" if batch else ""
    in_rate, out_rate = p["input_usd_per_1m" + suffix], p["output_usd_per_1m" + suffix]
    cached_rate = p.get("cache_read_input_usd_per_1m", p["input_usd_per_1m"]) * in_rate / p["input_usd_per_1m"]
    return (plain_in * in_rate + cached_in * cached_rate + out * out_rate) / Decimal(1_000_000)


def assert_cents(value: float, expected: Decimal) -> None:
    assert round(Decimal(str(value)), 2) == round(expected, 2)
    assert abs(Decimal(str(value)) - expected) < Decimal("1e-12")


def totals(page: Any, *fields: str) -> dict[tuple[Any, ...], dict[str, int]]:
    """Token sums per group over a page's buckets."""
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    for bucket in page.data:
        for r in bucket.results:
            group = tuple(getattr(r, f) for f in fields)
            into = out.setdefault(group, {"input": 0, "cached": 0, "output": 0, "requests": 0})
            into["input"] += r.input_tokens
            into["cached"] += getattr(r, "input_cached_tokens", 0) or 0
            into["output"] += getattr(r, "output_tokens", 0) or 0
            into["requests"] += r.num_model_requests
    return out


# -- admin keys -----------------------------------------------------------------------------------------


def test_a_normal_key_is_refused_in_openais_shape(mock: Any) -> None:
    with httpx2.Client(base_url=mock.base_url, headers={"Authorization": f"Bearer {mock.api_key}"}) as client:
        for path in ("/organization/usage/completions", "/organization/costs", "/organization/usage/images"):
            reply = client.get(path, params={"start_time": T0})
            assert reply.status_code == 401
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert "insufficient permissions" in error["message"] and "admin key" in error["message"]
            assert error["type"] == "invalid_request_error"
    sdk = openai.OpenAI(base_url=mock.base_url, api_key=mock.api_key, admin_api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.admin.organization.usage.completions(start_time=T0)
    sdk.close()


def test_with_configured_keys_an_admin_key_must_be_one_of_them() -> None:
    unlisted = "-".join(["sk", "admin", "not", "listed"])
    app = MockApp(MockSettings(keys=frozenset({ADMIN_KEY})))
    with BackgroundServer(app) as server, httpx2.Client(base_url=server.base_url) as client:
        ok = client.get(
            "/organization/costs", params={"start_time": T0}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert ok.status_code == 200 and ok.json()["object"] == "page"
        refused = client.get(
            "/organization/costs", params={"start_time": T0}, headers={"Authorization": f"Bearer {unlisted}"}
        )
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


# -- parameters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/organization/usage/completions", {}, "start_time"),
        ("/organization/usage/completions", {"start_time": "yesterday"}, "start_time"),
        ("/organization/usage/completions", {"start_time": -5}, "start_time"),
        ("/organization/usage/completions", {"start_time": T0, "end_time": T0}, "end_time"),
        ("/organization/usage/completions", {"start_time": T0, "bucket_width": "2d"}, "bucket_width"),
        ("/organization/usage/completions", {"start_time": T0, "limit": 0}, "limit"),
        ("/organization/usage/completions", {"start_time": T0, "limit": 32}, "limit"),  # 1d: at most 31
        ("/organization/usage/completions", {"start_time": T0, "bucket_width": "1h", "limit": 169}, "limit"),
        ("/organization/usage/completions", {"start_time": T0, "bucket_width": "1m", "limit": 1441}, "limit"),
        ("/organization/usage/completions", {"start_time": T0, "group_by": "colour"}, "group_by"),
        ("/organization/usage/completions", {"start_time": T0, "batch": "maybe"}, "batch"),
        ("/organization/usage/completions", {"start_time": T0, "page": "not-a-cursor"}, "page"),
        ("/organization/usage/embeddings", {"start_time": T0, "group_by[]": "batch"}, "group_by"),
        ("/organization/costs", {"start_time": T0, "bucket_width": "1h"}, "bucket_width"),
        ("/organization/costs", {"start_time": T0, "limit": 181}, "limit"),
        ("/organization/costs", {"start_time": T0, "group_by": "model"}, "group_by"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_param(http: httpx2.Client, path: str, params: Any, param: str) -> None:
    reply = http.get(path, params=params)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_the_spec_limits_are_accepted(http: httpx2.Client) -> None:
    for width, most in (("1d", 31), ("1h", 168), ("1m", 1440)):
        reply = http.get(
            "/organization/usage/completions", params={"start_time": T0, "bucket_width": width, "limit": most}
        )
        assert reply.status_code == 200
    assert http.get("/organization/costs", params={"start_time": T0, "limit": 180}).status_code == 200


# -- reconciliation -------------------------------------------------------------------------------------


def test_usage_and_costs_reconcile_with_the_replies(mock: Any, admin: openai.OpenAI) -> None:
    other = mock.client.with_options(api_key=OTHER_KEY)
    replies = [
        ("gpt-4o-mini", mock.api_key, mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)),
        ("gpt-4o-mini", OTHER_KEY, other.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2)),
        ("gpt-4o", mock.api_key, mock.client.chat.completions.create(model="gpt-4o", messages=MESSAGES)),
        *(("gpt-4o", mock.api_key, mock.client.chat.completions.create(model="gpt-4o", messages=LONG)) for _ in "ab"),
    ]
    assert replies[-1][2].usage.prompt_tokens_details.cached_tokens > 0
    response = mock.client.responses.create(model="gpt-4o-mini", input="Name a ferry.")
    embedded = mock.client.embeddings.create(model="text-embedding-3-small", input=["one ferry", "two ferries"])
    mock.client.moderations.create(input="A calm crossing.")
    batch = wait(mock.client, create(mock.client, [chat_line(i) for i in range(3)]).id)
    assert batch.status == "completed"
    lines = [line["response"]["body"]["usage"] for line in read_jsonl(mock.client, batch.output_file_id)]
    start = int(mock.requests()[0]["time"]) // 86400 * 86400

    # Expected, per (model, key id, batch), from the replies.
    expected: dict[tuple[Any, ...], dict[str, int]] = {}
    dollars = {("gpt-4o-mini", "input"): Decimal(0), ("gpt-4o-mini", "output"): Decimal(0)}
    dollars |= {("gpt-4o", "input"): Decimal(0), ("gpt-4o", "output"): Decimal(0)}

    def add(model: str, key: str, batch_flag: bool, inp: int, cached: int, out: int) -> None:
        into = expected.setdefault(
            (model, key_id(key), batch_flag), {"input": 0, "cached": 0, "output": 0, "requests": 0}
        )
        into["input"] += inp
        into["cached"] += cached
        into["output"] += out
        into["requests"] += 1
        dollars[(model, "input")] += usd(model, inp - cached, cached, 0, batch=batch_flag)
        dollars[(model, "output")] += usd(model, 0, 0, out, batch=batch_flag)

    for model, key, reply in replies:
        u = reply.usage
        add(model, key, False, u.prompt_tokens, u.prompt_tokens_details.cached_tokens, u.completion_tokens)
    ru = response.usage
    add("gpt-4o-mini", mock.api_key, False, ru.input_tokens, ru.input_tokens_details.cached_tokens, ru.output_tokens)
    for u in lines:
        add(
            "gpt-4o-mini",
            mock.api_key,
            True,
            u["prompt_tokens"],
            u["prompt_tokens_details"]["cached_tokens"],
            u["completion_tokens"],
        )

    usage = admin.admin.organization.usage
    grouped = usage.completions(start_time=start, group_by=["model", "api_key_id", "batch"], limit=2)
    assert grouped.data[0].start_time == start and grouped.data[0].end_time == start + 86400
    assert totals(grouped, "model", "api_key_id", "batch") == expected
    for bucket in grouped.data:
        for r in bucket.results:
            assert (r.project_id, r.user_id, r.service_tier) == (None, None, None)
            assert r.input_uncached_tokens == r.input_tokens - r.input_cached_tokens
            assert r.input_audio_tokens == r.output_audio_tokens == 0
    whole = totals(usage.completions(start_time=start, limit=2))
    assert whole == {(): {k: sum(v[k] for v in expected.values()) for k in ("input", "cached", "output", "requests")}}
    only_batch = totals(usage.completions(start_time=start, batch=True, group_by=["batch"]), "batch")
    assert only_batch == {(True,): expected[("gpt-4o-mini", key_id(mock.api_key), True)]}
    by_key = totals(usage.completions(start_time=start, api_key_ids=[key_id(OTHER_KEY)], models=["gpt-4o-mini"]))
    assert by_key == {(): expected[("gpt-4o-mini", key_id(OTHER_KEY), False)]}
    tiers = totals(
        usage.completions(start_time=start, group_by=["service_tier", "project_id"]), "service_tier", "project_id"
    )
    assert list(tiers) == [("default", PROJECT_ID)]

    emb = totals(usage.embeddings(start_time=start, group_by=["model"]), "model")
    assert emb == {
        ("text-embedding-3-small",): {"input": embedded.usage.prompt_tokens, "cached": 0, "output": 0, "requests": 1}
    }
    mods = totals(usage.moderations(start_time=start, group_by=["model"]), "model")
    assert list(mods) == [("omni-moderation-latest",)] and mods[("omni-moderation-latest",)]["requests"] == 1
    assert mods[("omni-moderation-latest",)]["input"] > 0

    # Costs: every line item to the cent, and the whole day's total.
    embedding_usd = usd("text-embedding-3-small", embedded.usage.prompt_tokens, 0, 0)
    costs = admin.admin.organization.usage.costs(start_time=start, group_by=["line_item", "project_id"], limit=2)
    items = {r.line_item: r for b in costs.data for r in b.results}
    assert set(items) == {f"{m}, {part}" for m, part in dollars} | {"text-embedding-3-small, input"}
    for (model, part), amount in dollars.items():
        result = items[f"{model}, {part}"]
        assert_cents(result.amount.value, amount)
        assert result.amount.currency == "usd" and result.project_id == PROJECT_ID
        assert result.quantity_unit == "tokens"
    assert_cents(items["text-embedding-3-small, input"].amount.value, embedding_usd)
    assert items["gpt-4o, output"].quantity == expected[("gpt-4o", key_id(mock.api_key), False)]["output"]
    day = admin.admin.organization.usage.costs(start_time=start, limit=1).data[0].results
    assert len(day) == 1 and day[0].line_item is None
    assert_cents(day[0].amount.value, sum(dollars.values(), embedding_usd))
    per_key = admin.admin.organization.usage.costs(start_time=start, api_key_ids=[key_id(OTHER_KEY)], limit=1)
    assert_cents(per_key.data[0].results[0].amount.value, usd("gpt-4o-mini", *_chat_tokens(replies[1][2])))


def _chat_tokens(reply: Any) -> tuple[int, int, int]:
    u = reply.usage
    cached = u.prompt_tokens_details.cached_tokens
    return u.prompt_tokens - cached, cached, u.completion_tokens


# -- buckets and pages ----------------------------------------------------------------------------------


def test_calls_either_side_of_a_minute_fall_in_their_own_buckets(mock: Any, admin: openai.OpenAI, clock: Clock) -> None:
    clock.now = T0 + MINUTE - 0.5
    first = mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    clock.now = T0 + MINUTE + 0.25
    second = mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    times = [r["time"] for r in mock.requests() if r["path"] == "/v1/chat/completions"]
    assert times == [T0 + MINUTE - 0.5, T0 + MINUTE + 0.25]  # the request log shows the same clock

    page = admin.admin.organization.usage.completions(start_time=T0, end_time=T0 + 3 * MINUTE, bucket_width="1m")
    assert [(b.start_time, b.end_time) for b in page.data] == [
        (T0 + i * MINUTE, T0 + (i + 1) * MINUTE) for i in range(3)
    ]
    assert [len(b.results) for b in page.data] == [1, 1, 0]
    assert page.data[0].results[0].output_tokens == first.usage.completion_tokens
    assert page.data[1].results[0].output_tokens == second.usage.completion_tokens
    assert (page.has_more, page.next_page) == (False, None)
    hour = admin.admin.organization.usage.completions(start_time=T0, end_time=T0 + 3 * MINUTE, bucket_width="1h")
    assert len(hour.data) == 1 and hour.data[0].start_time == T0 // 3600 * 3600
    assert hour.data[0].results[0].num_model_requests == 2
    assert hour.data[0].results[0].input_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens


def test_pages_cover_the_range_once(mock: Any, admin: openai.OpenAI, clock: Clock) -> None:
    made = []
    for minute in (0, 2, 4):
        clock.now = T0 + minute * MINUTE + 1
        made.append(mock.client.embeddings.create(model="text-embedding-3-small", input=f"ferry {minute}"))
    clock.now = T0 + 10 * MINUTE  # "now": the default end_time
    seen, pages, cursor = [], 0, None
    while True:
        page = admin.admin.organization.usage.embeddings(
            start_time=T0 + 30, bucket_width="1m", limit=2, **({"page": cursor} if cursor else {})
        )
        pages += 1
        seen += page.data
        if not page.has_more:
            assert page.next_page is None
            break
        assert page.next_page and len(page.data) == 2
        cursor = page.next_page
    assert [b.start_time for b in seen] == [T0 + i * MINUTE for i in range(11)] and pages == 6
    assert [b.start_time for b in seen if b.results] == [T0, T0 + 2 * MINUTE, T0 + 4 * MINUTE]
    assert sum(r.input_tokens for b in seen for r in b.results) == sum(e.usage.prompt_tokens for e in made)


def test_kinds_the_mock_does_not_serve_answer_empty_buckets(http: httpx2.Client, clock: Clock) -> None:
    for kind in ("images", "audio_speeches", "audio_transcriptions", "vector_stores", "code_interpreter_sessions"):
        reply = http.get(f"/organization/usage/{kind}", params={"start_time": T0 - 86400, "group_by[]": "project_id"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "page" and len(body["data"]) == 2
        assert all(b["object"] == "bucket" and b["results"] == [] for b in body["data"])


def test_reset_forgets_the_usage(mock: Any, admin: openai.OpenAI) -> None:
    mock.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    start = int(mock.requests()[0]["time"]) // 86400 * 86400
    assert admin.admin.organization.usage.completions(start_time=start).data[0].results
    mock.reset()
    assert not admin.admin.organization.usage.completions(start_time=start).data[0].results
    assert not admin.admin.organization.usage.costs(start_time=start).data[0].results
