"""A real ``ferryman serve`` whose SQLite store lives on a disk that fills: what callers, the admin
API and ``/readyz`` see, and that it recovers by itself once there is room again.

The disk is an 8 MiB tmpfs mounted for the test (skipped where mounting is not permitted; see
``tests/batch/test_full_disk.py``), holding only the database, its WAL and ``-shm``. Before the
filler takes the room left, the WAL is checkpointed and truncated (the gateway is idle then), so
that the next write needs new room: a WAL that had been reset would take a few writes in its
old room first.

What is asserted is the documented behaviour (README, "Failure modes"):

- a write before the call fails closed: the admin API's key creation, and a capped key's budget
  reservation, answer 503 ``disk_full`` in OpenAI's error shape with ``retry-after: 1``, and the
  capped call never reaches the upstream;
- once an audit record could not be written for want of room (here: the capped key's refusals),
  every call is refused with 503 ``disk_full`` before it goes upstream, a key with no budget's
  too: nothing is sent that cannot be recorded. Each refusal tries to write its own record; the
  first that lands (once there is room) lets the next call through;
- ``/readyz`` answers 503 with ``checks.disk`` failing (the ping, a read, still works: the room
  left beside the database file is what tells);
- once the filler is gone, the same calls work, without a restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai

from ferryman.mock.control_client import MockControl
from tests.batch.test_full_disk import fill_now, mounted_tmpfs
from tests.gateway.processes import GatewayProcess, gateway_env, start_gateway

DISK_BYTES = 8 * 1024 * 1024
MESSAGES = [{"role": "user", "content": "hi"}]


def disk_full_reply(reply: httpx2.Response) -> dict[str, Any]:
    """A 503 ``disk_full`` in OpenAI's error shape, with ``retry-after``; returns its error."""
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == "disk_full" and error["type"] == "server_error"
    assert "Traceback" not in reply.text
    return dict(error)


def chat(gateway: GatewayProcess, key: str) -> httpx2.Response:
    return httpx2.post(
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5},
        timeout=30,
    )


def truncate_wal(database: Path) -> None:
    """Checkpoint the idle gateway's WAL into the database and truncate it to nothing."""
    db = sqlite3.connect(database, timeout=10)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "the gateway was not idle"
    finally:
        db.close()
    assert database.with_name(database.name + "-wal").stat().st_size == 0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # polling with a deadline, not ordering
    raise AssertionError(f"{what} within {timeout_s} s")


def chat_paths(mock: MockControl, since: int) -> list[str]:
    return [e["path"] for e in mock.requests(since) if e["path"] == "/v1/chat/completions"]


def last_seq(mock: MockControl) -> int:
    log = mock.requests()
    return log[-1]["seq"] if log else 0


def test_a_full_disk_under_the_store_is_503_disk_full_before_a_call_and_recovers_without_a_restart(
    ferryman_mock: MockControl, tmp_path: Path
) -> None:
    with mounted_tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
        database = disk / "gateway.db"
        env = gateway_env(ferryman_mock.base_url, tmp_path / "data")
        gateway = start_gateway(env, tmp_path / "gw", "--store", f"sqlite:///{database}")
        try:
            gateway.wait_ready()
            capped, _ = gateway.create_key("capped", budget="5/day")
            free, free_id = gateway.create_key("free")
            assert chat(gateway, capped).status_code == 200
            assert chat(gateway, free).status_code == 200
            pid = gateway.process.pid

            truncate_wal(database)
            filler = fill_now(disk)
            mark = last_seq(ferryman_mock)

            # The admin API writes before it answers: refused, in OpenAI's shape.
            error = disk_full_reply(gateway.admin.post("/admin/keys", json={"name": "while-full"}))
            assert "disk is full" in error["message"]
            # A capped key's budget is reserved before the call goes out: refused, nothing sent upstream.
            disk_full_reply(chat(gateway, capped))
            with openai.OpenAI(base_url=gateway.base_url, api_key=capped, max_retries=0) as client:
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                except openai.APIStatusError as refused:
                    assert refused.status_code == 503 and refused.code == "disk_full"
                else:
                    raise AssertionError("a capped key's call went through on a full disk")
            assert chat_paths(ferryman_mock, mark) == [], "a capped call reached the upstream"

            # The refusals' own records could not be written: from now on every call is refused
            # before it goes out, a key with no budget's too (nothing is sent that cannot be recorded).
            wait_for(lambda: "new calls get 503 disk_full" in gateway.output(), "the lost audit record was not logged")
            disk_full_reply(chat(gateway, free))
            assert chat_paths(ferryman_mock, mark) == [], "a call went upstream that could not be recorded"
            assert "Traceback" not in gateway.output()

            # The ping (a read) still works; the room beside the database says what is wrong.
            ready = httpx2.get(gateway.url + "/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"] == "ok"
            assert ready.json()["checks"]["disk"].startswith("failing: disk full"), ready.text

            filler.unlink()
            after = last_seq(ferryman_mock)
            made = gateway.admin.post("/admin/keys", json={"name": "after-room"})
            assert made.status_code == 201, made.text
            # The first call finds the gate still shut; its refusal's record lands, and opens it.
            disk_full_reply(chat(gateway, capped))
            assert chat(gateway, capped).status_code == 200
            assert chat(gateway, free).status_code == 200
            assert len(chat_paths(ferryman_mock, after)) == 2
            assert gateway.process.pid == pid and gateway.process.poll() is None, "no restart"
            ready = httpx2.get(gateway.url + "/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["checks"]["disk"] == "ok", ready.text

            # The refusal made while the disk was full has no audit record, then or later.
            listed = gateway.admin.get("/admin/requests", params={"limit": 50})
            assert listed.status_code == 200, listed.text
            rows = [r for r in listed.json()["data"] if r.get("principal") == free_id]
            assert len(rows) == 2, rows  # the call before the disk filled and the one after, not the one between
            assert all(r["status"] == 200 for r in rows), rows
            gateway.assert_no_secrets_logged()
        finally:
            gateway.stop()
