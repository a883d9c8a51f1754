"""Callers learn what failed when the gateway's own dependencies fail: a Redis that is not there
and a database that is full answer 503 in OpenAI's shape with a stable ``code``
(``store_unavailable``, ``disk_full``) and ``retry-after``, through the official SDK; the call
fails closed (nothing reaches the upstream) and the log names the cause once, without a secret.

The full database is a real ``SQLITE_FULL``: every new connection of the gateway's engine gets a
``max_page_count`` at the file's current size, so writes soon have no room (shown through the
admin API, whose writes come before it answers; a call's own record comes after the call, and
what a failure there does, refusing the calls after it, is shown in test_full_disk.py).
"""

from __future__ import annotations

import logging

import openai
import pytest
from sqlalchemy import event

MESSAGES = [{"role": "user", "content": "hi"}]


def _refused(call, code: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    assert error.status_code == 503, error.response.text
    assert error.code == code and error.type == "server_error"
    assert error.response.headers["retry-after"] == "1"
    assert "Traceback" not in error.response.text
    return error


def test_an_unreachable_redis_is_a_503_store_unavailable(gateway, ferryman_mock, tmp_path, caplog):
    gw = gateway(store={"url": f"sqlite:///{tmp_path / 'redis-less.db'}", "redis_url": "redis://127.0.0.1:9/0"})
    secret = gw.new_key("capped", budget="5/day")
    client = gw.client(secret)
    ferryman_mock.clear_requests()
    with caplog.at_level(logging.ERROR):
        _refused(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES), "store_unavailable")
    assert ferryman_mock.requests() == []  # failed closed: nothing unaccounted went out
    named = [r.getMessage() for r in caplog.records if "store_unavailable" in r.getMessage()]
    assert named and all(secret not in m and "fm-" not in m for m in named)


def test_a_full_database_is_a_503_disk_full_for_the_admin_api(gateway, caplog):
    """Creating a key on a full database: 503 disk_full in OpenAI's shape, logged once; once there
    is room again, the same request works without a restart."""
    gw = gateway()
    assert gw.admin.post("/admin/keys", json={"name": "first"}).status_code == 201
    engine = gw.gateway.store.engine

    @event.listens_for(engine, "connect")
    def no_room(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    engine.dispose()
    many = {"name": "n" * 128, "models": [f"model-{i}-{'m' * 100}" for i in range(100)]}  # fills the last pages
    with caplog.at_level(logging.ERROR):
        replies = [gw.admin.post("/admin/keys", json=many) for _ in range(40)]
    full = [r for r in replies if r.status_code != 201]
    assert full, "the database never filled"
    reply = full[0]
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "disk_full" and reply.headers["retry-after"] == "1"
    assert any("disk_full" in r.getMessage() or "full" in r.getMessage() for r in caplog.records)
    event.remove(engine, "connect", no_room)
    engine.dispose()
    assert gw.admin.post("/admin/keys", json=many).status_code == 201  # recovered, no restart
