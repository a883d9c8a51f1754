"""Security of the gateway: the admin API needs the admin key, keys are compared in constant
time, revoked and expired keys are refused everywhere, and no key (``sk-…``, ``fm-…``) shows up
in a log line, an error body, a metric label or an audit row, wherever a caller put one (query
string, headers, body, path, model name) or the upstream echoed one. Also the proxy's handling
of odd requests: too large (413), not JSON (400), unknown paths and fields (passed through
untouched). Cross-key access to objects is in ``test_isolation.py``.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import io
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import ferryman.gateway
from ferryman.logs import configure_json_logging, remove_json_logging
from ferryman.mock.app import key_id as mock_key_id
from tests.gateway.conftest import ADMIN_KEY
from tests.leak_guard import find_secrets
from tests.pipeline.conftest import UPSTREAM_KEY

MESSAGES = [{"role": "user", "content": "Say hello."}]
# Keys a careless caller might send: shaped like real ones, so the redaction must recognise them.
FAKE_OPENAI_KEY = "sk-proj-" + "Zq9" * 15
FAKE_VIRTUAL_KEY = "fm-" + "Wx7_" * 11
QUERY_MARKER = "query-value-that-must-not-be-logged"
GATEWAY_SRC = Path(ferryman.gateway.__file__).parent


def admin_requests(gw: Any) -> list[tuple[str, str]]:
    """Every admin route (method, path), with its path parameters filled in."""
    out = []
    for route in gw.gateway.admin.routes():
        path = route.path.replace("{id}", "key_0123456789abcdef0123").replace("{name}", "alpha")
        out += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


def bodies_of(errors: list[httpx2.Response]) -> str:
    return "\n".join(f"{r.status_code} {r.text}" for r in errors)


def audit_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM audit ORDER BY seq")]
    finally:
        conn.close()


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "taskName"}


class RawRecords(logging.Handler):
    """Every ``ferryman`` record as emitted, before any handler's filter redacts it: the message,
    the exception text and every ``extra=`` field."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.texts: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        exception = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.texts.append(f"{record.name} {record.getMessage()} {json.dumps(extras, default=str)} {exception}")
        self.records.append(record)


@dataclass
class Logs:
    raw: RawRecords
    lines: io.StringIO

    def text(self) -> str:
        return "\n".join(self.raw.texts) + "\n" + self.lines.getvalue()


@pytest.fixture
def logs() -> Iterator[Logs]:
    """What the ``ferryman`` loggers emit at DEBUG: the raw records, and the JSON lines that
    ``ferryman serve`` writes (its handler redacts; the raw records must not need it)."""
    logger = logging.getLogger("ferryman")
    raw, stream = RawRecords(), io.StringIO()
    logger.addHandler(raw)  # first: it sees each record before the JSON handler's filter
    configure_json_logging("DEBUG", stream=stream)
    try:
        yield Logs(raw, stream)
    finally:
        remove_json_logging()
        logger.removeHandler(raw)


# -- the admin API ---------------------------------------------------------------------------------


def test_every_admin_route_refuses_a_missing_or_wrong_admin_key(gateway):
    """No key, a wrong one (shorter, longer, a prefix, the right one plus a character), another
    scheme, or a virtual key: 401 invalid_admin_key on every /admin route, and nothing changes."""
    gw = gateway()
    virtual = gw.new_key("caller")
    wrong = {
        "none": {},
        "wrong": {"authorization": "Bearer not-the-admin-key"},
        "prefix": {"authorization": f"Bearer {ADMIN_KEY[:-1]}"},
        "longer": {"authorization": f"Bearer {ADMIN_KEY}x"},
        "basic": {"authorization": f"Basic {ADMIN_KEY}"},
        "empty": {"authorization": "Bearer"},
        "virtual key": {"authorization": f"Bearer {virtual}"},
        "api-key": {"api-key": "not-the-admin-key"},
    }
    routes = admin_requests(gw)
    assert len(routes) >= 14
    refused: list[httpx2.Response] = []
    with httpx2.Client(base_url=gw.url, timeout=10) as anonymous:
        for method, path in routes:
            for label, headers in wrong.items():
                reply = anonymous.request(method, path, headers=headers, json={"name": "intruder", "rpm": 1})
                assert reply.status_code == 401, (method, path, label)
                assert reply.json()["error"]["code"] == "invalid_admin_key", (method, path, label)
                refused.append(reply)
    assert virtual not in bodies_of(refused) and ADMIN_KEY not in bodies_of(refused)
    (only,) = gw.admin.get("/admin/keys").json()["data"]  # the right key works, and nothing changed
    assert only["name"] == "caller" and only["state"] == "active" and only["rpm"] is None
    assert gw.admin.get("/admin/teams").json()["data"] == []
    assert gw.client(virtual).models.list().data


