"""The job's input (both line formats, bad lines, numbering) and its journal (exactly-once)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from ferryman.batch.inputs import (
    ENDPOINTS,
    BadLine,
    Line,
    fingerprint,
    normalise_endpoint,
    parse_line,
    read_lines,
    syntax_error,
)
from ferryman.batch.journal import Journal, JournalMismatch, Result, journal_path
from tests.batch.conftest import Job, chat_line

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
        (b"{broken", "4:2: not valid JSON: the key broken needs double quotes", None),
        (b"[1, 2]", "4:1: expected a JSON object, got an array", None),
        (b'  "a string"', "4:3: expected a JSON object, got a string", None),
        (b"null", "4:1: expected a JSON object, got null", None),
        (
            raw({"custom_id": "", "url": CHAT, "body": BODY}),
            "4:14: custom_id must be a non-empty string, got an empty string",
            None,
        ),
        (
            raw({"custom_id": 5, "url": CHAT, "body": BODY}),
            "4:14: custom_id must be a non-empty string, got a number",
            None,
        ),
        (raw({"url": CHAT, "body": BODY}), '4: missing "custom_id"', None),
        (
            raw({"custom_id": "a", "url": CHAT}),
            '4: missing "body" (a Batch API line holds its request in "body")',
            None,
        ),
        (
            raw({"custom_id": "a", "method": "GET", "url": CHAT, "body": BODY}),
            "4:27: method must be POST, got 'GET'",
            "a",
        ),
        (
            raw({"custom_id": "a", "url": "/v1/images/generations", "body": BODY}),
            f"4:24: url must be one of {', '.join(ENDPOINTS)}, got '/v1/images/generations'",
            "a",
        ),
        (
            raw({"custom_id": "a", "url": 7, "body": BODY}),
            f"4:24: url must be one of {', '.join(ENDPOINTS)}, got a number",
            "a",
        ),
        (raw({"custom_id": "a", "url": CHAT, "body": [1]}), "4:54: body must be a JSON object, got an array", "a"),
        (
            raw({"custom_id": "a", "url": CHAT, "body": {"messages": []}}),
            "4: the request names no model (set one in the line or pass --model)",
            "a",
        ),
        (raw({"messages": []}), "4: the request names no model (set one in the line or pass --model)", "line-4"),
        (raw({**BODY, "model": ""}), "4:10: model must be a non-empty string, got an empty string", "line-4"),
        (raw({**BODY, "model": 4}), "4:10: model must be a non-empty string, got a number", "line-4"),
        (raw({**BODY, "model": None}), "4:10: model must be a non-empty string, got null", "line-4"),
        (
            raw({"custom_id": "a", "url": CHAT, "body": {"model": ["gpt-4o"]}}),
            "4:63: model must be a non-empty string, got an array",
            "a",
        ),
        (
            '{"note": "héllo wörld", "model": false}'.encode(),
            "4:34: model must be a non-empty string, got false",
            "line-4",
        ),
    ],
)
def test_a_bad_line_says_where_and_why(text: bytes, reason: str, custom_id: str | None) -> None:
    """The reason is FILE:LINE[:COL]: words; the column (1-based, in characters) points at the
    value that is wrong, and is left out when nothing in the line is (a field that is missing)."""
    bad = parse_line(4, text, None, CHAT, "in.jsonl")
    assert isinstance(bad, BadLine)
    assert (bad.number, bad.reason, bad.custom_id) == (4, f"in.jsonl:{reason}", custom_id)
    column = re.match(r"4:(\d+): ", reason)
    assert bad.column == (int(column.group(1)) if column else None)


def test_without_a_file_name_the_reason_says_input() -> None:
    bad = parse_line(2, b"[]", None, CHAT)
    assert isinstance(bad, BadLine) and bad.reason == "<input>:2:1: expected a JSON object, got an array"


TRUNCATED = b'{"custom_id": "t", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hel'


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        # cut short anywhere: in a string (orjson: "unexpected control character"), a number, a word, an escape
        (TRUNCATED + b"\n", 98, "line ends before the JSON object does (truncated line?)"),
        (TRUNCATED + b"\r\n", 98, "line ends before the JSON object does (truncated line?)"),
        (b'{"model": "m", "n": 1.', 23, "line ends before the JSON object does (truncated line?)"),
        (b'{"model": "m", "stream": tr', 28, "line ends before the JSON object does (truncated line?)"),
        (b'{"model": "m", "x": "\\u00', 26, "line ends before the JSON object does (truncated line?)"),
        (b'{"model": "m", "messages": [', 29, "line ends before the JSON object does (truncated line?)"),
        (b'[{"model": "m"}', 16, "line ends before the JSON array does (truncated line?)"),
        (b"not json", 1, "not valid JSON: expected a JSON object, got 'not json'"),
        (b"{}{}", 3, "not valid JSON: more after the end of the JSON object (two on one line?)"),
        (b'{"model": "m", "max_tokens": 5,}', 31, "trailing comma before '}'"),
        (b'{"model": "m", "stop": ["a", "b",]}', 33, "trailing comma before ']'"),
        (b'{"model": "m" "n": 1}', 15, "not valid JSON: expected ',' or '}', got '\"' (missing comma?)"),
        (b'{"model" "m"}', 10, "not valid JSON: expected ':' after the key, got '\"'"),
        (b"{'model': 'm'}", 2, "not valid JSON: keys need double quotes, not single quotes"),
        (b"{\"model\": 'm'}", 11, "not valid JSON: strings need double quotes, not single quotes"),
        (b'{"model": gpt}', 11, "not valid JSON: expected a value, got gpt (a string needs double quotes)"),
        (b'{"model": "m", "stream": True}', 26, "not valid JSON: True is Python; JSON writes true"),
        (b'{"model": "m", "temperature": NaN}', 31, "not valid JSON: NaN is not a JSON number"),
        (b'{"model": "m", "n": 01}', 21, "not valid JSON: a number cannot start with 0 (leading zero)"),
        (b'{"model": "m", "n": 1.e3}', 23, "not valid JSON: expected a digit after the decimal point, got 'e'"),
        (b'{"model": "m", "x": "a\tb"}', 23, "not valid JSON: a tab inside a string must be written \\t"),
        (
            b'{"model": "m", "x": "a\x01"}',
            23,
            "not valid JSON: control character U+0001 inside a string (write it as \\u0001)",
        ),
        (
            b'{"model": "m", "x": "\\q"}',
            22,
            "not valid JSON: unknown escape \\q in a string (a backslash itself is written \\\\)",
        ),
        (b'{"model": "m", "x": "\\u12g4"}', 22, "not valid JSON: \\u must be followed by four hex digits"),
        (
            b'{"model": "m", "x": "\\ud83d!"}',
            22,
            "not valid JSON: \\ud83d is the first half of a UTF-16 pair, without the second",
        ),
        (
            b'{"model": "m"} {"model": "n"}',
            16,
            "not valid JSON: more after the end of the JSON object (two on one line?)",
        ),
        (b'{"model": "m", "x": "\xff"}', 22, "not valid UTF-8 (byte 0xff)"),
        ('{"model": "é", "x": "'.encode() + b"\xc3(", 22, "not valid UTF-8 (byte 0xc3)"),
        (b'{"model": "m", "x": [' + b"[" * 1100 + b"]" * 1100 + b"]}", 1045, "not valid JSON: depth limit exceeded"),
    ],
)
def test_a_line_that_is_not_json_says_where_it_goes_wrong_in_plain_words(text: bytes, at: int, words: str) -> None:
    bad = parse_line(3, text + b"\n", None, CHAT, "in.jsonl")
    assert isinstance(bad, BadLine) and bad.reason == f"in.jsonl:3:{at}: {words}" and bad.column == at


def test_json_the_checker_accepts_is_json_orjson_accepts() -> None:
    """The checker only explains orjson's refusals: on lines orjson reads it finds nothing."""
    for text in (
        '{"a": [1, -0.5e+3, true, false, null, {}, [], "\\u00e9\\ud83d\\ude00\\n"], "b": {"c": ""}}',
        '  {"model" : "m" , "x":[ 1 ,2 ] }  ',
        '{"é": "ü"}',
    ):
        orjson.loads(text)
        assert syntax_error(text) is None, text


