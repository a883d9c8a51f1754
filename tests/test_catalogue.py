"""The lifecycle table everyone reads: shutdown dates and their sources, model families, the
parameters reasoning models reject (and the traps: what they do not), and the retiring APIs.

The facts come from ``../shared/openai-api-notes.md`` §10 and §11; each assertion here is one of
them, written out again rather than read back from ``lifecycle.json``."""

from __future__ import annotations

import datetime as dt

import pytest

from ferryman import catalogue
from ferryman.catalogue import UpstreamDate

TODAY = dt.date(2026, 12, 4)
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


@pytest.mark.parametrize(
    ("model", "shutdown", "successor"),
    [
        ("gpt-4o-mini", "2027-01-14", "gpt-6-luna"),
        ("gpt-4o", "2027-01-14", "gpt-6-luna"),
        ("ft:gpt-4o-mini-2024-07-18:acme:support:abc123", "2027-01-14", "gpt-6-luna"),  # retires with its base
        ("gpt-5", "2026-12-11", "gpt-6.1-sol"),  # the deprecations page's newer successor, over the price table's
        ("o3", "2026-12-11", "gpt-6.1-sol"),
        ("gpt-3.5-turbo", "2026-10-23", "gpt-5.6-terra"),
        ("tts-1", "2027-01-06", "gpt-realtime-2.1-mini"),  # not in the price table at all
    ],
)
def test_shutdown_dates_and_successors(model, shutdown, successor):
    life = catalogue.lifecycle(model)
    assert life is not None
    assert (life.shutdown_date, life.successor) == (dt.date.fromisoformat(shutdown), successor)
    assert life.source == f"shipped {catalogue.shipped_as_of()}"


def test_models_without_a_date_and_unknown_models():
    luna = catalogue.lifecycle("gpt-6-luna")
    assert luna is not None and luna.shutdown_date is None and luna.days_left(TODAY) is None
    assert not luna.retired(TODAY)
    assert catalogue.lifecycle("my-own-model") is None


def test_retired_and_days_left_on_the_day_itself():
    life = catalogue.lifecycle("gpt-5")
    assert life is not None
    assert life.days_left(dt.date(2026, 12, 10)) == 1 and not life.retired(dt.date(2026, 12, 10))
    assert life.days_left(dt.date(2026, 12, 11)) == 0 and life.retired(dt.date(2026, 12, 11))


def test_an_upstream_date_wins_and_says_so():
    upstream = {"gpt-6-luna": UpstreamDate(dt.date(2027, 9, 1), TODAY)}
    life = catalogue.lifecycle("gpt-6-luna", upstream)
    assert life is not None and life.shutdown_date == dt.date(2027, 9, 1) and life.source == "upstream 2026-12-04"
    only_upstream = catalogue.lifecycle("acme-model", {"acme-model": UpstreamDate(dt.date(2027, 1, 1), TODAY)})
    assert only_upstream is not None and only_upstream.successor is None


def test_retiring_is_ordered_and_bounded_by_the_window():
    soon = catalogue.retiring(TODAY, 45)
    dates = [life.shutdown_date for life in soon]
    assert dates == sorted(dates)  # type: ignore[type-var]
    assert all(life.days_left(TODAY) <= 45 for life in soon)  # type: ignore[operator]
    names = {life.model for life in soon}
    assert {"gpt-4o-mini", "gpt-5", "gpt-3.5-turbo", "tts-1"} <= names
    assert "gpt-5.1" not in names  # 2027-04-01


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True), ("gpt-5-mini", True),
        ("gpt-5.4", True), ("gpt-6-luna", True), ("ft:o4-mini-2025-04-16:acme::x1", True),
        ("gpt-4o", False), ("gpt-4o-mini", False), ("gpt-4.1-nano", False), ("gpt-3.5-turbo", False),
        ("gpt-4", False), ("gpt-5-chat-latest", False), ("gpt-5.2-chat-latest", False),
        ("text-embedding-3-small", False), ("my-own-model", None),
    ],
)  # fmt: skip
def test_which_models_reason(model, reasoning):
    assert catalogue.is_reasoning(model) is reasoning


def test_max_tokens_on_a_reasoning_chat_call_in_openais_words():
    [rejected] = catalogue.rejected_params("o3-mini", CHAT, {"max_tokens": 100})
    assert rejected.param == "max_tokens" and rejected.replacement == "max_completion_tokens"
    assert rejected.code == "unsupported_parameter"
    assert rejected.message == (
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    )


def test_a_sampling_value_other_than_the_default():
    [rejected] = catalogue.rejected_params("o4-mini", CHAT, {"temperature": 0.1})
    assert rejected.code == "unsupported_value" and rejected.replacement is None
    assert rejected.message == (
        "Unsupported value: 'temperature' does not support 0.1 with this model."
        " Only the default (1) value is supported."
    )
    assert [r.param for r in catalogue.rejected_params("gpt-5", RESPONSES, {"top_p": 0.5})] == ["top_p"]


@pytest.mark.parametrize(
    ("model", "endpoint", "body"),
    [
        ("gpt-4o", CHAT, {"max_tokens": 100, "temperature": 0.2}),  # not a reasoning model: all fine
        ("gpt-4o-mini", CHAT, {"max_tokens": 100}),
        ("o3-mini", CHAT, {"max_completion_tokens": 100, "temperature": 1}),  # the default is accepted
        ("o3-mini", RESPONSES, {"max_tokens": 100}),  # not a Responses parameter: another rule's business
        ("o3-mini", CHAT, {"max_tokens": None}),  # null is no value
        ("gpt-5.4", CHAT, {"temperature": 0.2, "reasoning_effort": "none"}),  # 5.1 and later, effort none
        ("gpt-5.4", RESPONSES, {"temperature": 0.2, "reasoning": {"effort": "none"}}),
        ("my-own-model", CHAT, {"max_tokens": 100}),  # unknown: nothing claimed
    ],
)
def test_what_is_not_rejected(model, endpoint, body):
    assert catalogue.rejected_params(model, endpoint, body) == []


def test_gpt_5_itself_rejects_sampling_even_with_effort_none():
    assert [r.param for r in catalogue.rejected_params("gpt-5", CHAT, {"temperature": 0.2, "reasoning_effort": "none"})]


@pytest.mark.parametrize(
    ("method", "path", "api"),
    [
        ("GET", "/v1/assistants", "Assistants API"),
        ("POST", "/v1/threads/thread_1/runs", "Assistants API"),
        ("POST", "/v1/fine_tuning/jobs", "new fine-tuning jobs"),
        ("GET", "/v1/fine_tuning/jobs", None),  # listing jobs goes on
        ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel", None),  # so does cancelling one
        ("GET", "/v1/assistantsx", None),  # a prefix of a name is not the name
        ("POST", "/v1/chat/completions", None),
    ],
)
def test_retiring_apis(method, path, api):
    found = catalogue.api_retirement(method, path)
    assert (found.name if found else None) == api
