"""Virtual keys: ``ferryman keys …`` on the command line and the admin HTTP API.

The CLI runs as a real subprocess (``python -m ferryman.cli keys …``) on the same SQLite file as
a running gateway, so what it writes is what the gateway enforces: a key printed once and stored
only as its SHA-256, list and show without the secret, rotate (the old secret stops, the new
one works) and revoke, each taking effect on the running gateway within a second. The admin API
does the same over HTTP, with the admin key. A live key's name is unique (409 ``name_taken`` for
a second one, however many race), and a key is named by its id, an id prefix or its name (the
listing forms and the CLI's own refusals: tests/gateway/test_keys_cli.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from ferryman.gateway.key_format import money
from ferryman.gateway.key_lookup import NameTaken
from ferryman.gateway.keys import KeyStore
from ferryman.store import open_store
from tests.leak_guard import find_secrets

MESSAGES = [{"role": "user", "content": "Say hello."}]
CREATE = [
    "create",
    "--name", "team-a",
    "--budget", "50/month",
    "--rpm", "100",
    "--tpm", "200000",
    "--models", "gpt-4o-mini,gpt-6-luna",
    "--expires", "30d",
]  # fmt: skip
DAY = 86400


def keys_cli(store_url: str, *args: str) -> subprocess.Popen[str]:
    """``ferryman keys ARGS --store URL`` as a subprocess (started, not waited for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ferryman.cli", "keys", *args, "--store", store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
    )


def run_cli(store_url: str, *args: str) -> tuple[int, str, str]:
    process = keys_cli(store_url, *args)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def db_path(gw: Any) -> Path:
    return Path(gw.gateway.settings.store.url.removeprefix("sqlite:///"))


def key_rows(path: Path) -> list[dict[str, Any]]:
    """The ``virtual_keys`` table, read with plain sqlite3 (not through Ferryman)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM virtual_keys")]
    finally:
        db.close()


def database_bytes(path: Path) -> bytes:
    """The database with its WAL and shared-memory files: everything SQLite wrote."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def refused_within(call: Callable[[], Any], seconds: float) -> tuple[float, openai.AuthenticationError]:
    """Call until the gateway answers 401; returns how long that took and the error."""
    started = time.monotonic()
    while True:
        try:
            call()
        except openai.AuthenticationError as error:
            return time.monotonic() - started, error
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"still accepted after {elapsed:.2f}s"
        time.sleep(0.02)  # polling towards a deadline, not ordering


def chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_key_lifecycle_against_a_running_gateway(gateway):
    """create prints only the key, once; the row holds its sha256 and never the secret; list and
    show never print it (show reports usage); rotate gives a new key and the old one stops; revoke
    stops the new one: each within a second on a gateway sharing the store."""
    gw = gateway()
    path = db_path(gw)
    url = f"sqlite:///{path}"

    code, out, err = run_cli(url, *CREATE)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    secret = out.strip()
    assert secret.startswith("fm-") and len(secret) > 40
    assert secret not in err  # the note on stderr names the key's id, not the key
    (row,) = key_rows(path)
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["hint"] == "fm-…" + secret[-4:]
    assert (row["name"], row["rpm"], row["tpm"], row["budget_period"]) == ("team-a", 100, 200000, "month")
    assert float(row["budget_usd"]) == 50
    assert json.loads(row["models"]) == ["gpt-4o-mini", "gpt-6-luna"]
    assert row["expires"] == pytest.approx(time.time() + 30 * DAY, abs=60)
    assert secret.encode() not in database_bytes(path)
    assert err.count(row["id"]) == 1

    client = gw.client(secret)
    assert chat(client).choices[0].message.content

    code, shown, err = run_cli(url, "show", "team-a")
    assert code == 0, err
    assert secret not in shown and row["id"] in shown and row["hint"] in shown
    assert "calls: 1" in shown.splitlines() and "budget: $50.00/month" in shown.splitlines()
    (spent,) = [line.split(": ")[1] for line in shown.splitlines() if line.startswith("spent:")]
    assert spent.startswith("$0.000") and spent != "$0.0000"  # a tiny spend shows its digits, never $0.00
    code, as_json, err = run_cli(url, "show", row["id"][:10], "--json")  # an id prefix names it too
    assert code == 0, err
    usage = json.loads(as_json)["usage"]
    assert usage["calls"] == 1 and 0 < Decimal(usage["cost_usd"]) < Decimal("0.001")
    assert spent == money(usage["cost_usd"])  # the table and the JSON tell the same amount
    code, listed, err = run_cli(url, "list")
    assert code == 0, err
    assert secret not in listed and row["id"] in listed and "active" in listed
    assert not find_secrets(shown + listed + err)

    code, out, err = run_cli(url, "rotate", row["id"])
    assert code == 0, err
    rotated = out.strip()
    assert rotated.startswith("fm-") and rotated != secret
    took, error = refused_within(lambda: chat(client), 1.0)
    assert error.code == "invalid_api_key" and took < 1.0
    new_client = gw.client(rotated)
    assert chat(new_client).choices
    (row_after,) = key_rows(path)
    assert row_after["id"] == row["id"] and row_after["hash"] == hashlib.sha256(rotated.encode()).hexdigest()

    code, out, err = run_cli(url, "revoke", "team-a")
    assert code == 0 and out == "", err
    took, error = refused_within(lambda: chat(new_client), 1.0)
    assert error.code == "key_revoked" and took < 1.0
    code, listed_all, _ = run_cli(url, "list", "--all")
    assert "revoked" in listed_all and rotated not in listed_all


