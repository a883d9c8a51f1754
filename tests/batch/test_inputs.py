"""The job's input (both line formats, bad lines, numbering) and its journal (exactly-once)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from ferryman.batch.inputs import BadLine, Line, fingerprint, normalise_endpoint, parse_line, read_lines
from ferryman.batch.journal import Journal, JournalMismatch, Result, journal_path

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def raw(value: object) -> bytes:
    return orjson.dumps(value)


# -- parse_line -----------------------------------------------------------------------------


def test_a_batch_api_line_keeps_its_custom_id_url_and_body() -> None:
    text = raw({"custom_id": "r1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}})
    line = parse_line(3, text, None, CHAT)
    assert line == Line(3, "r1", "/v1/embeddings", {"model": "m", "input": "x"})
    assert isinstance(line, Line) and line.path == "/embeddings"
    assert parse_line(3, line.batch_line(), None, CHAT) == line  # its Batch API form reads back the same


def test_a_bare_body_gets_its_id_from_its_line_number_and_the_default_endpoint() -> None:
    assert parse_line(7, raw(BODY), None, CHAT) == Line(7, "line-7", CHAT, BODY)
    assert parse_line(7, raw(BODY), None, "/v1/responses") == Line(7, "line-7", "/v1/responses", BODY)


def test_model_fills_a_body_without_one_and_a_line_s_own_model_wins() -> None:
    bare = {"messages": BODY["messages"]}
    filled = parse_line(1, raw(bare), "gpt-4o", CHAT)
    assert isinstance(filled, Line) and filled.body == {**bare, "model": "gpt-4o"}
    own = parse_line(2, raw(BODY), "gpt-4o", CHAT)
    assert isinstance(own, Line) and own.body["model"] == "gpt-4o-mini"
    batch = parse_line(3, raw({"custom_id": "a", "url": CHAT, "body": bare}), "gpt-4o", CHAT)
    assert isinstance(batch, Line) and batch.body["model"] == "gpt-4o"


def test_a_batch_line_without_url_or_method_uses_the_endpoint_and_post() -> None:
    assert parse_line(1, raw({"custom_id": "a", "body": BODY}), None, "/v1/responses") == Line(
        1, "a", "/v1/responses", BODY
    )


def test_streaming_is_switched_off() -> None:
    line = parse_line(1, raw({**BODY, "stream": True, "stream_options": {"include_usage": True}}), None, CHAT)
    assert isinstance(line, Line) and line.body == BODY


@pytest.mark.parametrize(
    ("text", "reason", "custom_id"),
    [
        (b"{broken", "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        (b'"a string"', "must be a JSON object", None),
        (raw({"custom_id": "", "url": CHAT, "body": BODY}), "custom_id must be a non-empty string", None),
        (raw({"custom_id": 5, "url": CHAT, "body": BODY}), "custom_id must be a non-empty string", None),
        (raw({"url": CHAT, "body": BODY}), "custom_id must be a non-empty string", None),
        (raw({"custom_id": "a", "method": "GET", "url": CHAT, "body": BODY}), "method must be POST", "a"),
        (raw({"custom_id": "a", "url": "/v1/images/generations", "body": BODY}), "url must be one of", "a"),
        (raw({"custom_id": "a", "url": 7, "body": BODY}), "url must be one of", "a"),
        (raw({"custom_id": "a", "url": CHAT, "body": [1]}), "body must be a JSON object", "a"),
        (raw({"custom_id": "a", "url": CHAT, "body": {"messages": []}}), "names no model", "a"),
        (raw({"messages": []}), "names no model", "line-4"),
        (raw({**BODY, "model": ""}), "model must be a non-empty string", "line-4"),
        (raw({**BODY, "model": 4}), "model must be a non-empty string", "line-4"),
    ],
)
def test_a_bad_line_says_why_with_its_number(text: bytes, reason: str, custom_id: str | None) -> None:
    bad = parse_line(4, text, None, CHAT)
    assert isinstance(bad, BadLine)
    assert bad.number == 4 and reason in bad.reason and bad.custom_id == custom_id


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/v1/chat/completions", CHAT),
        ("v1/chat/completions/", CHAT),
        ("/chat/completions", CHAT),
        ("embeddings", "/v1/embeddings"),
        (" /v1/moderations ", "/v1/moderations"),
        ("/v1/responses", "/v1/responses"),
        ("/v1/images/generations", None),
        ("/v1/completions", None),
    ],
)
def test_endpoints_are_normalised_and_only_those_the_runner_drives_are_accepted(
    given: str, expected: str | None
) -> None:
    assert normalise_endpoint(given) == expected


# -- read_lines -----------------------------------------------------------------------------


def test_read_lines_numbers_lines_as_in_the_file_skipping_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        raw({"custom_id": "a", "url": CHAT, "body": BODY}) + b"\n"  # 1
        b"\n"  # 2: blank
        b"   \t\n"  # 3: blank
        + raw(BODY) + b"\r\n"  # 4: a bare body, CRLF
        b"{oops\n"  # 5
        + raw({"custom_id": "a", "url": CHAT, "body": BODY}) + b"\n"  # 6: repeats a
        + raw({"custom_id": "b", "url": "/v1/nope", "body": BODY}) + b"\n"  # 7: bad, id b unused
        + raw({"custom_id": "b", "url": CHAT, "body": BODY})  # 8: no newline at the end
    )  # fmt: skip
    items = list(read_lines(path))
    assert [(type(i).__name__, i.number) for i in items] == [
        ("Line", 1),
        ("Line", 4),
        ("BadLine", 5),
        ("BadLine", 6),
        ("BadLine", 7),
        ("Line", 8),
    ]
    assert [i.custom_id for i in items if isinstance(i, Line)] == ["a", "line-4", "b"]
    repeated = items[3]
    assert isinstance(repeated, BadLine) and repeated.custom_id == "a" and "repeats an earlier line" in repeated.reason


def test_read_lines_applies_model_and_endpoint_and_refuses_an_unknown_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(raw({"input": "x"}) + b"\n")
    (line,) = read_lines(path, model="text-embedding-3-small", endpoint="embeddings")
    assert line == Line(1, "line-1", "/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"})
    with pytest.raises(ValueError, match="--endpoint must be one of"):
        list(read_lines(path, endpoint="/v1/audio/speech"))


def test_fingerprint_follows_the_content(tmp_path: Path) -> None:
    one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    one.write_bytes(b'{"a": 1}\n')
    two.write_bytes(b'{"a": 1}\n')
    assert fingerprint(one) == fingerprint(two)
    two.write_bytes(b'{"a": 2}\n')
    assert fingerprint(one) != fingerprint(two)


# -- the journal ----------------------------------------------------------------------------


def lines(*ids: str) -> list[Line]:
    return [Line(n, custom_id, CHAT, BODY) for n, custom_id in enumerate(ids, start=1)]


def ok(custom_id: str, cost: str = "0.001", **fields: Any) -> Result:
    return Result(custom_id, 200, {"id": f"reply-{custom_id}"}, cost_usd=Decimal(cost), **fields)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(journal_path(tmp_path / "out.jsonl"), "sha-1")
    yield opened
    opened.close()


def test_a_line_s_result_is_recorded_once_a_second_record_is_refused_and_leaves_the_first(journal: Journal) -> None:
    journal.add(lines("a", "b"))
    assert journal.record(ok("a", attempts=2, input_tokens=10, output_tokens=3))
    assert not journal.record(Result("a", 500, {"error": {}}, "HTTP 500", attempts=4))
    (row,) = [r for r in journal.rows() if r["custom_id"] == "a"]
    assert row["state"] == "done" and row["status"] == 200 and row["response"] == {"id": "reply-a"}
    assert row["attempts"] == 2 and row["input_tokens"] == 10 and row["output_tokens"] == 3
    assert journal.pending_ids() == {"b"}
    assert journal.counts() == {"pending": 1, "done": 1, "failed": 0, "bad": 0}


def test_a_result_for_a_line_the_journal_does_not_know_or_a_bad_line_is_refused(journal: Journal) -> None:
    journal.add([*lines("a"), BadLine(2, "not valid JSON")])
    assert not journal.record(ok("zzz"))
    assert not journal.record(ok("bad-line-2"))
    assert journal.counts() == {"pending": 1, "done": 0, "failed": 0, "bad": 1}


def test_results_survive_reopening_and_adding_the_input_again_keeps_every_state(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.jsonl")
    assert path.name == "out.jsonl.journal"
    first = Journal.open(path, "sha-1")
    first.add(lines("a", "b", "c"))
    first.record(ok("a"))
    first.record(Result("b", 400, {"error": {"message": "no"}}, "HTTP 400"))
    first.close()

    again = Journal.open(path, "sha-1")
    again.add(lines("a", "b", "c"))
    assert again.pending_ids() == {"c"}
    assert again.counts() == {"pending": 1, "done": 1, "failed": 1, "bad": 0}
    assert not again.record(ok("a"))
    again.close()


def test_a_journal_belongs_to_one_input(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.jsonl")
    Journal.open(path, "sha-1").close()
    with pytest.raises(JournalMismatch, match="different input file"):
        Journal.open(path, "sha-2")


def test_retry_failed_puts_only_failed_lines_back_to_pending(journal: Journal) -> None:
    journal.add([*lines("a", "b", "c"), BadLine(4, "oops")])
    journal.record(ok("a"))
    journal.record(Result("b", 400, None, "HTTP 400"))
    assert journal.retry_failed() == 1
    assert journal.pending_ids() == {"b", "c"}
    assert journal.record(ok("b"))  # a line put back can be recorded (once) again


def test_rows_come_in_input_or_completion_order_and_totals_add_up(journal: Journal) -> None:
    journal.add(lines("a", "b", "c"))
    for custom_id in ("c", "a", "b"):
        journal.record(ok(custom_id, cost="0.00000002", attempts=2 if custom_id == "a" else 1, input_tokens=5))
    assert [r["custom_id"] for r in journal.rows("input")] == ["a", "b", "c"]
    assert [r["custom_id"] for r in journal.rows("completion")] == ["c", "a", "b"]
    assert {r["cost_usd"] for r in journal.rows()} == {"0.00000002"}  # a plain decimal, never 2E-8
    totals = journal.totals()
    assert totals == {"input_tokens": 15, "output_tokens": 0, "retried": 1, "cost_usd": Decimal("0.00000006")}


def test_a_bad_line_never_takes_the_place_of_a_runnable_line_with_its_id(journal: Journal) -> None:
    journal.add(
        [
            BadLine(1, "url must be one of ...", "x"),  # x is taken by line 2
            Line(2, "x", CHAT, BODY),
            BadLine(3, "custom_id 'x' repeats an earlier line", "x"),
            BadLine(4, "url must be one of ...", "y"),  # y is its own
            BadLine(5, "method must be POST", "y"),  # y now taken by line 4
        ]
    )
    assert journal.pending_ids() == {"x"}
    bad = {r["line"]: r["custom_id"] for r in journal.rows("input", ("bad",))}
    assert bad == {1: "bad-line-1", 3: "bad-line-3", 4: "y", 5: "bad-line-5"}
