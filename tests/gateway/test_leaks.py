"""Every configured secret stays secret, wherever a caller puts it.

A gateway (in process, access log on, its JSON log lines captured) is configured with three
secrets: the admin key (``ferryman-admin-test-secret``: no key shape, so only redaction by value
can catch it), the upstream key (``sk-…``) and a virtual key (``fm-…``). Each of them, separately,
is sent by a caller (authenticated with the virtual key) in a path segment (raw and
percent-encoded), in the ``x-note`` and ``user-agent`` headers, in a query value and a query name
(raw and percent-encoded), as the model name, in a message's content (plain and streamed, the
mock scripted to repeat it in its answer) and in the ``user`` field, and also as the bearer
token itself (the admin and upstream keys) and on requests with no key at all (refused,
audited as anonymous).

Then none of the three may show up, raw, percent-encoded (either hex case, path or form style)
or JSON-escaped, in: the log records (the ``ferryman`` loggers' records as emitted, the JSON lines
written, and any other logger's records), any row of any table of the gateway's database (the
audit rows above all), ``GET /metrics``, any admin reply (every ``GET /admin/…`` route), or any
error body or reply header a caller got.

Both audit body modes: ``redacted`` (keys and personal data removed) and ``full`` (personal data
kept, but keys, and configured secrets, always removed): the message's other words must still
be there in ``full``.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx2
import pytest

from ferryman.logs import configure_json_logging, remove_json_logging
from ferryman.mock.control_client import MockControl
from tests.gateway.conftest import ADMIN_KEY
from tests.leak_guard import shown
from tests.pipeline.conftest import UPSTREAM_KEY

MODEL = "gpt-4o-mini"
EMAIL = "river.keeper@example.com"  # personal data: kept in ``full``, removed in ``redacted``
FILLER = "keep it safe"  # the words around the secret, which ``full`` keeps


# -- what must not appear --------------------------------------------------------------------------


def every_byte_encoded(value: str, upper: bool = True) -> str:
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in value.encode())


def forms(secret: str) -> set[str]:
    """``secret`` raw, percent-encoded (as a path segment, as a form value, every byte), JSON-escaped."""
    found = {secret, quote(secret, safe=""), quote_plus(secret, safe=""), json.dumps(secret)[1:-1]}
    found |= {every_byte_encoded(secret), every_byte_encoded(secret, upper=False)}
    return found


@dataclass
class Secrets:
    values: dict[str, str] = field(repr=False)  # name -> secret (never shown in a failure's report)
    seen: list[str] = field(default_factory=list)  # findings: "where: which secret (form)"

    def scan(self, text: str | bytes | None, where: str) -> None:
        if not text:
            return
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        for name, secret in self.values.items():
            for form in sorted(forms(secret)):
                if form in text:
                    at = text.find(form)
                    context = " ".join(text[max(0, at - 80) : at + len(form) + 80].split())
                    self.seen.append(self.masked(f"{where}: the {name} ({shown(form)!r}) in …{context}…"))
                    break

    def masked(self, text: str) -> str:
        """``text`` with every form of every secret replaced by its name (a report never shows one)."""
        for name, secret in self.values.items():
            for form in sorted(forms(secret), key=len, reverse=True):
                text = text.replace(form, f"<{name}>")
        return text

    def assert_clean(self) -> None:
        assert not self.seen, f"{len(self.seen)} leak(s):\n" + "\n".join(self.seen[:60])


# -- the log records -------------------------------------------------------------------------------

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "taskName"}


class RawRecords(logging.Handler):
    """Every record as it reaches this handler: the message, the exception text, the extras."""

    def __init__(self, skip_ferryman: bool = False) -> None:
        super().__init__(logging.NOTSET)
        self.skip_ferryman = skip_ferryman
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.skip_ferryman and (record.name == "ferryman" or record.name.startswith("ferryman.")):
            return
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        exception = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg!s} {record.args!r}"
        stack = record.stack_info or ""
        self.texts.append(
            f"{record.name} {record.levelname} {message} {json.dumps(extras, default=str)} {exception}"
            f" {record.exc_text or ''} {stack}"
        )


@dataclass
class Logs:
    ferryman: RawRecords  # the ``ferryman`` loggers' records as emitted (before the JSON handler's filter)
    others: RawRecords  # every other logger's records that reach the root logger
    lines: io.StringIO  # the JSON lines ``ferryman serve`` writes

    def json_lines(self) -> list[str]:
        return [line for line in self.lines.getvalue().splitlines() if line.strip()]


@pytest.fixture
def logs() -> Iterator[Logs]:
    logger = logging.getLogger("ferryman")
    raw, others, stream = RawRecords(), RawRecords(skip_ferryman=True), io.StringIO()
    logger.addHandler(raw)  # before the JSON handler: it sees each record before that handler's filter
    logging.getLogger().addHandler(others)
    configure_json_logging("DEBUG", stream=stream)
    try:
        yield Logs(raw, others, stream)
    finally:
        remove_json_logging()
        logging.getLogger().removeHandler(others)
        logger.removeHandler(raw)


# -- the requests ----------------------------------------------------------------------------------


def chat(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@dataclass
class Sent:
    label: str
    reply: httpx2.Response


def send_everywhere(caller: httpx2.Client, anonymous: httpx2.Client, name: str, secret: str) -> list[Sent]:
    """``secret`` in every place a caller can put it; returns each reply with what was sent."""
    encoded = every_byte_encoded(secret)
    message = f"My {name} is {secret}, {FILLER}. Write to {EMAIL}."
    plan: list[tuple[str, Callable[[], httpx2.Response]]] = [
        ("path segment", lambda: caller.get(f"/v1/files/{secret}")),
        ("path segment, every byte percent-encoded", lambda: caller.get(f"/v1/files/{encoded}")),
        ("path segment of a content download", lambda: caller.get(f"/v1/files/{secret}/content")),
        ("path segment, DELETE", lambda: caller.delete(f"/v1/files/{secret}")),
        ("x-note header", lambda: caller.post("/v1/chat/completions", json=chat(), headers={"x-note": secret})),
        ("user-agent header", lambda: caller.post("/v1/chat/completions", json=chat(), headers={"user-agent": secret})),
        ("user-agent header, GET", lambda: caller.get("/v1/models", headers={"user-agent": secret})),
        ("query value", lambda: caller.get(f"/v1/models?note={secret}")),
        ("query value, percent-encoded", lambda: caller.get(f"/v1/models?note={encoded}")),
        ("query value on a POST", lambda: caller.post(f"/v1/chat/completions?note={secret}", json=chat())),
        ("query name", lambda: caller.get(f"/v1/models?{secret}=1")),
        ("query name, percent-encoded", lambda: caller.get(f"/v1/files?{encoded}=1")),
        ("query name on a POST", lambda: caller.post(f"/v1/chat/completions?{secret}", json=chat())),
        ("model", lambda: caller.post("/v1/chat/completions", json={**chat(), "model": secret})),
        (
            "model, streamed",
            lambda: caller.post("/v1/chat/completions", json={**chat(), "model": secret, "stream": True}),
        ),
        ("model of an embedding", lambda: caller.post("/v1/embeddings", json={"model": secret, "input": "x"})),
        ("model in a path", lambda: caller.get(f"/v1/models/{secret}")),
        ("message content", lambda: caller.post("/v1/chat/completions", json=chat(message))),
        ("message content, streamed", lambda: caller.post("/v1/chat/completions", json=chat(message, stream=True))),
        ("user field", lambda: caller.post("/v1/chat/completions", json=chat(user=secret))),
        (
            "embedding input",
            lambda: caller.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": message}),
        ),
        # no key at all: refused (401) and audited as anonymous
        ("path segment, no key", lambda: anonymous.get(f"/v1/files/{secret}")),
        ("model, no key", lambda: anonymous.post("/v1/chat/completions", json={**chat(), "model": secret})),
        (
            "x-note header and query, no key",
            lambda: anonymous.get(f"/v1/models?{secret}={secret}", headers={"x-note": secret}),
        ),
    ]
    if name != "virtual key":  # the virtual key is the caller's credential already
        plan += [
            ("as the bearer token", lambda: anonymous.get("/v1/models", headers={"authorization": f"Bearer {secret}"})),
            ("as the api-key header", lambda: anonymous.get("/v1/models", headers={"api-key": secret})),
            (
                "as the bearer token, with the model",
                lambda: anonymous.post(
                    "/v1/chat/completions",
                    json={**chat(), "model": secret},
                    headers={"authorization": f"Bearer {secret}"},
                ),
            ),
        ]
    return [Sent(f"the {name} as {label}", send()) for label, send in plan]


# -- reading the gateway's state -------------------------------------------------------------------


def database_rows(db: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            quoted = table.replace('"', '""')
            for row in conn.execute(f'SELECT * FROM "{quoted}"'):
                yield table, dict(row)
    finally:
        conn.close()


def row_text(row: dict[str, Any]) -> str:
    parts = []
    for value in row.values():
        if isinstance(value, bytes | bytearray | memoryview):
            parts.append(bytes(value).decode("utf-8", errors="replace"))
        elif value is not None:
            parts.append(str(value))
    return " | ".join(parts)


def admin_gets(gw: Any, key_id: str) -> list[str]:
    """Every ``GET /admin/…`` route, its path parameters filled in."""
    paths = []
    for route in gw.gateway.admin.routes():
        if "GET" not in (route.methods or ()) or "{name}" in route.path:
            continue
        path = route.path.replace("{id}", key_id)
        if "{" in path or path == "/admin":  # the JSON 404 for admin paths that do not exist
            continue
        paths.append(path + ("?limit=1000" if path == "/admin/requests" else ""))
    return paths


# -- the test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bodies", ["redacted", "full"])
def test_no_configured_secret_shows_up_anywhere(
    gateway: Any, ferryman_mock: MockControl, logs: Logs, tmp_path: Path, bodies: str
) -> None:
    gw = gateway(audit={"bodies": bodies})
    virtual, record = gw.new_key_with_record("leaky-caller")
    secrets = Secrets({"admin key": ADMIN_KEY, "upstream key": UPSTREAM_KEY, "virtual key": virtual})

    sent: list[Sent] = []
    with (
        httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {virtual}"}, timeout=30) as caller,
        httpx2.Client(base_url=gw.url, timeout=30) as anonymous,
    ):
        for name, secret in secrets.values.items():
            # the model repeats the secret back (a reply body the audit keeps)
            ferryman_mock.set_fixtures([{"match": "(?i)keep it safe", "content": f"I will remember {secret}."}])
            sent += send_everywhere(caller, anonymous, name, secret)

    # the replies the callers got: every header, and every error body
    errors = 0
    for item in sent:
        headers = "\n".join(f"{k}: {v}" for k, v in item.reply.headers.items())
        secrets.scan(headers, f"the reply headers to {item.label}")
        if item.reply.status_code >= 400 or b'"error"' in item.reply.content:
            errors += 1
            secrets.scan(item.reply.content, f"the error body ({item.reply.status_code}) sent for {item.label}")
    assert errors >= 30, "too few refusals to say anything about error bodies"
    assert all(s.reply.status_code < 500 for s in sent), [(s.label, s.reply.status_code) for s in sent]
    content = [s for s in sent if s.label.endswith("as message content")]
    assert [s.reply.status_code for s in content] == [200, 200, 200]

    # /metrics and every admin reply
    metrics = gw.admin.get("/metrics")
    assert metrics.status_code == 200
    secrets.scan(metrics.text, "GET /metrics")
    for path in admin_gets(gw, record.id):
        reply = gw.admin.get(path)
        assert reply.status_code == 200, (path, secrets.masked(reply.text[:300]))
        secrets.scan(reply.text, f"GET {path}")

    # every row of every table of the gateway's database
    db = tmp_path / "gateway.db"
    assert db.exists()
    rows = list(database_rows(db))
    audit_rows = [row for table, row in rows if table == "audit"]
    assert len(audit_rows) >= len(sent), f"{len(audit_rows)} audit rows for {len(sent)} requests"
    for table, row in rows:
        secrets.scan(row_text(row), f"a row of table {table} ({row.get('endpoint') or ''} {row.get('status') or ''})")

    # the logs: ferryman's records as emitted, the JSON lines written, any other logger's records
    access = [line for line in logs.json_lines() if '"ferryman.access"' in line]
    assert len(access) >= len(sent), f"{len(access)} access log lines for {len(sent)} requests"
    for line in logs.json_lines():
        secrets.scan(line, "a JSON log line")
    for text in logs.ferryman.texts:
        secrets.scan(text, "a ferryman log record (before the JSON handler's filter)")
    for text in logs.others.texts:
        secrets.scan(text, "a log record of another logger")

    secrets.assert_clean()

    # what each mode keeps of the message (the secret went either way)
    kept = [row["request_body"] or "" for row in audit_rows if FILLER in (row["request_body"] or "")]
    assert len(kept) >= 3 * 3, f"the message content is missing from the audit rows ({bodies})"
    answers = [row["response_body"] or "" for row in audit_rows if "I will remember" in (row["response_body"] or "")]
    assert len(answers) >= 3 * 2, f"the model's answers are missing from the audit rows ({bodies})"
    assert all("[REDACTED]" in body for body in kept + answers)
    if bodies == "redacted":
        assert not any(EMAIL in body for body in kept), "personal data kept with audit.bodies=redacted"
    else:
        assert all(EMAIL in body for body in kept), "audit.bodies=full dropped the message's personal data"