def test_cli_exit_codes(gateway_settings, tmp_path):
    """An unknown key exits 1 (show, revoke); a bad --budget or --expires exits 2 (before any write)."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    open_store(gateway_settings(store={"url": url})).close()  # the schema, before the commands race to make it
    started = {
        "show": keys_cli(url, "show", "key_doesnotexist"),
        "revoke": keys_cli(url, "revoke", "nobody"),
        "budget": keys_cli(url, "create", "--name", "x", "--budget", "lots"),
        "expires": keys_cli(url, "create", "--name", "x", "--expires", "soon"),
    }
    results = {name: (p.wait(60), p.communicate()[1]) for name, p in started.items()}
    assert {name: code for name, (code, _) in results.items()} == {"show": 1, "revoke": 1, "budget": 2, "expires": 2}
    assert "no key 'key_doesnotexist'" in results["show"][1]
    assert "unreadable budget" in results["budget"][1]
    assert "unreadable duration" in results["expires"][1]
    assert key_rows(tmp_path / "keys.db") == []  # nothing was created by the refused commands


# -- the admin API ---------------------------------------------------------------------------------


def test_admin_api_key_lifecycle(gateway):
    """POST creates (the secret in that reply only, stored as its hash), GET lists and shows (with
    usage and budget), PATCH changes limits at once, rotate and revoke (POST or DELETE) take
    effect on the very next call."""
    gw = gateway()
    created = gw.admin.post(
        "/admin/keys",
        json={
            "name": "team-a",
            "team": "alpha",
            "budget": "50/month",
            "rpm": 100,
            "tpm": 200000,
            "models": ["gpt-4o-mini", "gpt-6-luna"],
            "expires": "30d",
        },
    )
    assert created.status_code == 201
    body = created.json()
    secret, key_id = body["key"], body["id"]
    assert secret.startswith("fm-") and key_id.startswith("key_")
    assert body["state"] == "active" and body["team"] == "alpha" and body["budget_usd"] == "50.0000000000"
    assert body["models"] == ["gpt-4o-mini", "gpt-6-luna"] and body["hint"] == "fm-…" + secret[-4:]
    assert body["expires"] == pytest.approx(time.time() + 30 * DAY, abs=60)
    (row,) = key_rows(db_path(gw))
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.encode() not in database_bytes(db_path(gw))

    client = gw.client(secret)
    chat(client)
    listed = gw.admin.get("/admin/keys")
    assert listed.status_code == 200 and secret not in listed.text
    (entry,) = listed.json()["data"]
    assert entry["id"] == key_id and "key" not in entry and entry["usage"]["calls"] == 1
    shown = gw.admin.get(f"/admin/keys/{key_id}")
    assert shown.status_code == 200 and secret not in shown.text
    assert shown.json()["usage"]["calls"] == 1 and float(shown.json()["usage"]["cost_usd"]) > 0
    budget = shown.json()["budget"]
    assert budget["scope"] == f"key:{key_id}" and budget["usd"] == "50.0000000000"
    assert 0 < float(budget["spent_usd"]) < 0.001 and budget["period"] == "month"

    patched = gw.admin.patch(f"/admin/keys/{key_id}", json={"rpm": 7, "models": ["gpt-4o"]})
    assert patched.status_code == 200
    assert patched.json()["rpm"] == 7 and patched.json()["models"] == ["gpt-4o"]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(client)  # gpt-4o-mini is no longer allowed: at once, not after the cache expires
    assert caught.value.code == "model_not_allowed"

    rotated = gw.admin.post(f"/admin/keys/{key_id}/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["key"]
    assert new_secret.startswith("fm-") and new_secret != secret and rotated.json()["rotated"] is not None
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    new_client = gw.client(new_secret)
    assert new_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5).choices

    revoked = gw.admin.post(f"/admin/keys/{key_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert new_secret not in revoked.text
    with pytest.raises(openai.AuthenticationError) as caught:
        new_client.models.list()
    assert caught.value.code == "key_revoked"
    assert gw.admin.post(f"/admin/keys/{key_id}/revoke").json()["state"] == "revoked"  # idempotent

    other = gw.admin.post("/admin/keys", json={"name": "other"}).json()
    deleted = gw.admin.delete(f"/admin/keys/{other['id']}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        gw.client(other["key"]).models.list()
    assert [k["state"] for k in gw.admin.get("/admin/keys").json()["data"]] == ["revoked", "revoked"]


def test_admin_api_unknown_key_and_bad_input(gateway):
    """Unknown ids answer 404 key_not_found; bad fields answer 400 in OpenAI's shape naming the
    field; nothing is created by a refused request."""
    gw = gateway()
    for method, path in (
        ("GET", "/admin/keys/key_nope"),
        ("PATCH", "/admin/keys/key_nope"),
        ("POST", "/admin/keys/key_nope/rotate"),
        ("POST", "/admin/keys/key_nope/revoke"),
        ("DELETE", "/admin/keys/key_nope"),
    ):
        reply = gw.admin.request(method, path, json={"rpm": 5} if method == "PATCH" else None)
        assert reply.status_code == 404, (method, path)
        assert reply.json()["error"]["code"] == "key_not_found"
    for body, param in (
        ({}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "x", "budget": "lots"}, "budget"),
        ({"name": "x", "budget": "5/week"}, "budget"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "tpm": "many"}, "tpm"),
        ({"name": "x", "models": 5}, "models"),
        ({"name": "x", "expires": "soon"}, "expires"),
        ({"name": "x", "team": 3}, "team"),
    ):
        reply = gw.admin.post("/admin/keys", json=body)
        assert reply.status_code == 400, body
        assert reply.json()["error"]["param"] == param and reply.json()["error"]["type"] == "invalid_request_error"
    bad_json = gw.admin.post("/admin/keys", content=b"{name", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert gw.admin.get("/admin/keys").json()["data"] == []


def test_admin_api_teams(gateway):
    """PUT sets a team's shared limits and budget, GET lists teams, a key joins one by name, and
    DELETE removes it, which lifts the team's limit from its keys at once."""
    gw = gateway()
    put = gw.admin.put("/admin/teams/alpha", json={"rpm": 2, "tpm": 50000, "budget": "20/day"})
    assert put.status_code == 200
    assert put.json() == {
        "name": "alpha",
        "created": put.json()["created"],
        "rpm": 2,
        "tpm": 50000,
        "budget_usd": "20.0000000000",
        "budget_period": "day",
        "tags": {},
    }
    created = gw.admin.post("/admin/keys", json={"name": "a1", "team": "alpha"}).json()
    assert created["team"] == "alpha"
    gw.admin.post("/admin/keys", json={"name": "b1", "team": "beta"})  # a new team name makes the team
    assert [t["name"] for t in gw.admin.get("/admin/teams").json()["data"]] == ["alpha", "beta"]

    client = gw.client(created["key"])
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()  # the team's rpm of 2 holds for its keys
    assert "team alpha" in caught.value.message

    assert gw.admin.put("/admin/teams/alpha", json={"budget": "bad"}).status_code == 400
    deleted = gw.admin.delete("/admin/teams/alpha")
    assert deleted.json() == {"deleted": True, "name": "alpha"}
    assert [t["name"] for t in gw.admin.get("/admin/teams").json()["data"]] == ["beta"]
    assert client.models.list().data  # no team, no team limit
    assert gw.admin.delete("/admin/teams/alpha").json()["deleted"] is False


