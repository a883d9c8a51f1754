"""Fixtures for gateway tests: a real gateway on a loopback port in front of the session's mock.

``gateway(**settings)`` starts :class:`~ferryman.gateway.server.BackgroundGateway` with a fresh
SQLite store (keyword overrides of :class:`ferryman.config.Settings` on top) and returns a
:class:`Running` handle: ``.base_url``, ``.new_key(**limits)`` (a virtual key, via the store),
``.client(key)`` (the official SDK pointed at the gateway, its own retries off), ``.admin``
(an httpx2 client with the admin key). Everything stops at the end of the test.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from ferryman.config import Settings
from ferryman.gateway.app import Gateway
from ferryman.gateway.key_rules import parse_budget, parse_duration
from ferryman.gateway.server import BackgroundGateway
from ferryman.mock.control_client import MockControl
from tests.pipeline.conftest import mock_deployment, upstream_key  # noqa: F401  (a fixture)

ADMIN_KEY = "ferryman-admin-test-secret"
UNNAMED = itertools.count(1)  # default key names, unique across every gateway of a session


@dataclass
class Running:
    server: BackgroundGateway
    gateway: Gateway
    admin: httpx2.Client
    clients: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def url(self) -> str:
        return self.server.url

    def new_key(
        self, name: str | None = None, budget: str | None = None, expires: str | None = None, **limits: Any
    ) -> str:
        secret, _ = self.new_key_with_record(name, budget=budget, expires=expires, **limits)
        return secret

    def new_key_with_record(
        self, name: str | None = None, budget: str | None = None, expires: str | None = None, **limits: Any
    ) -> tuple[str, Any]:
        """A key named ``name``, or by default a new ``test-N`` (live key names are unique)."""
        keys = self.gateway.keys
        if name is None:
            name = f"test-{next(UNNAMED)}"
        created = keys.create(
            name,
            budget=parse_budget(budget) if budget else None,
            expires_in_s=parse_duration(expires) if expires else None,
            **limits,
        )
        secret, record = self.server.call(created)
        return secret, record

    def client(self, key: str, **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=self.base_url, api_key=key, max_retries=options.pop("max_retries", 0), **options
        )
        self.clients.append(client)
        return client

    def async_client(self, key: str, **options: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key, max_retries=options.pop("max_retries", 0), **options
        )
        self.clients.append(client)
        return client


@pytest.fixture
def gateway_settings(
    ferryman_mock: MockControl,
    tmp_path: Path,
    upstream_key: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FERRYMAN_TEST_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("deployments", [mock_deployment(ferryman_mock)])
        overrides.setdefault("store", {"url": f"sqlite:///{tmp_path / 'gateway.db'}"})
        if isinstance(overrides["store"], dict) and overrides["store"].get("redis_url"):
            overrides["store"] = {"redis_prefix": f"ferryman-test-{uuid.uuid4().hex[:12]}:", **overrides["store"]}
        gateway = {"admin_key": "env:FERRYMAN_TEST_ADMIN_KEY", "access_log": True, **overrides.pop("gateway", {})}
        return Settings(gateway=gateway, **overrides)

    return make


@pytest.fixture
def gateway(gateway_settings: Callable[..., Settings]) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        settings = gateway_settings(**overrides)
        app = Gateway(settings)
        server = BackgroundGateway(app).start()
        admin = httpx2.Client(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        running = Running(server, app, admin)
        started.append(running)
        return running

    yield start
    for running in started:
        for client in running.clients:
            client.close()
        running.admin.close()
        running.server.stop()
        running.gateway.store.close()
