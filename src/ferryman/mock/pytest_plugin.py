"""pytest plugin: the ``ferryman_mock`` fixture.

Installed with Ferryman (entry point ``pytest11``), so any test suite can write::

    def test_summary(ferryman_mock):
        ferryman_mock.set_fixtures([{"match": "summarise", "content": "Short."}])
        reply = ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=[...])
        assert reply.choices[0].message.content == "Short."
        assert ferryman_mock.requests()[-1]["path"] == "/v1/chat/completions"

One mock server runs per test session on a free loopback port; each test starts from a clean
mock (no objects, no faults, no fixtures, default limits, empty request log).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer


@pytest.fixture(scope="session")
def ferryman_mock_server() -> Iterator[BackgroundServer]:
    """The session's mock server (prefer ``ferryman_mock``, which also resets it)."""
    with BackgroundServer() as server:
        yield server


@pytest.fixture
def ferryman_mock(ferryman_mock_server: BackgroundServer) -> Iterator[MockControl]:
    """A clean mock: ``.client`` / ``.async_client`` are ready ``openai`` clients, and the
    object's methods set faults, limits and fixtures and read the requests received."""
    control = MockControl(ferryman_mock_server.url, app=ferryman_mock_server.app)
    control.reset()
    try:
        yield control
    finally:
        control.close()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "ferryman: tests that use the ferryman mock")
