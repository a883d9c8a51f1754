"""The admin API's input, field by field, over real HTTP: a bad value is a 400 in OpenAI's shape
whose ``param`` names the field, before anything is written; a good value at either end of its
range still works; a failing store is a JSON 503 or 500, never a traceback. The CLI refuses the
same budgets, durations and tags through :mod:`ferryman.gateway.key_rules`.

Most tests share one gateway (a module fixture: starting one per parameter would take minutes);
the ones that break its store start their own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ferryman.gateway.app import Gateway
from ferryman.gateway.server import BackgroundGateway
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer
from tests.gateway.conftest import ADMIN_KEY, Running
from tests.pipeline.conftest import UPSTREAM_KEY, mock_deployment

DAY = 86400
GOOD_KEY = {
    "name": "base",
    "team": "alpha",
    "rpm": 10,
    "tpm": 1000,
    "budget": "50/month",
    "models": ["gpt-4o-mini"],
    "expires": "30d",
}


@pytest.fixture(scope="module")
def gw(ferryman_mock_server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One gateway (admin key on, a fresh SQLite file) for the tests that do not break it."""
    from ferryman.config import Settings

    root = tmp_path_factory.mktemp("admin-input")
    mock = MockControl(ferryman_mock_server.url, app=ferryman_mock_server.app)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FERRYMAN_DATA_DIR", str(root / "data"))
        env.setenv("FERRYMAN_TEST_ADMIN_KEY", ADMIN_KEY)
        env.setenv("FERRYMAN_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        env.delenv("FERRYMAN_CONFIG", raising=False)
        env.chdir(root)
        settings = Settings(
            deployments=[mock_deployment(mock)],
            store={"url": f"sqlite:///{root / 'gateway.db'}"},
            gateway={"admin_key": "env:FERRYMAN_TEST_ADMIN_KEY", "access_log": True},
        )
        app = Gateway(settings)
        server = BackgroundGateway(app).start()
        admin = httpx2.Client(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        try:
            yield Running(server, app, admin)
        finally:
            admin.close()
            server.stop()
            app.store.close()
            mock.close()


@pytest.fixture(scope="module")
def base_key(gw: Running) -> dict[str, Any]:
    """A key with every field set, which the PATCH tests try to change (and must not)."""
    created = gw.admin.post("/admin/keys", json=GOOD_KEY)
    assert created.status_code == 201, created.text
    return created.json()


def refused(reply: httpx2.Response, param: str | None, status: int = 400) -> dict[str, Any]:
    """The reply is ``status`` in OpenAI's error shape with ``param``; its error object."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"] and "Traceback" not in reply.text
    return error


def key_ids(gw: Running) -> set[str]:
    return {k["id"] for k in gw.admin.get("/admin/keys").json()["data"]}


def stored_key(gw: Running, key_id: str) -> dict[str, Any]:
    """The key's row as the database holds it (plain sqlite3, not through Ferryman)."""
    db = sqlite3.connect(gw.gateway.settings.store.url.removeprefix("sqlite:///"))
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM virtual_keys WHERE id = ?", (key_id,)).fetchone()
        return dict(row)
    finally:
        db.close()


# -- the values each field refuses -------------------------------------------------------------------

BAD_NAMES: list[Any] = [None, "", "   ", 5, True, ["x"], {"a": 1}, "a" * 129, "a/b", "line\nbreak", "tab\there"]
BAD_NAMES += ["a\nb", "tab\there", "null\x00byte"]
BAD_TEAMS: list[Any] = [3, False, "", "  ", ["t"], {"t": 1}, "t" * 129, "a/b", "bell\x07"]
BAD_RPM: list[Any] = [0, -1, True, False, 1.5, 5.0, "5", 1_000_001, 2**31, 10**30, [], {}, "many"]
BAD_TPM: list[Any] = [0, -5, True, 1.0, "1000", 1_000_000_001, 2**63, [1]]
BAD_BUDGETS: list[Any] = [
    "lots",
    "5/week",
    "5/days",
    "NaN/day",
    "nan",
    "sNaN/month",
    "inf/day",
    "Infinity/month",
    "-Infinity",
    "1e999999999/day",
    "1e999999999",
    "1e-40/day",
    "1e-40",
    "0/day",
    "0",
    "-0",
    "-5/month",
    "0.0000009/day",
    "0.00000099999999999/day",
    "1000000.01/month",
    "1e7/day",
    "",
    "/day",
    "$",
    "$$5/day",
    "1_000/day",
    "0x10/day",
    "5 USD/day",
    "5" * 65,
    "1" + "0" * 70 + "/day",
    True,
    False,
    [],
    ["5/day"],
    {"usd": 5},
    0,
    -1,
    1e-40,
    10**7,
    10**30,
    1e300,
]
BAD_MODELS: list[Any] = [5, True, "", [], [""], ["  "], [5], [None], ["gpt-4o", ""], ["a" * 129], ["has space"]]
BAD_MODELS += [["x"] * 101, {"m": 1}, ["tab\tmodel"], ["ünï"], ["new\nline"], "a,,b"]
BAD_EXPIRES: list[Any] = [
    "soon",
    "30",
    "30x",
    "d",
    "0d",
    "0s",
    "-1d",
    "1.5d",
    "3651d",
    "522w",
    "99999999999999999999d",
    "9" * 400 + "d",
    "30 days",
    "",
    "٣d",  # a digit, but not an ASCII one
    30,
    30.0,
    True,
    ["30d"],
    {"days": 30},
]

BAD_TAGS: list[Any] = [
    5,
    True,
    ["project=x"],
    {"project": 5},
    {"project": None},
    {"project": ""},
    {"project": "two words"},
    {"project": "a,b"},
    {"project": "a=b"},
    {"project": "v" * 129},
    {"project": "ünï"},
    {"": "x"},
    {"has space": "x"},
    {"_lead": "x"},
    {"n" * 65: "x"},
    {"team": "other"},  # the key's team is its team tag, nothing else
    {"TEAM": "other"},
    {"Project": "a", "project": "b"},  # one tag, given twice once names are lower-cased
    {f"t{i}": "x" for i in range(17)},
    "project",
    "project=a,project=b",
    "team=x",
    "project=",
]

FIELDS: list[tuple[str, list[Any]]] = [
    ("name", BAD_NAMES),
    ("team", BAD_TEAMS),
    ("rpm", BAD_RPM),
    ("tpm", BAD_TPM),
    ("budget", BAD_BUDGETS),
    ("models", BAD_MODELS),
    ("tags", BAD_TAGS),
    ("expires", BAD_EXPIRES),
]
CREATE_CASES = [(field, value) for field, values in FIELDS for value in values]
# On PATCH, null is meaningful (remove the limit, budget or expiry), and name and team are not fields.
UPDATE_CASES = [
    (field, value) for field, values in FIELDS if field not in ("name", "team") for value in values if value is not None
]
TEAM_FIELDS = ("rpm", "tpm", "budget", "tags")
TEAM_CASES = [(field, value) for field, values in FIELDS if field in TEAM_FIELDS for value in values]


def _id(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 30 else shown[:27] + "..."


@pytest.mark.parametrize(("field", "value"), CREATE_CASES, ids=[f"{f}={_id(v)}" for f, v in CREATE_CASES])
def test_create_refuses_a_bad_value(gw, field, value):
    before = key_ids(gw)
    body = {"name": "refused", field: value} if field != "name" else {"name": value}
    error = refused(gw.admin.post("/admin/keys", json=body), field)
    if field == "budget" and not isinstance(value, bool | list | dict):
        said = ("from $0.000001 to $1,000,000", "unreadable budget", "budget period must be day or month")
        assert any(words in error["message"] for words in said), error
    assert key_ids(gw) == before  # nothing was created


@pytest.mark.parametrize(("field", "value"), UPDATE_CASES, ids=[f"{f}={_id(v)}" for f, v in UPDATE_CASES])
def test_update_refuses_a_bad_value_and_changes_nothing(gw, base_key, field, value):
    before = stored_key(gw, base_key["id"])
    refused(gw.admin.patch(f"/admin/keys/{base_key['id']}", json={field: value}), field)
    # a good field beside the bad one is not applied either: the request is refused as a whole
    refused(gw.admin.patch(f"/admin/keys/{base_key['id']}", json={"rpm": 99, field: value}), field)
    after = stored_key(gw, base_key["id"])
    assert after == before
    assert after["budget_usd"] == 50 and after["budget_period"] == "month" and after["rpm"] == 10


@pytest.mark.parametrize(("field", "value"), TEAM_CASES, ids=[f"{f}={_id(v)}" for f, v in TEAM_CASES])
def test_put_team_refuses_a_bad_value(gw, field, value):
    refused(gw.admin.put("/admin/teams/refused-team", json={field: value}), field)
    assert "refused-team" not in {t["name"] for t in gw.admin.get("/admin/teams").json()["data"]}


@pytest.mark.parametrize("name", ["a" * 129, "a%00b", "line%0Abreak"])
def test_put_team_refuses_a_bad_name_in_the_path(gw, name):
    teams = gw.admin.get("/admin/teams").json()["data"]
    refused(gw.admin.put(f"/admin/teams/{name}", json={"rpm": 5}), "name")
    assert gw.admin.get("/admin/teams").json()["data"] == teams


UNKNOWN = [
    ("POST", "/admin/keys", {"name": "x", "budgett": "5/day"}, "budgett"),
    ("POST", "/admin/keys", {"name": "x", "metadata": {}}, "metadata"),
    ("POST", "/admin/keys", {"name": "x", "zeta": 1, "alpha": 2}, "alpha"),  # the first, sorted
    ("POST", "/admin/keys", {"name": "x", "k" * 300: 1}, "k" * 64 + "…"),
    ("PATCH", "/admin/keys/{id}", {"name": "renamed"}, "name"),
    ("PATCH", "/admin/keys/{id}", {"team": "beta"}, "team"),
    ("PATCH", "/admin/keys/{id}", {"revoked": None}, "revoked"),
    ("PUT", "/admin/teams/alpha", {"models": ["x"]}, "models"),
    ("PUT", "/admin/teams/alpha", {"name": "beta"}, "name"),
    ("POST", "/admin/keys/{id}/rotate", {"force": True}, "force"),
    ("POST", "/admin/keys/{id}/revoke", {"reason": "x"}, "reason"),
    ("DELETE", "/admin/keys/{id}", {"hard": True}, "hard"),
    ("DELETE", "/admin/teams/alpha", {"cascade": True}, "cascade"),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), UNKNOWN, ids=[f"{m} {p} {s}" for m, p, _, s in UNKNOWN])
def test_unknown_fields_are_refused_by_name(gw, base_key, method, path, body, param):
    before = stored_key(gw, base_key["id"])
    teams = gw.admin.get("/admin/teams").json()["data"]
    error = refused(gw.admin.request(method, path.format(id=base_key["id"]), json=body), param)
    assert "unknown field" in error["message"]
    assert stored_key(gw, base_key["id"]) == before  # not rotated, not revoked, not changed
    assert gw.admin.get("/admin/teams").json()["data"] == teams


NOT_OBJECTS = [b"[]", b"[1, 2]", b'"a string"', b"5", b"null", b"true", b"{name", b"{'name': 'x'}", b"\xff\xfe"]
NOT_OBJECTS += [b'{"name": NaN}', b'{"name": "x", "rpm": Infinity}', b'{"name": "x", "rpm": 1e999}']


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=[_id(r) for r in NOT_OBJECTS])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/admin/keys"), ("PATCH", "/admin/keys/{id}"), ("PUT", "/admin/teams/t1")]
)
def test_a_body_that_is_not_a_json_object_is_refused(gw, base_key, method, path, raw):
    before = key_ids(gw)
    reply = gw.admin.request(
        method, path.format(id=base_key["id"]), content=raw, headers={"content-type": "application/json"}
    )
    refused(reply, None)
    assert key_ids(gw) == before


