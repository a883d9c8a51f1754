"""The report against known traffic through the real pipeline (the SDK, Ferryman, the mock): every
figure equals the same figure computed independently from the audit records, to the cent and
beyond (the audit's 10 decimal places)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import openai
import pytest

from ferryman.report import query
from ferryman.report.build import build
from tests.report.conftest import grouped, records, stats_dict, totals

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


def _traffic(client: openai.OpenAI, ferryman_mock) -> None:
    def tagged(value: str) -> dict[str, str]:
        return {"ferryman-tags": value}

    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=tagged("team=a"))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=tagged("team=b,feature=x"))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers=tagged("team=b"),
    )  # fmt: skip
    assert [chunk for chunk in stream]
    client.embeddings.create(model="text-embedding-3-small", input=["ferry", "man"], extra_headers=tagged("team=a"))
    ferryman_mock.set_faults(["times=1;status=429"])
    with pytest.raises(openai.RateLimitError):
        client.with_options(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


@pytest.fixture
def traffic(ferryman_client, ferryman_mock, audit_db):
    client = ferryman_client(retry={"max_attempts": 1})
    _traffic(client, ferryman_mock)
    rows = records(audit_db)
    assert len(rows) == 7 and sum(r["status"] == 429 for r in rows) == 1  # the traffic is what the test says
    assert any(r["ttft_ms"] is not None for r in rows) and sum(r["cost_usd"] for r in rows) > 0
    return rows


def _report(engine, by=(), **filters):
    now = time.time() + 1
    with engine.connect() as conn:
        return build(conn, query.Filters(0.0, now, **filters), by, now=now)


def test_totals_are_the_sum_of_the_audit_records(traffic, audit_db):
    made = _report(audit_db)
    assert stats_dict(made.totals) == totals(traffic)
    assert made.totals.cost_usd == sum((r["cost_usd"] for r in traffic), Decimal(0))
    assert made.totals.rate_limited == 1 and made.totals.errors == 1


def test_by_model_is_the_same_grouping_done_independently(traffic, audit_db):
    made = _report(audit_db)
    assert {g.values["model"]: stats_dict(g.stats) for g in made.by_model} == grouped(traffic, lambda r: r["model"])
    costs = [g.stats.cost_usd for g in made.by_model]
    assert costs == sorted(costs, reverse=True)


def test_breakdowns_by_tag_day_endpoint_and_two_at_once(traffic, audit_db):
    by_tag = _report(audit_db, ["tag:team"]).breakdown
    expected = grouped(traffic, lambda r: r["tags"].get("team"))
    assert {g.values["tag:team"]: stats_dict(g.stats) for g in by_tag} == expected

    def day(row):
        return dt.datetime.fromtimestamp(row["ts"], dt.UTC).strftime("%Y-%m-%d")

    by_day = _report(audit_db, ["day"]).breakdown
    assert {g.values["day"]: stats_dict(g.stats) for g in by_day} == grouped(traffic, day)
    by_two = _report(audit_db, ["endpoint", "model"]).breakdown
    pairs = grouped(traffic, lambda r: (r["endpoint"], r["model"]))
    assert {(g.values["endpoint"], g.values["model"]): stats_dict(g.stats) for g in by_two} == pairs
    # SDK calls have no key: their team is the call's own team tag
    by_team = _report(audit_db, ["team"]).breakdown
    assert {g.values["team"]: g.stats.requests for g in by_team} == {None: 1, "a": 4, "b": 2}


def test_filters_by_model_and_tag(traffic, audit_db):
    only = _report(audit_db, model="gpt-4o")
    assert stats_dict(only.totals) == totals([r for r in traffic if r["model"] == "gpt-4o"])
    tagged = _report(audit_db, tags=(("team", "b"), ("feature", "x")))
    assert stats_dict(tagged.totals) == totals([r for r in traffic if r["tags"].get("feature") == "x"])


def test_deprecated_model_advice_is_the_tokens_priced_on_the_successor(traffic, audit_db):
    from ferryman import catalogue, pricing

    made = _report(audit_db)
    advice = {a.evidence["model"]: a for a in made.advice if a.kind == "deprecated_model"}
    assert set(advice) == {"gpt-4o-mini", "gpt-4o"}  # the embeddings model has no shutdown date
    for model, item in advice.items():
        life = catalogue.lifecycle(model)
        mine = [r for r in traffic if r["model"] == model]

        def priced(on, rows):
            return sum(
                (pricing.cost_usd(on, pricing.TokenCounts(input=r["input_tokens"], cached_input=r["cached_tokens"],
                                                          output=r["output_tokens"])) for r in rows),
                Decimal(0),
            )  # fmt: skip

        expected = priced(model, mine) - priced(life.successor, mine)
        assert item.savings_usd == expected and expected != 0
        assert item.savings_usd_per_month == expected * 30 / Decimal(str(made.days))
        assert item.evidence["successor"] == life.successor
        assert item.evidence["calls"] == len(mine)
        assert item.evidence["days_left"] == life.days_left(dt.datetime.now(dt.UTC).date())
        assert item.evidence["example_request_id"] in {r["request_id"] for r in mine}
        assert ("less" in item.title) == (expected > 0) and ("more" in item.title) == (expected < 0)