def test_admin_api_is_off_when_no_admin_key_is_set(gateway, monkeypatch):
    """With no admin key configured every /admin route answers 403 admin_disabled, whatever the
    caller presents (nobody is admin, not even with an empty key)."""
    monkeypatch.delenv("FERRYMAN_NO_SUCH_ADMIN_KEY", raising=False)
    gw = gateway(gateway={"admin_key": "env:FERRYMAN_NO_SUCH_ADMIN_KEY"})
    assert gw.gateway.admin_secret() is None
    with httpx2.Client(base_url=gw.url, timeout=10) as anonymous:
        for method, path in admin_requests(gw):
            for headers in ({}, {"authorization": "Bearer"}, {"authorization": f"Bearer {ADMIN_KEY}"}):
                reply = anonymous.request(method, path, headers=headers, json={"name": "intruder"})
                assert reply.status_code == 403, (method, path, headers)
                assert reply.json()["error"]["code"] == "admin_disabled"
    assert gw.server.call(gw.gateway.keys.all()) == []


# -- constant-time comparison ----------------------------------------------------------------------


class CompareSpy:
    """``hmac.compare_digest``, recording what it compared (the gateway calls it on its thread)."""

    def __init__(self) -> None:
        self.real = hmac.compare_digest
        self.calls: list[tuple[Any, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, a: Any, b: Any) -> bool:
        with self.lock:
            self.calls.append((a, b))
        return self.real(a, b)

    def take(self) -> list[tuple[Any, Any]]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def test_keys_are_compared_with_hmac_compare_digest(gateway, monkeypatch):
    """A wrong admin key (of any length), an unknown virtual key and a known one each go through
    hmac.compare_digest: the admin key against the presented one, a virtual key's SHA-256
    against the stored hash (against a dummy when no row matched: the same work either way)."""
    gw = gateway()
    key = gw.new_key("known")
    spy = CompareSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)

    for presented in ("x" * len(ADMIN_KEY), "short"):
        reply = httpx2.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {presented}"})
        assert reply.status_code == 401
        assert (presented.encode(), ADMIN_KEY.encode()) in spy.take()
    assert gw.admin.get("/admin/keys").status_code == 200
    assert (ADMIN_KEY.encode(), ADMIN_KEY.encode()) in spy.take()

    with pytest.raises(openai.AuthenticationError):
        gw.client(FAKE_VIRTUAL_KEY).models.list()
    assert (hashlib.sha256(FAKE_VIRTUAL_KEY.encode()).hexdigest(), "0" * 64) in spy.take()
    gw.client(key).models.list()
    stored = hashlib.sha256(key.encode()).hexdigest()
    assert (stored, stored) in spy.take()


SECRETISH = re.compile(r"secret|hash|digest|presented|admin_key|token|password", re.IGNORECASE)