def test_cli_billing_tags_decide_what_a_key_charges(gateway):
    """`keys create --tags`, `keys tags` and `teams set --tags` set what `tag:` budget rules count,
    on a running gateway sharing the store: the key's spend moves from one project to the other,
    and a team's tag wins over its key's."""
    from ferryman.pipeline.budget import Budget

    rules = [{"scope": f"tag:project={p}", "period": "day", "usd": "5"} for p in ("apollo", "zeus", "hera")]
    gw = gateway(budgets=rules)
    url = f"sqlite:///{db_path(gw)}"
    code, out, err = run_cli(url, "create", "--name", "tagged", "--tags", "project=apollo, env=prod")
    assert code == 0, err
    client = gw.client(out.strip())

    def spend() -> dict[str, Decimal]:
        stage = gw.gateway.pipeline.stage(Budget)
        found = {}
        for project in ("apollo", "zeus", "hera"):
            spent, reserved = gw.server.call(stage.snapshot(f"tag:project={project}"))
            found[project] = Decimal(spent) + Decimal(reserved)
        return found

    chat(client)
    first = spend()
    assert first["apollo"] > 0 and first["zeus"] == first["hera"] == 0
    code, _, err = run_cli(url, "tags", "tagged", "project=zeus")
    assert code == 0 and "project=zeus" in err, err
    code, out, _ = run_cli(url, "list")
    assert "project=zeus" in out and "env=prod" not in out  # `keys tags` sets all of them
    gw.gateway.key_cache.forget()
    chat(client)
    second = spend()
    assert second["apollo"] == first["apollo"] and second["zeus"] > 0

    team = subprocess.run(
        [sys.executable, "-m", "ferryman.cli", "teams", "set", "olympus", "--tags", "project=hera", "--store", url],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}, timeout=60,
    )  # fmt: skip
    assert team.returncode == 0 and "project=hera" in team.stderr, team.stderr
    code, out, err = run_cli(url, "create", "--name", "member", "--team", "olympus", "--tags", "project=zeus")
    assert code == 0, err
    chat(gw.client(out.strip()))
    third = spend()
    assert third["hera"] > 0 and third["zeus"] == second["zeus"]  # the team's tag, not the key's own
    code, _, err = run_cli(url, "tags", "tagged", "team=olympus")
    assert code == 2 and "the tag 'team' is the key's team" in err and "Traceback" not in err