def test_a_truncated_line_is_not_reported_as_a_control_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's example: a line cut short in a string used to read "unexpected control character"."""
    monkeypatch.chdir(tmp_path)
    Path("in.jsonl").write_bytes(raw(BODY) + b"\n" + TRUNCATED + b"\n" + raw(BODY) + b"\n")
    items = list(read_lines(Path("in.jsonl")))
    assert [type(i).__name__ for i in items] == ["Line", "BadLine", "Line"]
    assert items[1].reason == "in.jsonl:2:98: line ends before the JSON object does (truncated line?)"


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


CHAT_LINE = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
# the examples, one per line (a file as a person might have left it: CRLF, blank lines)
EXAMPLES = [
    (b'{"model": "gpt-4o-mini", "messages": [{"', "3:41: line ends before the JSON object does (truncated line?)"),
    (b'{"input": "ferry", "n": 22,}', "4:27: trailing comma before '}'"),
    (b'[{"model": "gpt-4o-mini"}]', "5:1: expected a JSON object, got an array"),
    (b'{"input": "\xff"}', "6:12: not valid UTF-8 (byte 0xff)"),
    (
        b'{"custom_id": "r7", "url": "/v1/embeddings"}',
        '7: missing "body" (a Batch API line holds its request in "body")',
    ),
    (b'{"model": 4, "input": "x"}', "8:11: model must be a non-empty string, got a number"),
]