def _identifiers(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def _sql_column(node: ast.AST) -> bool:
    """``table.c.hash``: a SQLAlchemy expression (an indexed lookup in the database), not a compare."""
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "c"


def test_no_secret_is_compared_with_equality_in_the_gateway_code():
    """In the key store, the authenticator, the admin API and the proxy, no ``==``, ``!=``,
    ``in`` or ``not in`` touches a secret, a hash or a presented key (SQL lookups by hash aside),
    and both the key store and the admin check call hmac.compare_digest."""
    equality = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
    found = []
    for name in ("keys.py", "auth.py", "admin.py", "proxy.py"):
        tree = ast.parse((GATEWAY_SRC / name).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare) or not any(isinstance(op, equality) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(_sql_column(o) for o in operands):
                continue
            if any(SECRETISH.search(i) for o in operands for i in _identifiers(o)):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
    for name, function in (("keys.py", "authenticate"), ("auth.py", "admin_matches")):
        tree = ast.parse((GATEWAY_SRC / name).read_text())
        (defined,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.name == function]  # fmt: skip
        calls = [ast.unparse(n.func) for n in ast.walk(defined) if isinstance(n, ast.Call)]
        assert "hmac.compare_digest" in calls, name


# -- revoked and expired keys ----------------------------------------------------------------------


def test_revoked_and_expired_keys_are_refused_on_every_path(gateway, ferryman_mock):
    """A revoked and an expired key: 401 (key_revoked / key_expired) on chat, a stream, models,
    files, batches and an unknown path, and none of those calls reaches the upstream."""
    gw = gateway()
    revoked, revoked_record = gw.new_key_with_record("revoked")
    expired, expired_record = gw.new_key_with_record("expired")
    gw.server.call(gw.gateway.keys.revoke(revoked_record.id))
    gw.server.call(gw.gateway.keys.set_limits(expired_record.id, expires=time.time() - 1))
    for key, code in ((revoked, "key_revoked"), (expired, "key_expired")):
        client = gw.client(key)
        calls: list[Callable[[], Any]] = [
            lambda c=client: c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),
            lambda c=client: list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)),
            lambda c=client: c.models.list(),
            lambda c=client: c.files.list(),
            lambda c=client: c.batches.list(),
            lambda c=client: c.get("/made/up", cast_to=httpx2.Response),
        ]
        for call in calls:
            with pytest.raises(openai.AuthenticationError) as caught:
                call()
            assert caught.value.code == code
            assert key not in str(caught.value.body)
    assert ferryman_mock.requests() == []


# -- no secrets anywhere ---------------------------------------------------------------------------


