"""The report over rows written directly (volume and edge cases the mock cannot make on cue), on
SQLite and on a PostgreSQL database of its own: percentiles with ties and missing TTFTs, key names
and teams from ``virtual_keys``, the key filter by name, long-context calls priced apart, the
month's projection and the spikes. Expected figures are computed here, independently."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from ferryman import catalogue, pricing
from ferryman.report import query
from ferryman.report.build import build, spikes
from ferryman.store.database import make_engine, migrate
from tests.report.conftest import grouped, records, stats_dict, synthetic, totals, write

DAY = 86_400
DEC_1 = dt.datetime(2025, 12, 1, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def engine(store_url):
    made = make_engine(store_url)
    migrate(made)
    yield made
    made.dispose()


def _report(engine, start=DEC_1 - 30 * DAY, end=DEC_1 + 30 * DAY, by=(), now=None, **filters):
    with engine.connect() as conn:
        return build(conn, query.Filters(start, end, **filters), by, now=end if now is None else now)


def test_percentiles_are_nearest_rank_per_group_with_ties_and_missing_ttft(engine):
    latencies = [5.0, 1.0, 3.0, 3.0, 9.0, 7.0, 2.0, 8.0, 3.0, 4.0, 6.0]
    rows = [
        synthetic(model="gpt-4o" if i % 3 else "gpt-4o-mini", latency_ms=v, ttft_ms=None if i % 2 else v / 2)
        for i, v in enumerate(latencies)
    ]
    write(engine, rows)
    made = _report(engine)
    stored = records(engine)
    assert stats_dict(made.totals) == totals(stored)
    assert made.totals.latency_p50_ms == 4.0 and made.totals.latency_p95_ms == 9.0  # by hand: rank 6 and 11 of 11
    assert {g.values["model"]: stats_dict(g.stats) for g in made.by_model} == grouped(stored, lambda r: r["model"])


def test_keys_show_their_names_and_teams_and_filter_by_name(engine):
    keys = [{"id": "key_aaaaaaaaaaaa", "name": "search-prod", "team": "search"},
            {"id": "key_bbbbbbbbbbbb", "name": "batch-jobs", "team": None}]  # fmt: skip
    rows = [
        synthetic(principal="key_aaaaaaaaaaaa", cost_usd=Decimal("0.0000012345"), tags={"team": "ignored"}),
        synthetic(principal="key_aaaaaaaaaaaa", cost_usd=Decimal("0.25")),
        synthetic(principal="key_bbbbbbbbbbbb", cost_usd=Decimal("1.5"), tags={"team": "ops"}),
        synthetic(principal="anonymous", cost_usd=Decimal("0.1"), tags={"team": "sdk"}),
    ]
    write(engine, rows, keys)
    by_key = _report(engine, by=["key"]).breakdown
    assert {(g.values["key"], g.values["key_name"]): g.stats.cost_usd for g in by_key} == {
        ("anonymous", None): Decimal("0.1"),
        ("key_aaaaaaaaaaaa", "search-prod"): Decimal("0.2500012345"),
        ("key_bbbbbbbbbbbb", "batch-jobs"): Decimal("1.5"),
    }
    by_team = _report(engine, by=["team"]).breakdown  # the key's team wins; a key without one, the tag
    assert {g.values["team"]: g.stats.requests for g in by_team} == {"search": 2, "ops": 1, "sdk": 1}
    assert _report(engine, key="search-prod").totals.cost_usd == Decimal("0.2500012345")
    assert _report(engine, key="key_bbbbbbbbbbbb").totals.requests == 1
    assert _report(engine, key="nobody").totals.requests == 0


def test_day_and_hour_buckets_are_utc(engine):
    moments = [(DEC_1 - 1, 1), (DEC_1, 2), (DEC_1 + 3_599.9, 4), (DEC_1 + 3_600, 8)]
    rows = [synthetic(ts=ts, cost_usd=Decimal(cost)) for ts, cost in moments]
    write(engine, rows)
    days = {g.values["day"]: g.stats.cost_usd for g in _report(engine, by=["day"]).breakdown}
    assert days == {"2025-11-30": 1, "2025-12-01": 14}
    hours = {g.values["hour"]: g.stats.cost_usd for g in _report(engine, by=["hour"]).breakdown}
    assert hours == {"2025-11-30T23:00Z": 1, "2025-12-01T00:00Z": 6, "2025-12-01T01:00Z": 8}
    assert _report(engine, start=DEC_1, end=DEC_1 + 3_600).totals.cost_usd == 6  # from inclusive, to exclusive


def test_month_to_date_and_projection(engine):
    rows = [
        synthetic(ts=DEC_1 - DAY, cost_usd=Decimal(100)),  # November: not in December's figure
        synthetic(ts=DEC_1 + DAY, cost_usd=Decimal("3.5")),
        synthetic(ts=DEC_1 + 2 * DAY, cost_usd=Decimal(7)),
    ]
    write(engine, rows)
    month = _report(engine, now=DEC_1 + 3.5 * DAY).month
    assert month.month == "2025-12" and month.to_date_usd == Decimal("10.5")
    assert month.elapsed_days == 3.5 and month.days_in_month == 31
    assert month.projected_usd == Decimal("10.5") / Decimal("3.5") * 31 == 93


def test_spikes_are_days_above_median_plus_three_mads():
    def days(amounts):
        return [(dt.date(2025, 12, 1) + dt.timedelta(days=i), Decimal(a)) for i, a in enumerate(amounts)]

    assert spikes(days([10, 11, 9, 10, 12, 10, 50])) == spikes(days([10, 11, 9, 10, 12, 10, 50]))
    [found] = spikes(days([10, 11, 9, 10, 12, 10, 50]))
    # by hand: median 10; deviations 0 1 1 0 2 0 40 -> MAD 1; threshold 13
    assert (found.day, found.cost_usd, found.median_usd, found.mad_usd, found.threshold_usd) == (
        dt.date(2025, 12, 7), 50, 10, 1, 13)  # fmt: skip
    assert spikes(days([10, 11, 9, 10, 12, 50])) == []  # six days of data are too few
    assert spikes(days([10, 11, 9, 10, 12, 10, 13])) == []  # 13 is not above 13


def test_spikes_come_from_the_daily_spend_in_sql(engine):
    amounts = ["1", "1.2", "0.9", "1.1", "1", "30", "1.05", "0.95"]
    write(engine, [synthetic(ts=DEC_1 + i * DAY + 60, cost_usd=Decimal(a)) for i, a in enumerate(amounts)])
    [found] = _report(engine).spikes
    assert found.day == dt.date(2025, 12, 6) and found.cost_usd == 30


def test_deprecated_model_prices_long_calls_apart_and_says_when_the_successor_costs_more(engine):
    model = "gpt-5-mini"  # its successor costs more per token
    life = catalogue.lifecycle(model)
    counts = [(300_000, 1_000, 500), (200_000, 50_000, 800), (100_000, 0, 100)]  # two short calls sum past 272k
    write(engine, [synthetic(model=model, input_tokens=i, cached_tokens=c, output_tokens=o) for i, c, o in counts])
    [item] = _report(engine, now=DEC_1).advice

    def priced(on):
        return sum((pricing.cost_usd(on, pricing.TokenCounts(input=i, cached_input=c, output=o)) for i, c, o in counts),
                   Decimal(0))  # fmt: skip

    expected = priced(model) - priced(life.successor)
    assert expected < 0 and item.savings_usd == expected
    assert "more" in item.title and "higher price" in item.action
    assert item.evidence["days_left"] == (life.shutdown_date - dt.date(2025, 12, 1)).days


def test_a_retired_model_says_so(engine):
    write(engine, [synthetic(model="gpt-4o-mini", input_tokens=1_000, output_tokens=100)])
    [item] = _report(engine, now=dt.datetime(2027, 2, 1, tzinfo=dt.UTC).timestamp()).advice
    assert "was shut down on 2027-01-14" in item.title and item.evidence["days_left"] < 0


def test_no_records_is_an_empty_report_not_an_error(engine):
    made = _report(engine, by=["model"])
    assert made.totals.requests == 0 and made.totals.cost_usd == 0 and made.totals.latency_p50_ms is None
    assert made.by_model == [] and made.breakdown == [] and made.advice == [] and made.spikes == []
    assert made.month.projected_usd == 0