def write_examples(path: Path) -> None:
    """Lines 1 and 9 are good, 2 is blank, 3 to 8 are :data:`EXAMPLES`; every line ends in CRLF."""
    lines = [CHAT_LINE, b"  ", *(text for text, _ in EXAMPLES), CHAT_LINE.replace(b"hi", b"bye")]
    path.write_bytes(b"".join(line + b"\r\n" for line in lines))


def test_each_bad_line_is_named_file_line_column_and_crlf_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_examples(Path("in.jsonl"))
    items = list(read_lines(Path("in.jsonl")))
    assert [(type(i).__name__, i.number) for i in items] == [
        ("Line", 1),
        *(("BadLine", n) for n in range(3, 9)),
        ("Line", 9),
    ]
    assert [i.reason for i in items if isinstance(i, BadLine)] == [f"in.jsonl:{reason}" for _, reason in EXAMPLES]
    good = [i for i in items if isinstance(i, Line)]
    assert [line.body["messages"][0]["content"] for line in good] == ["hi", "bye"]


def test_reasons_name_the_file_as_given_and_a_repeat_points_at_its_id(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "in.jsonl"
    path.parent.mkdir()
    path.write_bytes(raw({"custom_id": "a", "body": BODY}) + b"\n" + raw({"custom_id": "a", "body": BODY}) + b"\n[]\n")
    _, repeated, bad = read_lines(path)
    assert isinstance(repeated, BadLine) and isinstance(bad, BadLine)
    assert repeated.reason == f"{path}:2:14: custom_id 'a' repeats an earlier line (line 1)"
    assert bad.reason == f"{path}:3:1: expected a JSON object, got an array"


def test_a_byte_order_mark_at_the_start_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + raw(BODY) + b"\r\n" + raw(BODY) + b"\r\n")
    assert [type(i).__name__ for i in read_lines(path)] == ["Line", "Line"]


def test_ferryman_run_prints_each_bad_line_s_place_and_runs_the_rest(batch_job: Job) -> None:
    """End to end: the CLI names every bad line on stderr (and in the errors file), sends the good
    ones, and exits 1 (some lines could not be read), as it did before the messages changed."""
    write_examples(batch_job.input)
    text = batch_job.input.read_bytes()
    batch_job.input.write_bytes(text.replace(CHAT_LINE, orjson.dumps(chat_line("c1")), 1))
    done = batch_job.run()  # one message, one line of stderr, however narrow the terminal
    assert done.returncode == 1, done.stderr
    assert "control character" not in done.stderr
    for _, reason in EXAMPLES:
        assert f"{batch_job.input}:{reason}\n" in done.stderr, (reason, done.stderr)
    errors = {e["line"]: e["error"] for e in batch_job.error_rows()}
    assert errors == {int(reason.split(":")[0]): f"{batch_job.input}:{reason}" for _, reason in EXAMPLES}
    assert sorted((r["custom_id"], r["status"]) for r in batch_job.results()) == [("c1", 200), ("line-9", 200)]


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