@pytest.mark.parametrize("bodies", ["redacted", "full"])
def test_no_secret_in_logs_errors_metrics_or_audit_rows(gateway, ferryman_mock, logs, bodies):
    """Keys in a query string, headers, a body, a path and a model name, a wrong key, an OpenAI
    key used as a virtual key, and an upstream error that echoes the server's own key: none of
    them appears in the log records (as emitted, before any redacting handler) or the JSON lines,
    the error bodies callers get, /metrics or the audit rows (request bodies are redacted there
    even with audit.bodies = full); the access log names query parameters, never their values."""
    gw = gateway(audit={"bodies": bodies})
    key = gw.new_key("careful")
    auth = {"authorization": f"Bearer {key}"}
    restricted_key = gw.new_key("restricted", models=["gpt-4o-mini"])
    restricted = {"authorization": f"Bearer {restricted_key}"}
    replies: list[httpx2.Response] = []
    with httpx2.Client(base_url=gw.base_url, timeout=30) as http:
        query = {"api_key": FAKE_OPENAI_KEY, "after": QUERY_MARKER, "token": FAKE_VIRTUAL_KEY}
        assert http.get("/models", params=query, headers=auth).status_code == 200
        leaky_body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"My key is {FAKE_OPENAI_KEY}, and {FAKE_VIRTUAL_KEY}."}],
            "max_tokens": 5,
        }
        leaky_headers = {**auth, "api-key": FAKE_OPENAI_KEY, "x-api-key": FAKE_OPENAI_KEY, "openai-project": "p"}
        assert http.post("/chat/completions", json=leaky_body, headers=leaky_headers).status_code == 200
        replies += [
            http.get("/models", headers={"authorization": f"Bearer {FAKE_VIRTUAL_KEY}"}),  # unknown virtual key
            http.get("/models", headers={"authorization": f"Bearer {FAKE_OPENAI_KEY}"}),  # an OpenAI key
            http.get("/models", headers={"api-key": FAKE_VIRTUAL_KEY}),
            http.get(f"/files/{FAKE_OPENAI_KEY}", headers=auth),  # a key where an id goes
            http.post("/chat/completions", json={**leaky_body, "model": FAKE_OPENAI_KEY}, headers=auth),
            http.post(f"/made/up/{FAKE_VIRTUAL_KEY}", json={}, headers=auth),
            http.post("/chat/completions", json={**leaky_body, "model": FAKE_VIRTUAL_KEY}, headers=restricted),
        ]
        # The upstream answers the next chat call (only that one: times=1) with a 401 that quotes
        # the server's own key, as OpenAI's "Incorrect API key provided" does.
        echo = f"status=401;code=invalid_api_key;message=Incorrect API key provided: {UPSTREAM_KEY}."
        ferryman_mock.set_faults([f"path=/v1/chat/completions;times=1;{echo}"])
        try:
            replies.append(http.post("/chat/completions", json=leaky_body, headers=auth))
        finally:
            ferryman_mock.set_faults([])
    assert [r.status_code for r in replies] == [401, 401, 401, 404, 404, 403, 403, 401]  # made/up: not isolated
    assert replies[-1].json()["error"]["message"] == "Incorrect API key provided: [REDACTED]."
    secrets = (FAKE_OPENAI_KEY, FAKE_VIRTUAL_KEY, UPSTREAM_KEY, key, restricted_key)

    errors = bodies_of(replies)
    assert find_secrets(errors) == [] and not any(s in errors for s in secrets)

    def access_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in logs.lines.getvalue().splitlines()]
        return [line for line in lines if line["logger"] == "ferryman.access"]

    # A request's access line is written once its response is done, on the server's side.
    deadline = time.monotonic() + 10
    while len(access_lines()) < 2 + len(replies) and time.monotonic() < deadline:
        time.sleep(0.01)
    logged = logs.text()
    assert find_secrets(logged) == [] and not any(s in logged for s in secrets)
    lines = [json.loads(line) for line in logs.lines.getvalue().splitlines()]
    access = access_lines()
    assert len(access) == 2 + len(replies) and len(logs.raw.records) >= len(lines)
    assert access[0]["query_params"] == ["after", "api_key", "token"] and QUERY_MARKER not in logged

    metrics = httpx2.get(gw.url + "/metrics").text
    assert find_secrets(metrics) == [] and not any(s in metrics for s in secrets)

    rows = audit_rows(Path(gw.gateway.settings.store.url.removeprefix("sqlite:///")))
    stored = json.dumps(rows, default=str)
    assert find_secrets(stored) == [] and not any(s in stored for s in secrets)
    chat_rows = [r for r in rows if r["endpoint"] == "/chat/completions" and r["status"] == 200]
    assert chat_rows and all("[REDACTED]" in r["request_body"] for r in chat_rows)


def test_the_upstream_key_never_reaches_callers_and_theirs_never_reaches_the_upstream(gateway, ferryman_mock):
    """Every request the mock receives carries the server's upstream key (whatever the caller
    sent in Authorization or api-key), and no reply the caller gets names it."""
    gw = gateway()
    key = gw.new_key()
    client = gw.client(key, default_headers={"api-key": FAKE_OPENAI_KEY})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    client.models.list()
    client.embeddings.create(model="text-embedding-3-small", input="hi")
    seen = ferryman_mock.requests()
    assert len(seen) == 3 and {r["key_id"] for r in seen} == {mock_key_id(UPSTREAM_KEY)}
    shown = json.dumps(dict(raw.headers)) + raw.text
    assert UPSTREAM_KEY not in shown and key not in shown and find_secrets(shown) == []


# Headers OpenAI's API does not define, which the gateway must not pass on: a fault for the mock
# (it would answer 500), a caller's credential and cookie, a custom header, and a header that
# ``Connection:`` names (hop-by-hop, whatever its name). No key shapes here: see tests/leak_guard.py.
UNDEFINED_HEADERS = {
    "x-ferryman-fault": "status=500",
    "x-api-key": "not-a-real-key-value",
    "x-custom": "1",
    "cookie": "a=b",
    "connection": "x-keep-me",
    "x-keep-me": "1",
}


