"""Reading a job's input: one request per JSONL line.

Two line formats, freely mixed:

- OpenAI's Batch API format: ``{"custom_id": "...", "method": "POST", "url": "/v1/...", "body": {...}}``;
- a bare request body (``{"model": ..., "messages": [...]}``), whose endpoint is ``--endpoint``
  (default ``/v1/chat/completions``) and whose id is ``line-N`` (N: its 1-based line number).

``--model`` fills in bodies that name no model. A line that is not a JSON object, names an
endpoint the runner does not drive, repeats a ``custom_id`` or has no model is a :class:`BadLine`
with its line number and reason; the rest of the job runs. Blank lines are skipped; a line may
end in CRLF, and a UTF-8 byte order mark at the start of the file is ignored.

A reason reads like a compiler's message, ``FILE:LINE:COL: plain words`` (``in.jsonl:3:41: line
ends before the JSON object does (truncated line?)``), because the person fixing the file needs
to find the spot and know what to type there: a JSON parser's own words ("unexpected control
character" for a line cut short) say neither. The column (1-based, in characters) is left out
when there is no one place to point at (``in.jsonl:7: missing "body"``). A line orjson refuses
is scanned again by :func:`syntax_error`, a small JSON checker that names the first mistake.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/moderations")
DEFAULT_ENDPOINT = "/v1/chat/completions"
UNNAMED = "<input>"  # the file name in reasons when parse_line is not told one


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line number in the input
    custom_id: str
    url: str  # /v1/chat/completions ...
    body: dict[str, Any]

    @property
    def path(self) -> str:
        """The API path below /v1 (what the pipeline calls it)."""
        return self.url[3:]

    def batch_line(self) -> bytes:
        """This request in the Batch API's input format."""
        line = {"custom_id": self.custom_id, "method": "POST", "url": self.url, "body": self.body}
        return orjson.dumps(line)


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str  # FILE:LINE[:COL]: what is wrong
    custom_id: str | None = None
    column: int | None = None  # 1-based, in characters; None when the reason points at the whole line


def normalise_endpoint(endpoint: str) -> str | None:
    path = "/" + endpoint.strip().lstrip("/")
    if not path.startswith("/v1/"):
        path = "/v1" + path
    path = path.rstrip("/")
    return path if path in ENDPOINTS else None


# -- saying where and what -------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """One line of one file, to build its :class:`BadLine`."""

    source: str
    number: int
    raw: bytes

    def bad(
        self, words: str, custom_id: str | None = None, *, at: tuple[str, ...] = (), column: int | None = None
    ) -> BadLine:
        """``at``: the keys down to the value the words are about (its column is found in the line)."""
        if at:
            column = locate(self.raw.decode("utf-8"), at)
        where = f"{self.source}:{self.number}" + (f":{column}" if column else "")
        return BadLine(self.number, f"{where}: {words}", custom_id, column)


def _kind(value: object) -> str:
    if value is None or isinstance(value, bool):
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _got(value: object) -> str:
    """A value as a message shows it: a string itself (shortened), anything else by its kind."""
    if not isinstance(value, str):
        return _kind(value)
    if not value.strip():
        return "an empty string" if not value else "a blank string"
    return repr(value if len(value) <= 60 else value[:59] + "…")


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+')


