"""PostgreSQL stops under a running ``ferryman serve``: callers get OpenAI's 503 ``store_unavailable``
with ``retry-after``, nothing goes upstream for the refused calls, ``/readyz`` names the database;
PostgreSQL comes back and the same gateway process serves again, without a restart.

The gateway runs on a PostgreSQL of the test's own (stopped with ``pg_ctl stop -m fast``, started
again on the same port and data), alone and with a Redis in front (budget counters there, the
database behind them); the callers are the official SDK, with its retries off.
"""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import pytest

from ferryman.mock.control_client import MockControl
from tests.faults.conftest import Fleet
from tests.faults.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Is the ferry running today?"}]
REFUSED_CALLS = 5
RECOVERY_DEADLINE_S = 30.0


def _assert_store_unavailable(error: openai.APIStatusError) -> None:
    assert error.status_code == 503, error.response.text
    assert (error.type, error.code) == ("server_error", "store_unavailable"), error.response.text
    retry_after = error.response.headers.get("retry-after")
    assert retry_after is not None and int(retry_after) >= 1, dict(error.response.headers)
    assert "Traceback" not in error.response.text


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    reply = httpx2.get(url + "/readyz", timeout=10)
    body: dict[str, Any] = reply.json()
    return reply.status_code, body


@pytest.mark.parametrize("with_redis", [False, True], ids=["database", "database+redis"])
def test_a_postgres_outage_is_a_503_store_unavailable_and_the_gateway_recovers_without_a_restart(
    with_redis: bool,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    database: str,
    fleet: Fleet,
    ferryman_mock: MockControl,
):
    gateway = fleet.start(database, redis_server if with_redis else None)
    key, key_id = gateway.create_key("outage", budget="5/day")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=15.0)
    with client:
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices  # the key is known, and cached
        pid = gateway.process.pid

        postgres_server.stop()
        ferryman_mock.clear_requests()
        for i in range(REFUSED_CALLS):
            with pytest.raises(openai.APIStatusError) as refused:
                if i % 2:
                    client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True).close()
                else:
                    client.chat.completions.create(model=MODEL, messages=MESSAGES)
            _assert_store_unavailable(refused.value)
        # Failed closed: none of the refused calls went upstream (they could not be accounted).
        assert ferryman_mock.requests() == []

        status, ready = _readyz(gateway.url)
        assert status == 503, ready
        assert ready["checks"]["database"].startswith("failing"), ready
        if with_redis:
            assert ready["checks"]["redis"] == "ok", ready
        admin = gateway.admin.get(f"/admin/keys/{key_id}")  # the admin API says the same
        assert admin.status_code == 503, admin.text
        assert admin.json()["error"]["code"] == "store_unavailable" and admin.headers["retry-after"]

        postgres_server.start()
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        served = None
        while time.monotonic() < deadline:  # polling with a deadline: the pool reconnects on its own
            try:
                served = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
                break
            except openai.APIStatusError as error:
                _assert_store_unavailable(error)  # still reconnecting: only ever this refusal
            time.sleep(0.1)
        assert served is not None, f"no call served {RECOVERY_DEADLINE_S}s after PostgreSQL came back"
        assert served.status_code == 200 and served.parse().choices
        assert served.headers.get("x-ferryman-cost-usd") is not None  # accounted again

    status, ready = _readyz(gateway.url)
    assert status == 200 and ready["checks"]["database"] == "ok", ready
    assert gateway.process.poll() is None and gateway.process.pid == pid, "the gateway was restarted"
    assert gateway.admin.get(f"/admin/keys/{key_id}").status_code == 200
    assert "Traceback" not in gateway.output()
