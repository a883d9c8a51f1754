"""Fixtures of the fault tests: a Redis and a PostgreSQL of their own (see ``services.py``), and
real ``ferryman serve`` processes on them.

- ``own_redis`` / ``own_postgres`` (session): started once, torn down at the end whatever happened.
  A missing binary skips the tests with the reason, or fails them under ``FERRYMAN_REQUIRE_SERVICES=1``.
- ``redis_server`` / ``postgres_server``: the same servers, made sure to run at the start of each
  test (a test that kills one and fails before bringing it back does not break the next).
- ``database``: a fresh, migrated database on ``own_postgres`` (dropped after); ``empty_database``:
  one that is not migrated.
- ``fleet``: starts gateways on a test's store (``fleet.start(store, redis_server)``) with a Redis prefix
  of the test's own; every gateway is stopped after the test and its output checked for secrets.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from ferryman.mock.server import BackgroundServer
from tests.faults.services import PostgresServer, RedisServer, missing_binaries
from tests.gateway.processes import (
    GatewayProcess,
    drop_redis_prefix,
    fresh_postgres_database,
    gateway_env,
    start_gateway,
)


def _need(redis: bool = False, postgres: bool = False) -> None:
    missing = missing_binaries(redis=redis, postgres=postgres)
    if not missing:
        return
    reason = "the fault tests start their own servers, and these are missing: " + "; ".join(missing)
    if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (FERRYMAN_REQUIRE_SERVICES=1 makes these tests mandatory)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _need(redis=True)
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[PostgresServer]:
    _need(postgres=True)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(own_redis: RedisServer) -> RedisServer:
    own_redis.ensure_running()
    return own_redis


@pytest.fixture
def postgres_server(own_postgres: PostgresServer) -> PostgresServer:
    own_postgres.ensure_running()
    return own_postgres


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database, migrated (``postgresql://…``, as ``ferryman serve --store`` takes it)."""
    with fresh_postgres_database(postgres_server.libpq_url("postgres")) as url:
        try:
            yield url
        finally:
            postgres_server.ensure_running()  # up again for the drop, if the test left it stopped


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new database with nothing in it: no tables, no migrations run."""
    name = f"ferryman_t_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.libpq_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.libpq_url(name)
    finally:
        postgres_server.ensure_running()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Fleet:
    upstream: str
    workdir: Path
    prefix: str
    started: list[GatewayProcess] = field(default_factory=list)
    redis_servers: list[RedisServer] = field(default_factory=list)

    def env(self, **settings: str) -> dict[str, str]:
        return gateway_env(self.upstream, self.workdir / "data", STORE__REDIS_PREFIX=self.prefix, **settings)

    def start(self, store: str, redis: RedisServer | None = None, wait: bool = True, **settings: str) -> GatewayProcess:
        """``ferryman serve --store STORE [--redis REDIS]``; ready (``/readyz`` 200) unless ``wait=False``."""
        args = ["--store", store] + (["--redis", redis.url] if redis else [])
        gateway = start_gateway(self.env(**settings), self.workdir, *args)
        self.started.append(gateway)
        if redis is not None and redis not in self.redis_servers:
            self.redis_servers.append(redis)
        if wait:
            gateway.wait_ready(60)
        return gateway


@pytest.fixture
def fleet(ferryman_mock_server: BackgroundServer, tmp_path: Path) -> Iterator[Fleet]:
    """Ask for it after the store fixtures (``database``, ``redis_server``): it is torn down first."""
    gateways = Fleet(ferryman_mock_server.base_url, tmp_path, f"ferryman-faults-{uuid.uuid4().hex[:12]}:")
    try:
        yield gateways
    finally:
        for gateway in gateways.started:
            gateway.stop()
        for redis in gateways.redis_servers:
            redis.ensure_running()
            drop_redis_prefix(redis.url, gateways.prefix)
    for gateway in gateways.started:
        gateway.assert_no_secrets_logged()
