"""Pricing: every expected value is worked out by hand from data/prices.json (USD per 1M tokens).

Rates used, from the table (as of 2026-11-24):

| model | input | cached | cache write | output | >272k in/out | batches | flex | priority |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| gpt-6-sol | 2.00 | 0.20 | 2.50 | 10.00 | 4.00 / 15.00 | 1 / 5 | 1 / 5 | 4 / 20 |
| gpt-4o-mini | 0.15 | 0.075 | - | 0.60 | - | 0.075 / 0.30 | - | 0.25 / 1.00 |
| gpt-5.5 | 5.00 | 0.50 | - | 30.00 | 10.00 / 45.00 | 2.5 / 15 | 2.5 / 15 | 12.5 / 75 |
| text-embedding-3-small | 0.02 | - | - | 0 | - | 0.01 | - | - |
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from ferryman import pricing
from ferryman.config import Settings
from ferryman.pricing import PriceTable, TokenCounts, cost_usd

M = Decimal(1_000_000)


def chat_usage(prompt: int, completion: int, cached: int = 0, written: int = 0, reasoning: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def responses_usage(prompt: int, output: int, cached: int = 0, written: int = 0, reasoning: int = 0) -> dict:
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


# gpt-6-sol: 10,000 input of which 4,000 cached and 2,000 written to the cache; 3,000 output of
# which 2,000 reasoning (priced as output).
SOL = chat_usage(10_000, 3_000, cached=4_000, written=2_000, reasoning=2_000)


def test_gpt_6_sol_cached_cache_write_and_reasoning():
    # 4,000 plain x 2.00 + 4,000 cached x 0.20 + 2,000 written x 2.50 + 3,000 output x 10.00
    expected = (4_000 * Decimal("2.00") + 4_000 * Decimal("0.20") + 2_000 * Decimal("2.50") + 3_000 * 10) / M
    assert expected == Decimal("0.0438")
    assert cost_usd("gpt-6-sol", SOL) == expected
    # the Responses shape counts the same
    assert cost_usd("gpt-6-sol", responses_usage(10_000, 3_000, 4_000, 2_000, 2_000)) == expected


@pytest.mark.parametrize("tier", ["batches", "flex"])
def test_gpt_6_sol_batch_and_flex(tier):
    # input 1.00, output 5.00; cached 0.20 x 1/2 = 0.10, writes 2.50 x 1/2 = 1.25
    expected = (4_000 * Decimal("1.00") + 4_000 * Decimal("0.10") + 2_000 * Decimal("1.25") + 3_000 * 5) / M
    assert expected == Decimal("0.0219")
    assert cost_usd("gpt-6-sol", SOL, tier=tier) == expected


def test_gpt_6_sol_priority():
    # input 4.00, output 20.00; cached 0.20 x 4/2 = 0.40, writes 2.50 x 4/2 = 5.00
    expected = (4_000 * Decimal("4.00") + 4_000 * Decimal("0.40") + 2_000 * Decimal("5.00") + 3_000 * 20) / M
    assert expected == Decimal("0.0876")
    assert cost_usd("gpt-6-sol", SOL, tier="priority") == expected
    assert cost_usd("gpt-6-sol", SOL, tier="fast") == expected  # what the reply calls "priority"


def test_gpt_6_sol_long_context():
    usage = chat_usage(300_000, 10_000, cached=100_000)
    # above 272k: input 4.00, output 15.00, cached 0.20 x 4/2 = 0.40
    expected = (200_000 * Decimal("4.00") + 100_000 * Decimal("0.40") + 10_000 * Decimal(15)) / M
    assert expected == Decimal("0.99")
    assert cost_usd("gpt-6-sol", usage) == expected
    # long context in the Batch tier: 4.00 x 1/2 = 2.00 in, 0.40 x 1/2 = 0.20 cached, 15.00 x 5/10 = 7.50 out
    batch = (200_000 * Decimal("2.00") + 100_000 * Decimal("0.20") + 10_000 * Decimal("7.50")) / M
    assert cost_usd("gpt-6-sol", usage, tier="batches") == batch == Decimal("0.495")
    # exactly 272,000 input tokens is not above the threshold: 272,000 x 2.00
    assert cost_usd("gpt-6-sol", chat_usage(272_000, 0)) == Decimal("0.544")


def test_gpt_4o_mini_cached_batch_priority_and_missing_tiers():
    usage = chat_usage(2_000, 500, cached=1_024)
    # 976 plain x 0.15 + 1,024 cached x 0.075 + 500 output x 0.60
    standard = (976 * Decimal("0.15") + 1_024 * Decimal("0.075") + 500 * Decimal("0.60")) / M
    assert standard == Decimal("0.0005232")
    assert cost_usd("gpt-4o-mini", usage) == standard
    # Batch: 976 x 0.075 + 1,024 x 0.0375 (0.075 x 0.075/0.15) + 500 x 0.30
    batch = (976 * Decimal("0.075") + 1_024 * Decimal("0.0375") + 500 * Decimal("0.30")) / M
    assert cost_usd("gpt-4o-mini", usage, tier="batches") == batch == Decimal("0.0002616")
    # priority: 976 x 0.25 + 1,024 x 0.125 (0.075 x 0.25/0.15) + 500 x 1.00
    priority = (976 * Decimal("0.25") + 1_024 * Decimal("0.125") + 500 * Decimal("1.00")) / M
    assert cost_usd("gpt-4o-mini", usage, tier="priority") == priority == Decimal("0.000872")
    # no flex price and no long-context tier in the table: standard rates
    assert cost_usd("gpt-4o-mini", usage, tier="flex") == standard
    assert cost_usd("gpt-4o-mini", chat_usage(300_000, 0)) == 300_000 * Decimal("0.15") / M == Decimal("0.045")


def test_gpt_5_5_reasoning_flex_and_long_priority():
    usage = responses_usage(1_000, 5_000, reasoning=4_000)  # reasoning is part of the 5,000 output tokens
    assert cost_usd("gpt-5.5", usage) == (1_000 * 5 + 5_000 * 30) / M == Decimal("0.155")
    assert cost_usd("gpt-5.5", usage, tier="flex") == (1_000 * Decimal("2.5") + 5_000 * 15) / M == Decimal("0.0775")
    # long + priority: input 10.00 x 12.5/5 = 25.00, output 45.00 x 75/30 = 112.50
    long = responses_usage(400_000, 1_000)
    expected = (400_000 * Decimal(25) + 1_000 * Decimal("112.5")) / M
    assert cost_usd("gpt-5.5", long, tier="priority") == expected == Decimal("10.1125")


def test_text_embedding_3_small():
    assert (
        cost_usd("text-embedding-3-small", {"prompt_tokens": 123, "total_tokens": 123})
        == 123 * Decimal("0.02") / M
        == Decimal("0.00000246")
    )
    million = {"prompt_tokens": 1_000_000, "total_tokens": 1_000_000}
    assert cost_usd("text-embedding-3-small", million) == Decimal("0.02")
    assert cost_usd("text-embedding-3-small", million, tier="batches") == Decimal("0.01")


def test_unknown_models_fine_tunes_and_snapshots():
    assert cost_usd("my-own-model", chat_usage(10, 10)) is None
    assert cost_usd("omni-moderation-latest", chat_usage(10, 0)) is None  # served, but not priced per token
    # a fine-tuned model is priced as its ft: entry: 1,000 x 0.30 + 1,000 x 1.20
    ft = "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
    assert cost_usd(ft, chat_usage(1_000, 1_000)) == (1_000 * Decimal("0.30") + 1_000 * Decimal("1.20")) / M
    # a dated snapshot the table does not list is priced as its model: 1,000 x 2.00 + 1,000 x 10.00
    assert cost_usd("gpt-6-sol-2026-09-30", chat_usage(1_000, 1_000)) == Decimal("0.012")
    assert cost_usd("gpt-4o-mini", None) == 0
    assert pricing.normalise_tier("default") == pricing.normalise_tier("auto") == pricing.normalise_tier("scale") == ""


def test_the_table_is_dated_and_loaded_once():
    table = PriceTable.default()
    assert table is PriceTable.default()
    assert table.source["as_of"] == "2026-11-24" and "litellm" in table.source["package"]
    assert table.max_output_tokens("gpt-6-sol") == 128_000
    assert table.cost_usd("gpt-6-sol", SOL) == cost_usd("gpt-6-sol", SOL)
    assert TokenCounts.from_usage(SOL) == TokenCounts(10_000, 4_000, 2_000, 3_000, 2_000)


def test_override_file_replaces_and_adds_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "_source": {"as_of": "2026-12-01", "note": "our negotiated prices"},
                "models": {
                    "gpt-4o-mini": {"input_usd_per_1m": 0.1, "output_usd_per_1m": 0.4, "max_output_tokens": 1000},
                    "my-own-model": {
                        "input_usd_per_1m": 1,
                        "output_usd_per_1m": 2,
                        "cache_creation_input_usd_per_1m": 1.5,
                        "cache_creation_input_usd_per_1m_12h": 3,
                    },
                },
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    table = PriceTable.for_settings(Settings(pricing_file=path))
    assert table is PriceTable.for_settings(Settings(pricing_file=path))  # loaded once
    # replaced whole: no cached rate any more, so cached input is plain input: 2,000 x 0.10 + 500 x 0.40
    assert table.cost_usd("gpt-4o-mini", chat_usage(2_000, 500, cached=1_024)) == Decimal("0.0004")
    assert table.max_output_tokens("gpt-4o-mini") == 1000
    # added: 1,000 plain x 1 + 600 written (30 min) x 1.5 + 400 written (12 h) x 3 + 100 output x 2
    usage = responses_usage(2_000, 100, written=1_000)
    usage["input_tokens_details"]["cache_write_tokens_details"] = {"ttl_30m_tokens": 600, "ttl_12h_tokens": 400}
    expected = (1_000 * 1 + 600 * Decimal("1.5") + 400 * 3 + 100 * 2) / M
    assert table.cost_usd("my-own-model", usage) == expected == Decimal("0.0033")
    assert table.cost_usd("gpt-6-sol", SOL) == Decimal("0.0438")  # the rest of the table stays
    assert table.source["overrides"]["as_of"] == "2026-12-01"
    assert cost_usd("my-own-model", usage) is None  # the module function keeps the shipped table
