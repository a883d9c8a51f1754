"""Fixtures for pipeline tests: the official SDK, through Ferryman, against the mock.

``ferryman_client(**settings)`` builds ``ferryman.OpenAI`` (sync) whose pipeline points at the
session's mock, with its store in a fresh temporary SQLite file; ``ferryman_async_client`` is
the async twin. Settings are keyword overrides of :class:`ferryman.config.Settings`, e.g.
``ferryman_client(cache={"mode": "all"}, retry={"max_attempts": 3})``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import Engine

import ferryman
from ferryman.config import Settings
from ferryman.mock.control_client import MockControl
from ferryman.pipeline import build
from ferryman.pipeline.chain import Pipeline
from ferryman.store import open_store
from ferryman.store.database import make_engine

UPSTREAM_KEY = "sk-ferryman-upstream-test-key"


def mock_deployment(mock: MockControl, name: str = "mock", **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": mock.base_url, "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"], **extra}


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    return UPSTREAM_KEY


@pytest.fixture
def ferryman_settings(
    ferryman_mock: MockControl, tmp_path: Path, upstream_key: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    """Settings for a pipeline in front of the mock (keyword overrides on top)."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ferryman.toml

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("deployments", [mock_deployment(ferryman_mock)])
        overrides.setdefault("store", {"url": f"sqlite:///{tmp_path / 'ferryman.db'}"})
        if isinstance(overrides["store"], dict) and overrides["store"].get("redis_url"):
            # Each test's Redis keys apart from every other run's (and cleaned up with the prefix).
            overrides["store"] = {"redis_prefix": f"ferryman-test-{uuid.uuid4().hex[:12]}:", **overrides["store"]}
        return Settings(**overrides)

    return make


@pytest.fixture
def ferryman_pipeline(ferryman_settings: Callable[..., Settings]) -> Iterator[Callable[..., Pipeline]]:
    """``ferryman_pipeline(**settings)`` → a Pipeline (for tests that drive stages directly)."""
    made: list[Pipeline] = []

    def make(**overrides: Any) -> Pipeline:
        settings = ferryman_settings(**overrides)
        pipeline = build(settings, store=open_store(settings))
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.store.close()  # type: ignore[attr-defined]


@pytest.fixture
def ferryman_client(ferryman_settings: Callable[..., Settings]) -> Iterator[Callable[..., openai.OpenAI]]:
    clients: list[openai.OpenAI] = []

    def make(**overrides: Any) -> openai.OpenAI:
        settings = ferryman_settings(**overrides)
        client = ferryman.OpenAI(ferryman={"settings": settings}, api_key="sk-caller-side-placeholder")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ferryman_async_client(ferryman_settings: Callable[..., Settings]) -> Iterator[Callable[..., openai.AsyncOpenAI]]:
    clients: list[openai.AsyncOpenAI] = []

    def make(**overrides: Any) -> openai.AsyncOpenAI:
        settings = ferryman_settings(**overrides)
        client = ferryman.AsyncOpenAI(ferryman={"settings": settings}, api_key="sk-caller-side-placeholder")
        clients.append(client)
        return client

    yield make
    for client in clients:  # the pipelines' database connections (the loop that used them is gone)
        transport = getattr(client._client, "_transport", None)
        store = getattr(getattr(transport, "pipeline", None), "store", None)
        if store is not None:
            store.close()


@pytest.fixture
def audit_db(ferryman_settings: Callable[..., Settings]) -> Iterator[Engine]:
    """The engine of the SQLite file every ``ferryman_client`` of this test writes to."""
    engine = make_engine(ferryman_settings().database_url())
    yield engine
    engine.dispose()
