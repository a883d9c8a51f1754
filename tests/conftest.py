"""Shared test setup. The ``ferryman_mock`` fixture comes from Ferryman's own pytest plugin.

Backend tests ask for ``postgres_url`` / ``redis_url``: they run whenever the service answers
on 127.0.0.1, skip with the reason otherwise, and fail instead of skipping when
``FERRYMAN_REQUIRE_SERVICES=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryman.mock.app import MockApp
from ferryman.mock.conformance import ConformanceRecorder

# Fails the session if any key or bearer token shows up in logs, metrics, errors or audit rows.
pytest_plugins = ["tests.leak_guard"]

# The suite calls models OpenAI has retired since (gpt-3.5-turbo, gpt-4, o3-mini, …; gpt-4o-mini
# shuts down on 2027-01-14), and every mock refuses a model past its shutdown date as OpenAI does.
# So every mock the suite starts acts as on one date before those: the in-process MockApp, the
# pytest plugin's server and `ferryman mock` subprocesses (which inherit the environment; those
# started with a cleaned environment pass this variable on). Set at import, before any mock
# starts; tests of retirement set their own dates explicitly.
os.environ.setdefault("FERRYMAN_MOCK_TODAY", "2026-06-01")
# A gateway asks its upstreams' GET /v1/models for shutdown dates at start (lifecycle.refresh_s), in
# the background: in the suite that would put an unordered request in every mock's log. The tests of
# the refresher turn it on themselves.
os.environ.setdefault("FERRYMAN_LIFECYCLE__REFRESH_S", "0")
MOCK_TODAY = os.environ["FERRYMAN_MOCK_TODAY"]

POSTGRES_URL = os.environ.get("FERRYMAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FERRYMAN_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _need(service: str, port: int) -> None:
    if _answers(port):
        return
    reason = f"{service} does not answer on 127.0.0.1:{port}"
    if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and FERRYMAN_REQUIRE_SERVICES=1 makes its tests mandatory")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    _need("PostgreSQL", 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    _need("Redis", 6379)
    return REDIS_URL


# Every body and stream event any mock sends during the suite is checked against OpenAI's spec;
# a test that makes the mock send something the spec does not allow fails in its teardown.
_recorder = ConformanceRecorder()


def pytest_configure(config: pytest.Config) -> None:
    MockApp.observer = _recorder


@pytest.fixture(autouse=True)
def _replies_conform_to_the_spec() -> Iterator[None]:
    _recorder.take()
    yield
    violations = _recorder.take()
    assert not violations, "the mock sent bodies that break OpenAI's spec:\n" + "\n".join(violations[:20])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A gateway's store, on SQLite and on a fresh PostgreSQL database of its own."""
    from tests.gateway.processes import fresh_postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url