# -- one live key per name -------------------------------------------------------------------------


def test_admin_api_refuses_a_taken_name_with_409_even_in_a_race(gateway, store_url):
    """A second POST of a live key's name is 409 name_taken in OpenAI's shape; eight POSTs of one
    new name at the same moment make one key and seven 409s (the unique index decides, not a
    check that races); the name is free again once its key is revoked, here by name."""
    gw = gateway(store={"url": store_url})
    first = gw.admin.post("/admin/keys", json={"name": "team-a"})
    assert first.status_code == 201
    again = gw.admin.post("/admin/keys", json={"name": "team-a", "rpm": 5})
    assert again.status_code == 409
    assert again.json() == {
        "error": {
            "message": f"A key named 'team-a' already exists ({first.json()['id']}): "
            "use another name or revoke it first.",
            "type": "invalid_request_error",
            "param": "name",
            "code": "name_taken",
        }
    }
    assert first.json()["key"] not in again.text

    ready = threading.Barrier(8)

    def create(_: int) -> Any:
        with httpx2.Client(base_url=gw.url, headers=dict(gw.admin.headers), timeout=30) as http:
            ready.wait(30)  # all eight sent together
            return http.post("/admin/keys", json={"name": "racer", "team": "new-team"})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(create, range(8)))
    assert sorted(r.status_code for r in replies) == [201] + [409] * 7, [r.text for r in replies]
    (winner,) = [r.json()["id"] for r in replies if r.status_code == 201]
    assert all(r.json()["error"]["code"] == "name_taken" and winner in r.json()["error"]["message"]
               for r in replies if r.status_code == 409)  # fmt: skip
    listed = gw.admin.get("/admin/keys").json()["data"]
    assert [k["id"] for k in listed if k["name"] == "racer"] == [winner]
    assert [t["name"] for t in gw.admin.get("/admin/teams").json()["data"]] == ["new-team"]

    assert gw.admin.post("/admin/keys/team-a/revoke").json()["state"] == "revoked"
    assert gw.admin.post("/admin/keys", json={"name": "team-a"}).status_code == 201