def test_headers_the_api_does_not_define_never_reach_the_upstream(gateway, ferryman_mock, monkeypatch):
    """Sent through the gateway with the official SDK's ``extra_headers`` and with raw httpx2, none
    of :data:`UNDEFINED_HEADERS` reaches the mock: the calls succeed (the fault was not applied),
    the mock's request log shows no fault and no ``x-ferryman-fault`` (the one of these headers it
    records), and the headers the mock's app was handed name none of them."""
    assert ferryman_mock.app is not None, "the session's mock runs in this process"
    received: list[dict[str, str]] = []
    fault_for = ferryman_mock.app.fault_for

    def recording_fault_for(request: Any) -> Any:  # sees every authenticated API request's headers
        received.append(dict(request.headers))
        return fault_for(request)

    monkeypatch.setattr(ferryman_mock.app, "fault_for", recording_fault_for)
    gw = gateway()
    key = gw.new_key()
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, extra_headers=UNDEFINED_HEADERS
    )
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
    headers = {"authorization": f"Bearer {key}", **UNDEFINED_HEADERS}
    with httpx2.Client(base_url=gw.base_url, timeout=30) as http:
        reply = http.post("/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200, reply.text

    seen = ferryman_mock.requests()
    assert [(r["path"], r["status"]) for r in seen] == [("/v1/chat/completions", 200)] * 2
    assert all("fault" not in r and "x-ferryman-fault" not in r["headers"] for r in seen), seen
    assert len(received) == 2
    dropped = set(UNDEFINED_HEADERS) - {"connection"}  # the gateway's own HTTP client may send one
    for upstream in received:
        assert upstream.get("content-type") == "application/json"  # the spy sees what was forwarded
        assert dropped.isdisjoint(upstream), sorted(upstream)
        assert "x-keep-me" not in upstream.get("connection", "").lower(), upstream.get("connection")
        shown = json.dumps(upstream)
        assert "not-a-real-key-value" not in shown and "a=b" not in shown and "status=500" not in shown


# -- odd requests ----------------------------------------------------------------------------------


def test_too_large_bodies_answer_413_in_openai_format(gateway, ferryman_mock):
    """A JSON body over gateway.max_body_mb and an upload over gateway.max_upload_mb are refused
    with 413 request_too_large before reaching the upstream; smaller ones pass."""
    gw = gateway(gateway={"max_body_mb": 0.0625, "max_upload_mb": 0.125})
    client = gw.client(gw.new_key())
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 70_000}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large" and caught.value.body["type"] == "invalid_request_error"
    assert "0.0625 MiB" in caught.value.message
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 140_000)), purpose="batch")
    assert caught.value.status_code == 413 and "0.125 MiB" in caught.value.message
    assert ferryman_mock.requests() == []
    client.files.create(file=("small.txt", io.BytesIO(b"x" * 100_000)), purpose="user_data")  # an upload's own cap
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert [r["path"] for r in ferryman_mock.requests()] == ["/v1/files", "/v1/chat/completions"]


def test_a_large_upload_is_not_stalled_by_redaction(gateway):
    """A 1 MiB upload of one long base64-like run goes through in well under the time a
    quadratic scan of its audit record would take (minutes; it once took 14 s for 100 kB),
    and arrives whole."""
    gw = gateway()
    client = gw.client(gw.new_key())
    data = (b"QUJDRGVmZ2hpamtsbW5vcDAxMjM0NTY3ODk" * 32_000)[: 1 << 20]
    started = time.monotonic()
    uploaded = client.files.create(file=("image.b64", io.BytesIO(data)), purpose="user_data")
    assert time.monotonic() - started < 5
    assert client.files.retrieve(uploaded.id).bytes == len(data)