def test_a_body_too_large_is_refused(gw):
    reply = gw.admin.post("/admin/keys", json={"name": "x", "models": ["m" * 100] * 1000})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"


QUERIES = [
    ("/admin/usage?days=0", "days"),
    ("/admin/usage?days=367", "days"),
    ("/admin/usage?days=-1", "days"),
    ("/admin/usage?days=abc", "days"),
    ("/admin/usage?days=1.5", "days"),
    ("/admin/usage?days=", "days"),
    ("/admin/usage?days=%D9%A3", "days"),  # an Arabic-Indic three
    ("/admin/usage?days=99999999999999999999999", "days"),
    ("/admin/usage?days=1_0", "days"),
    ("/admin/requests?limit=0", "limit"),
    ("/admin/requests?limit=1001", "limit"),
    ("/admin/requests?limit=ten", "limit"),
    ("/admin/stats?hours=0", "hours"),
    ("/admin/stats?hours=8785", "hours"),
    ("/admin/stats?hours=1e3", "hours"),
    ("/admin/keys?all=1", "all"),
    ("/admin/usage?days=3&limit=5", "limit"),
    ("/admin/teams?x=1", "x"),
    ("/admin/budgets?scope=key", "scope"),
]


@pytest.mark.parametrize(("path", "param"), QUERIES, ids=[q for q, _ in QUERIES])
def test_query_arguments_are_checked(gw, path, param):
    refused(gw.admin.get(path), param)