def test_keystore_creates_at_once_make_one_key_per_name(store_url, gateway_settings):
    """KeyStore.create, eight at once of one name on the store's threads: one key, seven NameTaken
    naming it; eight of different names joining one new team at once all succeed (the team is
    made once, not raced into an IntegrityError)."""
    store = open_store(gateway_settings(store={"url": store_url}))
    keys = KeyStore(store)

    async def both() -> tuple[list[Any], list[Any]]:
        same = await asyncio.gather(*(keys.create("same") for _ in range(8)), return_exceptions=True)
        team = await asyncio.gather(
            *(keys.create(f"member-{i}", team="crew") for i in range(8)), return_exceptions=True
        )
        return same, team

    try:
        same, team = asyncio.run(both())
        made = [r for r in same if isinstance(r, tuple)]
        refused = [r for r in same if isinstance(r, NameTaken)]
        assert len(made) == 1 and len(refused) == 7, same
        assert {e.holder for e in refused} == {made[0][1].id} and {e.name for e in refused} == {"same"}
        assert all(isinstance(r, tuple) for r in team), team
        assert [t.name for t in asyncio.run(keys.teams())] == ["crew"]
        with pytest.raises(NameTaken):  # a rename onto a live key's name is refused the same way
            asyncio.run(keys.set_limits(team[0][1].id, name="same"))
    finally:
        store.close()


def test_admin_api_paths_take_an_id_prefix_or_a_name(gateway):
    """/admin/keys/{id} resolves as the CLI does: the id, a unique prefix of it, the name; a
    prefix two keys share is 400 key_ambiguous naming both, nothing changed."""
    gw = gateway()
    a = gw.admin.post("/admin/keys", json={"name": "alpha"}).json()
    b = gw.admin.post("/admin/keys", json={"name": "beta"}).json()
    db = sqlite3.connect(db_path(gw))
    with db:
        db.execute("UPDATE virtual_keys SET id = ? WHERE id = ?", ("key_abcdef0000000000aaaa", a["id"]))
        db.execute("UPDATE virtual_keys SET id = ? WHERE id = ?", ("key_abcdef1111111111bbbb", b["id"]))
    db.close()
    assert gw.admin.get("/admin/keys/abcdef0").json()["name"] == "alpha"
    assert gw.admin.get("/admin/keys/key_abcdef1").json()["name"] == "beta"
    assert gw.admin.patch("/admin/keys/beta", json={"rpm": 9}).json()["rpm"] == 9
    for method, path in (("GET", "/admin/keys/abcdef"), ("POST", "/admin/keys/key_abcdef/revoke")):
        reply = gw.admin.request(method, path)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert (error["code"], error["param"], error["type"]) == ("key_ambiguous", "id", "invalid_request_error")
        assert "key_abcdef0000000000aaaa" in error["message"] and "key_abcdef1111111111bbbb" in error["message"]
    assert [k["state"] for k in gw.admin.get("/admin/keys").json()["data"]] == ["active", "active"]
    assert gw.admin.get("/admin/keys/abcde").json()["error"]["code"] == "key_not_found"  # too short a prefix