def test_malformed_json_answers_400(gateway, ferryman_mock):
    """A body that is not JSON (with a JSON content type) is OpenAI's 400, from the gateway."""
    gw = gateway()
    reply = httpx2.post(
        gw.base_url + "/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"authorization": f"Bearer {gw.new_key()}", "content-type": "application/json"},
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and "could not parse the JSON body" in error["message"]
    assert ferryman_mock.requests() == []


def test_collections_that_are_not_isolated_are_refused_unless_passed_through(gateway, ferryman_mock):
    """A collection Ferryman does not isolate between keys (assistants, threads, an unknown one)
    is a 403 `not_isolated` for a virtual key, as is a body naming one (`assistant_id`), and the
    upstream sees nothing; `gateway.pass_through` lets an operator allow one."""
    gw = gateway()
    auth = {"authorization": f"Bearer {gw.new_key()}"}
    ferryman_mock.clear_requests()
    for method, path, body in [
        ("GET", "/assistants/asst_1", None),
        ("POST", "/threads", {}),
        ("POST", "/made/up/thing", {"a": 1}),
        ("GET", "/fine_tuning/checkpoints/ckpt_1/permissions", None),
        ("POST", "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "assistant_id": "asst_1"}),
    ]:
        refused = httpx2.request(method, gw.base_url + path, json=body, headers=auth)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["code"] == "not_isolated"
    assert ferryman_mock.requests() == []
    opened = gateway(gateway={"pass_through": ["assistants"]})
    got = httpx2.get(opened.base_url + "/assistants/asst_1", headers={"authorization": f"Bearer {opened.new_key()}"})
    assert got.status_code == 404 and got.json()["error"]["message"] == "Invalid URL (GET /v1/assistants/asst_1)"


def test_unknown_paths_and_fields_pass_through_untouched(gateway, ferryman_mock):
    """A /v1 path the gateway does not know, once passed through (`gateway.pass_through`), goes
    to the upstream as it is (method, path, query) and its answer comes back as it is; a field
    the gateway does not know reaches the upstream in the body unchanged."""
    gw = gateway(gateway={"pass_through": ["made", "assistants"]})
    key = gw.new_key()
    auth = {"authorization": f"Bearer {key}"}
    direct = httpx2.post(ferryman_mock.base_url + "/made/up/thing?x=1&y=two", json={"a": [1, 2]}).json()
    ferryman_mock.clear_requests()
    through = httpx2.post(gw.base_url + "/made/up/thing?x=1&y=two", json={"a": [1, 2]}, headers=auth)
    assert through.status_code == 404
    assert through.json() == direct
    assert direct["error"] == {
        "message": "Invalid URL (POST /v1/made/up/thing)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    got = httpx2.get(gw.base_url + "/assistants/asst_1/whatever?limit=3", headers=auth)
    assert got.status_code == 404
    assert got.json()["error"]["message"] == "Invalid URL (GET /v1/assistants/asst_1/whatever)"
    # an endpoint below /responses that is not a response id (the mock does not serve it)
    counted = httpx2.post(gw.base_url + "/responses/input_tokens", json={"model": "gpt-4o-mini"}, headers=auth)
    assert counted.json()["error"]["message"] == "Invalid URL (POST /v1/responses/input_tokens)"
    seen = ferryman_mock.requests()
    assert [(r["method"], r["path"], r["query"]) for r in seen] == [
        ("POST", "/v1/made/up/thing", "x=1&y=two"),
        ("GET", "/v1/assistants/asst_1/whatever", "limit=3"),
        ("POST", "/v1/responses/input_tokens", ""),
    ]

    ferryman_mock.clear_requests()
    unknown = {"ferryman_unknown_field": {"nested": [1, "two", None], "flag": True}, "metadata": {"k": "v"}}
    gw.client(key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, extra_body=unknown)
    (sent,) = ferryman_mock.requests()
    assert sent["key_id"] == mock_key_id(UPSTREAM_KEY)
    assert sent["body"]["ferryman_unknown_field"] == unknown["ferryman_unknown_field"]
    assert sent["body"]["metadata"] == {"k": "v"} and sent["body"]["messages"] == MESSAGES


def test_a_logged_failure_carries_no_secret(gateway, ferryman_mock, logs):
    """An upstream that resets the connection: the caller gets a clean 502 in OpenAI's shape, and
    whatever the gateway logs about it holds no key."""
    gw = gateway(retry={"max_attempts": 1})
    key = gw.new_key()
    ferryman_mock.set_faults(["path=/v1/chat/completions;times=1;reset"])  # the one try
    try:
        reply = httpx2.post(
            gw.base_url + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": FAKE_OPENAI_KEY}]},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
    finally:
        ferryman_mock.set_faults([])
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_unreachable"
    logged = logs.text()
    assert logged.strip() and find_secrets(logged) == [] and FAKE_OPENAI_KEY not in logged and key not in logged
    assert find_secrets(reply.text) == []