@pytest.mark.parametrize(
    "path", ["/admin/usage?days=1", "/admin/usage?days=366", "/admin/requests?limit=1000", "/admin/stats?hours=8784"]
)
def test_query_arguments_at_their_bounds_work(gw, path):
    assert gw.admin.get(path).status_code == 200


# -- the values each field accepts ---------------------------------------------------------------------


def test_good_values_at_the_ends_of_their_ranges_work(gw):
    created = gw.admin.post(
        "/admin/keys",
        json={
            "name": "  " + "n" * 128 + "  ",  # surrounding spaces are dropped
            "team": "Team_1.x@y+z:w-2",
            "rpm": 1,
            "tpm": 1_000_000_000,
            "budget": "0.000001/day",
            "models": ["gpt-4o-mini", "ft:gpt-4o:org:*", "openai/gpt-?"],
            "tags": {f" Tag{i}.x_y-z ": f"v{i}:{'~' * 120}" for i in range(16)},  # names lower-cased, trimmed
            "expires": "1s",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "n" * 128 and body["team"] == "Team_1.x@y+z:w-2"
    assert (body["rpm"], body["tpm"]) == (1, 1_000_000_000)
    assert (body["budget_usd"], body["budget_period"]) == ("0.0000010000", "day")
    assert body["models"] == ["gpt-4o-mini", "ft:gpt-4o:org:*", "openai/gpt-?"]
    assert body["tags"] == {f"tag{i}.x_y-z": f"v{i}:{'~' * 120}" for i in range(16)}
    tagged = gw.admin.patch(f"/admin/keys/{body['id']}", json={"tags": "project=Apollo, env=prod"})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"project": "Apollo", "env": "prod"}, tagged.text
    key_id = body["id"]
    for budget, usd, period in (
        ("1000000/month", "1000000.0000000000", "month"),
        ("$50/month", "50.0000000000", "month"),
        (" 5 / DAY ", "5.0000000000", "day"),
        ("2.5", "2.5000000000", "month"),
        ("1E+2/day", "100.0000000000", "day"),
        ("0.00000123456789129/day", "0.0000012345", "day"),  # cut to the column's ten places
        (50, "50.0000000000", "month"),
        (2.5, "2.5000000000", "month"),
    ):
        patched = gw.admin.patch(f"/admin/keys/{key_id}", json={"budget": budget})
        assert patched.status_code == 200, (budget, patched.text)
        assert (patched.json()["budget_usd"], patched.json()["budget_period"]) == (usd, period), budget
        assert stored_key(gw, key_id)["budget_usd"] == pytest.approx(float(usd), rel=1e-12)
    for expires, seconds in (("3650d", 3650 * DAY), ("2w", 14 * DAY), ("12 h", 12 * 3600), ("90M", 90 * 60)):
        patched = gw.admin.patch(f"/admin/keys/{key_id}", json={"expires": expires})
        assert patched.status_code == 200, patched.text
        assert patched.json()["expires"] == pytest.approx(time.time() + seconds, abs=60)
    patched = gw.admin.patch(f"/admin/keys/{key_id}", json={"rpm": 1_000_000, "tpm": 1, "models": "a, b*"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["rpm"], patched.json()["tpm"], patched.json()["models"]) == (1_000_000, 1, ["a", "b*"])
    models = [f"m{i}" for i in range(100)]
    assert gw.admin.patch(f"/admin/keys/{key_id}", json={"models": models}).json()["models"] == models
    cleared = gw.admin.patch(
        f"/admin/keys/{key_id}",
        json={"rpm": None, "tpm": None, "budget": None, "models": None, "tags": None, "expires": None},
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["tags"] == {}
    assert {k: cleared.json()[k] for k in ("rpm", "tpm", "budget_usd", "budget_period", "models", "expires")} == {
        "rpm": None,
        "tpm": None,
        "budget_usd": None,
        "budget_period": None,
        "models": None,
        "expires": None,
    }
    assert gw.admin.patch(f"/admin/keys/{key_id}", json={}).status_code == 200  # nothing to change
    team = gw.admin.put("/admin/teams/Team_1.x@y+z:w-2", json={"rpm": 1_000_000, "budget": "1000000/day"})
    assert team.status_code == 200 and team.json()["budget_usd"] == "1000000.0000000000"
    assert gw.admin.post(f"/admin/keys/{key_id}/rotate", json={}).status_code == 200  # {} is no fields
    assert gw.admin.post(f"/admin/keys/{key_id}/revoke").status_code == 200


def test_the_findings(gw, base_key):
    """The attack pass's findings, as they were sent: each now a 400 naming the field."""
    refused(gw.admin.patch(f"/admin/keys/{base_key['id']}", json={"expires": "garbage"}), "expires")
    for budget in ("1e999999999/day", "1e-40/day"):
        error = refused(gw.admin.post("/admin/keys", json={"name": "x", "budget": budget}), "budget")
        assert "from $0.000001 to $1,000,000 per day" in error["message"]
        refused(gw.admin.patch(f"/admin/keys/{base_key['id']}", json={"budget": budget}), "budget")
    assert stored_key(gw, base_key["id"])["budget_usd"] == 50


def test_the_cli_refuses_the_same_budgets_durations_and_tags(gw):
    url = gw.gateway.settings.store.url
    env = {
        **os.environ,
        "COLUMNS": "250",
        "NO_COLOR": "1",
        "FERRYMAN_DATA_DIR": str(Path(url.removeprefix("sqlite:///")).parent / "data"),
    }
    cases = {
        "huge": (["--budget", "1e999999999/month"], "from $0.000001 to $1,000,000 per month"),
        "tiny": (["--budget", "1e-40/day"], "from $0.000001 to $1,000,000 per day"),
        "nan": (["--budget", "NaN/day"], "from $0.000001 to $1,000,000"),
        "zero-expiry": (["--expires", "0d"], "out of range"),
        "long-expiry": (["--expires", "99999999999999999999d"], "unreadable duration"),
        "name": (["--team", "bell\x07"], "team may hold only"),
        "tags": (["--tags", "team=other"], "the tag 'team' is the key's team"),
        "tag-value": (["--tags", "project=a b"], "must be 1 to 128 printable ASCII characters"),
    }
    started = {
        label: subprocess.Popen(
            [sys.executable, "-m", "ferryman.cli", "keys", "create", "--name", f"cli-{label}", *args, "--store", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for label, (args, _) in cases.items()
    }
    for label, process in started.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, (label, out, err)
        assert cases[label][1] in err and "Traceback" not in out + err, (label, err)
    assert not [k for k in gw.admin.get("/admin/keys").json()["data"] if k["name"].startswith("cli-")]


# -- a failing store ------------------------------------------------------------------------------------


def _db(running: Running) -> Path:
    return Path(running.gateway.settings.store.url.removeprefix("sqlite:///"))


def _server_failure(reply: httpx2.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json() == {
        "error": {"message": reply.json()["error"]["message"], "type": "server_error", "param": None, "code": code}
    }
    assert "Traceback" not in reply.text and "sqlite" not in reply.text.lower() and "SELECT" not in reply.text


def _admin_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ferryman.gateway.admin"]


def test_a_dropped_table_is_a_json_503(gateway, caplog):
    """The keys table gone (a real failure of the real store): every key route answers 503
    store_unavailable in OpenAI's shape, each logged once, without a traceback or a secret."""
    gw = gateway()
    key = gw.admin.post("/admin/keys", json={"name": "k", "budget": "5/day"}).json()
    db = sqlite3.connect(_db(gw))
    db.execute("DROP TABLE virtual_keys")
    db.commit()
    db.close()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for method, path, body in (
            ("GET", f"/admin/keys/{key['id']}", None),
            ("GET", "/admin/keys", None),
            ("POST", "/admin/keys", {"name": "new"}),
            ("PATCH", f"/admin/keys/{key['id']}", {"rpm": 5}),
            ("POST", f"/admin/keys/{key['id']}/rotate", None),
            ("GET", "/admin/budgets", None),
        ):
            _server_failure(gw.admin.request(method, path, json=body), 503, "store_unavailable")
    failures = _admin_failures(caplog)
    assert len(failures) == 6, [r.getMessage() for r in caplog.records]
    for record in failures:
        message = record.getMessage()
        assert "OperationalError: no such table: virtual_keys" in message
        assert record.exc_info is None and record.exc_text is None
        assert ADMIN_KEY not in message and key["key"] not in message and "fm-" not in message
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert gw.admin.get("/admin/teams").status_code == 200  # the teams table is still there


def test_a_database_file_of_garbage_is_a_json_error(gateway, caplog):
    """The database file overwritten with garbage (not a connection error: a 500 server_error,
    not a 503): the admin API answers in OpenAI's shape."""
    gw = gateway()
    key = gw.admin.post("/admin/keys", json={"name": "k"}).json()
    gw.gateway.store.engine.dispose()  # the next read opens the file afresh
    db = _db(gw)
    for path in db.parent.glob(db.name + "*"):
        path.write_bytes(os.urandom(8192))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _server_failure(gw.admin.get(f"/admin/keys/{key['id']}"), 500, "server_error")
    (record,) = _admin_failures(caplog)
    message = record.getMessage()
    assert f"GET /admin/keys/{key['id']} failed: DatabaseError: file is not a database" in message
    assert record.exc_info is None and ADMIN_KEY not in message


def test_an_unreachable_redis_is_a_json_503(gateway, caplog, tmp_path):
    """Budgets kept in a Redis that is not there: showing a budgeted key's budget answers 503
    store_unavailable (the redis ConnectionError), not a plain-text 500."""
    gw = gateway(store={"url": f"sqlite:///{tmp_path / 'redis-less.db'}", "redis_url": "redis://127.0.0.1:9/0"})
    key = gw.admin.post("/admin/keys", json={"name": "k", "budget": "5/day"})
    assert key.status_code == 201, key.text
    with caplog.at_level(logging.INFO):
        _server_failure(gw.admin.get(f"/admin/keys/{key.json()['id']}"), 503, "store_unavailable")
    (record,) = _admin_failures(caplog)
    assert "ConnectionError" in record.getMessage()


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/admin/nope", 404, None),
        ("POST", "/admin/keys/key_x/unrevoke", 404, None),
        ("GET", "/admin", 404, None),
        ("PUT", "/admin/keys", 405, "method_not_allowed"),
        ("POST", "/admin/teams/alpha", 405, "method_not_allowed"),
        ("DELETE", "/admin/usage", 405, "method_not_allowed"),
    ],
)
def test_other_paths_and_methods_answer_in_openais_shape(gw, method, path, status, code):
    reply = gw.admin.request(method, path)
    assert reply.status_code == status and reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code, error
    if status == 405:
        assert reply.headers["allow"] and method not in reply.headers["allow"]
    anonymous = httpx2.post(gw.url + path, timeout=30)  # no admin key: 401 first, whatever the path
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_admin_key"
