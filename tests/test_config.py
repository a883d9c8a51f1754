"""Settings: defaults as in the SDK, ferryman.toml, FERRYMAN_* variables, sharing rules."""

from __future__ import annotations

import pytest

from ferryman.config import OPENAI_BASE_URL, Settings, SettingsError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("OPENAI_BASE_URL", "FERRYMAN_CONFIG", "FERRYMAN_CACHE__MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_follow_the_sdk(monkeypatch):
    settings = Settings()
    [deployment] = settings.deployments
    assert deployment.base_url == OPENAI_BASE_URL
    assert deployment.api_keys == ["env:OPENAI_API_KEY"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/")
    assert Settings().deployments[0].base_url == "http://127.0.0.1:9999/v1"
    assert settings.cache.mode == "off" and settings.audit.bodies == "redacted"


def test_toml_file_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "ferryman.toml").write_text(
        """
[cache]
mode = "deterministic"
ttl_s = 60

[routing.aliases]
fast = ["gpt-6-luna", "gpt-4o-mini"]

[[deployments]]
name = "primary"
base_url = "https://api.openai.com/v1"
api_keys = ["env:OPENAI_API_KEY", "keyring:ferryman/second"]
weight = 3

[[deployments]]
name = "azure-eu"
kind = "azure"
base_url = "https://example.openai.azure.com"
api_version = "2024-10-21"
azure_deployments = { "gpt-4o-mini" = "mini-eu" }

[[budgets]]
scope = "tag:team"
period = "month"
usd = "50"
"""
    )
    settings = Settings()
    assert settings.cache.mode == "deterministic" and settings.cache.ttl_s == 60
    assert settings.routing.aliases["fast"] == ["gpt-6-luna", "gpt-4o-mini"]
    assert [d.name for d in settings.deployments] == ["primary", "azure-eu"]
    assert settings.deployments[1].azure_deployments == {"gpt-4o-mini": "mini-eu"}
    assert str(settings.budgets[0].usd) == "50"
    monkeypatch.setenv("FERRYMAN_CACHE__MODE", "all")
    assert Settings().cache.mode == "all"


def test_config_path_from_env(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.toml"
    path.write_text("[retry]\nmax_attempts = 7\n")
    monkeypatch.setenv("FERRYMAN_CONFIG", str(path))
    assert Settings().retry.max_attempts == 7


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"shared": True}, "PostgreSQL"),
        ({"shared": True, "url": "sqlite:///x.db", "redis_url": "redis://127.0.0.1:6379/0"}, "PostgreSQL"),
        ({"shared": True, "url": "postgresql://postgres@127.0.0.1/test"}, "Redis"),
        (
            {"shared": True, "url": "postgresql://postgres@127.0.0.1/test", "redis_url": "redis://127.0.0.1:6379/0"},
            "checkpoint_key",
        ),
    ],
)
def test_sharing_without_a_shared_store_is_a_startup_error(store, message):
    with pytest.raises(SettingsError, match=message):
        Settings(store=store)


def test_unknown_settings_are_refused():
    with pytest.raises(SettingsError):
        Settings(cache={"mode": "sometimes"})
    with pytest.raises(SettingsError):
        Settings(colour="blue")


def test_duplicate_deployment_names_are_refused():
    with pytest.raises(SettingsError, match="unique"):
        Settings(deployments=[{"name": "a"}, {"name": "a"}])