def locate(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based column where the value at ``path`` (object keys from the top down) starts in
    ``text``, which is valid JSON; None if there is no such value."""
    frames: list[list[Any]] = []  # per open container: [its opening bracket, the key being read]
    want_key = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if want_key:  # a key, or the end of an empty object
            want_key = False
            if token == "}":
                frames.pop()
            else:
                frames[-1][1] = orjson.loads(token)
            continue
        if token == ":":
            continue
        if token == ",":
            want_key = frames[-1][0] == "{"
        elif token in ("}", "]"):
            frames.pop()
        else:  # a value starts here
            if tuple(frame[1] for frame in frames) == path:
                return match.start() + 1
            if token in ("{", "["):
                frames.append([token, None])
                want_key = token == "{"
    return None


# -- JSON syntax, in plain words -------------------------------------------------------------

_SPACE = " \t\r\n"
_DIGITS = "0123456789"
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGIT_RUN = re.compile(r"[0-9]*")
_PLAIN_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERALS = ("true", "false", "null")
_PYTHON = {"True": "true", "False": "false", "None": "null"}
_NOT_JSON = "not valid JSON: "


class _Stop(Exception):
    """The first mistake: its 0-based index and plain words; no words: the line ends too soon."""

    def __init__(self, index: int, words: str = "") -> None:
        super().__init__(words)
        self.index, self.words = index, words


def _end(run: re.Pattern[str], text: str, i: int) -> int:
    """The index after the run (possibly empty) that ``run`` matches at ``i``."""
    match = run.match(text, i)
    return match.end() if match else i


def _char(c: str) -> str:
    return repr(c) if c.isprintable() else f"U+{ord(c):04X}"


def _word(text: str, i: int) -> str | None:
    match = _WORD.match(text, i)
    return match.group()[:40] if match else None


def syntax_error(text: str) -> tuple[int, str] | None:
    """The first JSON syntax mistake in ``text`` (one line, its line ending removed) as its
    0-based index and plain words, or None when this checker finds none (orjson may still refuse
    the line for a limit of its own: nesting depth, a number too large)."""
    stack: list[str] = []
    try:
        _scan(text, stack)
    except _Stop as stop:
        if stop.words:
            return stop.index, stop.words
        what = "the JSON value" if not stack else "the JSON object" if stack[0] == "{" else "the JSON array"
        return len(text), f"line ends before {what} does (truncated line?)"
    return None


def _scan(text: str, stack: list[str]) -> None:
    """Walk ``text`` as JSON (``stack``: the brackets open so far) and raise :class:`_Stop` at the
    first mistake. The states: a value is due (at the top, after ':'), an array item is due
    (first, or after ','), a key is due (first, or after ','), a ':' is due, a ',' or a closing
    bracket is due, or the value is over."""
    n, i, state, comma = len(text), 0, "value", 0
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n:
            if state == "end":
                return
            raise _Stop(n)
        c = text[i]
        if state == "end":
            what = "object" if text.lstrip().startswith("{") else "value"
            raise _Stop(i, f"{_NOT_JSON}more after the end of the JSON {what} (two on one line?)")
        if state == "after":
            close = "}" if stack[-1] == "{" else "]"
            if c == ",":
                comma, i, state = i, i + 1, ("key" if close == "}" else "item")
                continue
            if c != close:
                hint = " (missing comma?)" if c in '"{[-' or c in _DIGITS else ""
                raise _Stop(i, f"{_NOT_JSON}expected ',' or '{close}', got {_char(c)}{hint}")
            stack.pop()
            i, state = i + 1, ("after" if stack else "end")
        elif state in ("key", "first-key"):
            if c == "}":
                if state == "key":
                    raise _Stop(comma, "trailing comma before '}'")
                stack.pop()
                i, state = i + 1, ("after" if stack else "end")
            elif c == '"':
                i, state = _string(text, i), "colon"
            elif c == "'":
                raise _Stop(i, f"{_NOT_JSON}keys need double quotes, not single quotes")
            else:
                word = _word(text, i)
                got = f"the key {word} needs double quotes" if word else f"expected a key, got {_char(c)}"
                raise _Stop(i, _NOT_JSON + got)
        elif state == "colon":
            if c != ":":
                raise _Stop(i, f"{_NOT_JSON}expected ':' after the key, got {_char(c)}")
            i, state = i + 1, "value"
        elif c == "]" and state in ("item", "first-item"):
            if state == "item":
                raise _Stop(comma, "trailing comma before ']'")
            stack.pop()
            i, state = i + 1, ("after" if stack else "end")
        elif c in "{[":
            stack.append(c)
            i, state = i + 1, ("first-key" if c == "{" else "first-item")
        elif not stack and not _starts_scalar(text, i):
            rest = text[i:].rstrip()
            raise _Stop(i, f"{_NOT_JSON}expected a JSON object, got {rest if len(rest) <= 40 else rest[:39] + '…'!r}")
        else:
            i, state = _scalar(text, i), ("after" if stack else "end")


def _starts_scalar(text: str, i: int) -> bool:
    """Whether a string, a number or a JSON literal (perhaps cut short) starts at ``i``."""
    rest = text[i : i + 5]
    return rest[0] in '"-' or rest[0] in _DIGITS or any(w.startswith(rest) or rest.startswith(w) for w in _LITERALS)


def _scalar(text: str, i: int) -> int:
    """The index after the string, number or literal at ``i``."""
    c = text[i]
    if c == '"':
        return _string(text, i)
    if c == "-" or c in _DIGITS:
        return _number(text, i)
    for literal in _LITERALS:
        if text.startswith(literal, i):
            return i + len(literal)
        if literal.startswith(text[i:]):
            raise _Stop(len(text))
    word = _word(text, i)
    if word in _PYTHON:
        raise _Stop(i, f"{_NOT_JSON}{word} is Python; JSON writes {_PYTHON[word]}")
    if word in ("NaN", "Infinity"):
        raise _Stop(i, f"{_NOT_JSON}{word} is not a JSON number")
    if word:
        raise _Stop(i, f"{_NOT_JSON}expected a value, got {word} (a string needs double quotes)")
    if c == "'":
        raise _Stop(i, f"{_NOT_JSON}strings need double quotes, not single quotes")
    raise _Stop(i, f"{_NOT_JSON}expected a value, got {_char(c)}")


def _string(text: str, i: int) -> int:
    """The index after the string that opens at ``i``."""
    n, j = len(text), i + 1
    while True:
        j = _end(_PLAIN_RUN, text, j)
        if j >= n:
            raise _Stop(n)
        c = text[j]
        if c == '"':
            return j + 1
        if c == "\\":
            j = _escape(text, j)
        elif c == "\t":
            raise _Stop(j, f"{_NOT_JSON}a tab inside a string must be written \\t")
        else:
            raise _Stop(j, f"{_NOT_JSON}control character U+{ord(c):04X} inside a string (write it as \\u{ord(c):04x})")


def _escape(text: str, j: int) -> int:
    """The index after the escape at ``j`` (a backslash)."""
    if j + 1 >= len(text):
        raise _Stop(len(text))
    e = text[j + 1]
    if e in '"\\/bfnrt':
        return j + 2
    if e != "u":
        raise _Stop(j, f"{_NOT_JSON}unknown escape \\{e} in a string (a backslash itself is written \\\\)")
    code = _hex4(text, j)
    if 0xDC00 <= code <= 0xDFFF:
        raise _Stop(j, f"{_NOT_JSON}\\u{code:04x} is the second half of a UTF-16 pair, without the first")
    if 0xD800 <= code <= 0xDBFF:
        after = text[j + 6 : j + 8]
        if len(after) < 2 and "\\u".startswith(after):
            raise _Stop(len(text))
        if after == "\\u" and 0xDC00 <= _hex4(text, j + 6) <= 0xDFFF:
            return j + 12
        raise _Stop(j, f"{_NOT_JSON}\\u{code:04x} is the first half of a UTF-16 pair, without the second")
    return j + 6


def _hex4(text: str, j: int) -> int:
    """The code point of the ``\\uXXXX`` escape at ``j``."""
    digits = text[j + 2 : j + 6]
    if not set(digits) <= _HEX:
        raise _Stop(j, f"{_NOT_JSON}\\u must be followed by four hex digits")
    if len(digits) < 4:
        raise _Stop(len(text))
    return int(digits, 16)


def _number(text: str, i: int) -> int:
    """The index after the number that starts at ``i``."""
    n, j = len(text), i
    if text[j] == "-":
        j += 1
        if j == n:
            raise _Stop(n)
        if text.startswith("Infinity", j):
            raise _Stop(i, f"{_NOT_JSON}-Infinity is not a JSON number")
    if text[j] == "0":
        j += 1
        if j < n and text[j] in _DIGITS:
            raise _Stop(i, f"{_NOT_JSON}a number cannot start with 0 (leading zero)")
    elif text[j] in _DIGITS:
        j = _end(_DIGIT_RUN, text, j)
    else:
        raise _Stop(j, f"{_NOT_JSON}expected a digit after '-', got {_char(text[j])}")
    if j < n and text[j] == ".":
        j = _digits(text, j + 1, "after the decimal point")
    if j < n and text[j] in "eE":
        j += 1
        if j < n and text[j] in "+-":
            j += 1
        j = _digits(text, j, "in the exponent")
    return j


def _digits(text: str, j: int, where: str) -> int:
    if j >= len(text):
        raise _Stop(len(text))
    if text[j] not in _DIGITS:
        raise _Stop(j, f"{_NOT_JSON}expected a digit {where}, got {_char(text[j])}")
    return _end(_DIGIT_RUN, text, j)


def _unreadable(where: _Where, error: orjson.JSONDecodeError) -> BadLine:
    """Why orjson refused the line, in plain words."""
    line = where.raw.rstrip(b"\r\n")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad:
        column = len(line[: bad.start].decode("utf-8")) + 1
        return where.bad(f"not valid UTF-8 (byte 0x{line[bad.start]:02x})", column=column)
    found = syntax_error(text)
    if found is None:
        return where.bad(_NOT_JSON + error.msg, column=error.colno)
    index, words = found
    return where.bad(words, column=index + 1)


# -- lines -----------------------------------------------------------------------------------


def parse_line(number: int, raw: bytes, model: str | None, endpoint: str, source: str = UNNAMED) -> Line | BadLine:
    """Line ``number`` of the file ``source`` (named in a bad line's reason), as a request."""
    where = _Where(source, number, raw)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return _unreadable(where, error)
    if not isinstance(value, dict):
        indent = len(raw) - len(raw.lstrip())
        return where.bad(f"expected a JSON object, got {_kind(value)}", column=indent + 1)
    batch = "body" in value and ("url" in value or "custom_id" in value)
    if not batch and "custom_id" in value and ("url" in value or "method" in value):
        return where.bad('missing "body" (a Batch API line holds its request in "body")')
    model_at: tuple[str, ...] = ("model",)
    if batch:
        custom_id = value.get("custom_id")
        if "custom_id" not in value:
            return where.bad('missing "custom_id"')
        if not isinstance(custom_id, str) or not custom_id.strip():
            return where.bad(f"custom_id must be a non-empty string, got {_got(custom_id)}", at=("custom_id",))
        if value.get("method", "POST") != "POST":
            return where.bad(f"method must be POST, got {_got(value['method'])}", custom_id, at=("method",))
        url = value.get("url", endpoint)
        path = normalise_endpoint(url) if isinstance(url, str) else None
        if path is None:
            return where.bad(f"url must be one of {', '.join(ENDPOINTS)}, got {_got(url)}", custom_id, at=("url",))
        body = value["body"]
        if not isinstance(body, dict):
            return where.bad(f"body must be a JSON object, got {_kind(body)}", custom_id, at=("body",))
        model_at = ("body", "model")
    else:
        custom_id, path, body = f"line-{number}", endpoint, value
    if "model" not in body:
        if model is None:
            return where.bad("the request names no model (set one in the line or pass --model)", custom_id)
        body = {**body, "model": model}
    elif not isinstance(body["model"], str) or not body["model"]:
        return where.bad(f"model must be a non-empty string, got {_got(body['model'])}", custom_id, at=model_at)
    if body.get("stream") is True:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return Line(number, custom_id, path, body)


def read_lines(path: Path, model: str | None = None, endpoint: str = DEFAULT_ENDPOINT) -> Iterator[Line | BadLine]:
    """Every non-blank line of ``path``, parsed; a repeated ``custom_id`` is a bad line (the first
    one with that id runs). Reasons name the file as ``path`` spells it."""
    normalised = normalise_endpoint(endpoint)
    if normalised is None:
        raise ValueError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    source = str(path)
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            parsed = parse_line(number, raw, model, normalised, source)
            if isinstance(parsed, Line):
                first = seen.setdefault(parsed.custom_id, number)
                if first != number:
                    words = f"custom_id {parsed.custom_id!r} repeats an earlier line (line {first})"
                    yield _Where(source, number, raw).bad(words, parsed.custom_id, at=("custom_id",))
                    continue
            yield parsed


def fingerprint(path: Path) -> str:
    """sha256 of the input file: a journal belongs to one input."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
