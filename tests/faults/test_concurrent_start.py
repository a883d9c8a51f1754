"""Four ``ferryman serve`` processes started at the same moment on one EMPTY PostgreSQL database
(and one Redis) all come up: the first migrates under the advisory lock, the others wait for it
and find the schema at head. The process-level twin of ``tests/store/test_concurrent_start.py``,
on a PostgreSQL of the test's own."""

from __future__ import annotations

from typing import Any

import openai
import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from ferryman.mock.control_client import MockControl
from ferryman.store.database import MIGRATIONS
from tests.faults.conftest import Fleet
from tests.faults.services import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

INSTANCES = 4
MESSAGES: list[Any] = [{"role": "user", "content": "hello from every instance"}]


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _tables_and_versions(url: str) -> tuple[set[str], list[str]]:
    with psycopg.connect(url) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")] if tables else []
    return tables, versions


def test_four_gateways_started_at_once_on_an_empty_database_all_come_up(
    redis_server: RedisServer, empty_database: str, fleet: Fleet, ferryman_mock: MockControl
):
    assert _tables_and_versions(empty_database) == (set(), [])  # empty: nothing migrated yet

    # All four launched before any is waited for: they reach the migration at about the same moment.
    gateways = [fleet.start(empty_database, redis_server, wait=False) for _ in range(INSTANCES)]
    for gateway in gateways:
        gateway.wait_ready(90)

    tables, versions = _tables_and_versions(empty_database)
    assert versions == [_head()]  # migrated once, to head: one row, not four
    assert {"audit", "virtual_keys", "budget_counters"} <= tables

    key, _ = gateways[0].create_key("everyone")  # one schema: a key made on one works on all
    for gateway in gateways:
        with openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=15.0) as client:
            assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    for gateway in gateways:
        assert gateway.process.poll() is None, gateway.output()[-3000:]
        assert "Traceback" not in gateway.output(), gateway.output()[-3000:]
