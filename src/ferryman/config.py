"""Settings: one ``ferryman.toml`` plus ``FERRYMAN_*`` environment variables, validated.

The file is ``./ferryman.toml`` or the path in ``FERRYMAN_CONFIG``; environment variables
override it, nested with ``__`` (``FERRYMAN_CACHE__MODE=all``). With no deployments set, the
one upstream is ``OPENAI_BASE_URL`` (default OpenAI's) with ``OPENAI_API_KEY``, as in the SDK.
Secrets are references (``env:NAME``, ``keyring:SERVICE/NAME``, ``file:/path``), resolved by
:mod:`ferryman.secrets` when first used and never printed.

A typo must not pass as a default: unknown keys (in the file or keyword overrides) and unknown
``FERRYMAN_*`` variables are refused, and every failure, whatever its source, is one
:class:`~ferryman.errors.SettingsError` line naming the file or variable, the key and the
nearest valid name (see :mod:`ferryman.config_errors`).
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceError

from ferryman.config_errors import (
    KeyedError,
    check_config_file,
    check_environment,
    config_file,
    from_source_error,
    from_validation,
    read_toml,
)
from ferryman.errors import SettingsError as SettingsError  # raised by Settings() and load()

OPENAI_BASE_URL = "https://api.openai.com/v1"


class _Section(BaseModel):
    """A table of the settings: an unknown key in it is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class DeploymentSettings(_Section):
    """One place that serves models: OpenAI, Azure OpenAI, or any compatible base URL."""

    name: str = "openai"
    base_url: str = OPENAI_BASE_URL
    api_keys: list[str] = Field(default_factory=lambda: ["env:OPENAI_API_KEY"])  # secret references
    kind: Literal["openai", "azure"] = "openai"
    api_version: str | None = None  # Azure: the api-version query parameter
    azure_deployments: dict[str, str] = Field(default_factory=dict)  # Azure: model -> deployment name
    models: list[str] = Field(default_factory=lambda: ["*"])  # globs of the models it serves
    weight: float = Field(1.0, gt=0)
    rpm: int | None = Field(None, gt=0)  # pacing seeds, corrected live from x-ratelimit-* headers
    tpm: int | None = Field(None, gt=0)
    timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class RetrySettings(_Section):
    max_attempts: int = Field(4, ge=1, le=20)  # including the first
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(8.0, ge=0)
    max_retry_after_s: float = Field(60.0, ge=0)  # a longer retry-after is not waited for
    deadline_s: float = Field(300.0, gt=0)  # for all attempts of one call together


class PacingSettings(_Section):
    enabled: bool = True
    max_wait_s: float = Field(300.0, ge=0)  # a call waiting longer is refused with a 429


class CacheSettings(_Section):
    mode: Literal["off", "deterministic", "all"] = "off"
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, gt=0)


class RoutingSettings(_Section):
    aliases: dict[str, list[str]] = Field(default_factory=dict)  # fast = ["gpt-6-luna", "gpt-4o-mini"]
    breaker_failures: int = Field(5, ge=1)  # failures in the window that open a deployment's breaker
    breaker_window_s: float = Field(30.0, gt=0)
    breaker_cooldown_s: float = Field(15.0, gt=0)  # open this long, then one half-open probe


class BudgetRule(_Section):
    """A hard cap: ``scope`` is ``process``, ``tag:team`` (each team separately),
    ``tag:team=a`` (that team), ``key`` (each virtual key) or ``key:NAME``."""

    scope: str = "process"
    period: Literal["day", "month"] = "day"
    usd: Decimal = Field(gt=0)


class BudgetSettings(_Section):
    """How budget reservations outlive a crash: each is leased to its instance, which renews it
    while it lives; one whose lease runs out (the instance was killed) is released by any other."""

    lease_s: float = Field(60.0, gt=0, le=3600)


class AuditSettings(_Section):
    enabled: bool = True
    bodies: Literal["none", "redacted", "full"] = "redacted"
    checkpoint_key: str | None = None  # secret reference for signing checkpoints


class TelemetrySettings(_Section):
    prometheus: bool = True
    otel: bool = False
    json_logs: bool = False


class LifecycleSettings(_Section):
    """Models and APIs OpenAI retires (ferryman.pipeline.lifecycle)."""

    on_retired: Literal["pass", "refuse", "successor"] = "pass"  # a call to a model past its shutdown date
    translate_params: bool = False  # rewrite parameters a reasoning model rejects (max_tokens, temperature)
    headers: bool = True  # Deprecation, Sunset and Link headers on replies for retiring models and APIs
    today: dt.date | None = None  # for tests and rehearsals: act as on this date (default: today, UTC)
    # ferryman serve asks each upstream's GET /v1/models for shutdown dates this often (at start, when
    # the cached ones are older); 0: never by itself, only `ferryman models --refresh`
    refresh_s: float = Field(86400.0, ge=0)


class StoreSettings(_Section):
    url: str | None = None  # SQLAlchemy URL; default SQLite in the user data directory
    redis_url: str | None = None
    redis_prefix: str = "ferryman:"  # every Redis key Ferryman writes starts with this
    shared: bool = False  # several processes share limits and budgets: needs PostgreSQL + Redis


class GatewaySettings(_Section):
    """``ferryman serve``: the OpenAI-compatible gateway."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    admin_key: str = "env:FERRYMAN_ADMIN_KEY"  # secret reference; unset: no admin API, no dashboard
    max_body_mb: float = Field(32.0, gt=0)  # JSON request bodies
    max_upload_mb: float = Field(512.0, gt=0)  # multipart uploads (files), as OpenAI allows
    max_header_kb: float = Field(64.0, gt=0)  # request line + headers of one request, else 431
    max_headers: int = Field(100, ge=1)  # headers in one request, else 431
    header_timeout_s: float = Field(10.0, gt=0)  # from a request's first byte to its last header, else 408
    max_concurrent_uploads: int = Field(4, ge=1)  # uploads read at once (each spooled to disk); more: 429
    # API collections virtual keys may reach although Ferryman does not isolate them between keys
    # ("assistants", "threads", "evals"): every key then sees every other's.
    pass_through: list[str] = Field(default_factory=list)
    drain_s: float = Field(30.0, ge=0)  # on shutdown, open streams get this long to finish
    key_cache_s: float = Field(0.5, ge=0)  # a revoked key stops on every instance within this
    access_log: bool = True  # one JSON line per request on stderr (no secrets, no query values)
    workers: int = Field(1, ge=1)


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("FERRYMAN_DATA_DIR") or user_data_dir("ferryman", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FERRYMAN_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file="ferryman.toml",
    )

    deployments: list[DeploymentSettings] = Field(default_factory=list)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    pacing: PacingSettings = Field(default_factory=PacingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    budgets: list[BudgetRule] = Field(default_factory=list)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    pricing_file: Path | None = None  # overrides for data/prices.json (same format)
    # True when no deployments were set and ``deployments`` is the one built from OPENAI_BASE_URL
    # (see ``deployments_configured``); set by ``_defaults_and_sharing``, kept by ``model_copy``.
    _implicit_deployments: bool = PrivateAttr(default=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        check_config_file()
        path, _ = config_file()
        return (init_settings, env_settings, _TomlSource(settings_cls, toml_file=path))

    def __init__(self, **values: Any) -> None:
        """Every failure is one :class:`SettingsError` line; unknown ``FERRYMAN_*`` variables
        (pydantic-settings ignores them) are refused once the settings are known, since a
        variable named by one of their ``env:NAME`` references is not a typo."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise from_validation(error, type(self), values) from None
        except SourceError as error:
            raise from_source_error(error, type(self)) from None
        check_environment(self)

    @model_validator(mode="after")
    def _defaults_and_sharing(self) -> Settings:
        if not self.deployments:
            self.deployments = [
                DeploymentSettings(
                    name="default",
                    base_url=os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL,
                    api_keys=["env:OPENAI_API_KEY"],
                )
            ]
            self._implicit_deployments = True
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise KeyedError(("deployments",), f"deployment names must be unique, got {names}")
        if self.store.shared:
            shared = ("store", "shared")  # the errors name where store.shared was set
            url = self.store.url or ""
            if not url or url.startswith("sqlite"):
                raise KeyedError(shared, "store.shared needs a shared database: set store.url to a PostgreSQL URL")
            if not self.store.redis_url:
                raise KeyedError(shared, "store.shared needs Redis for limits, budgets and cache: set store.redis_url")
            if self.audit.enabled and not self.audit.checkpoint_key:
                raise KeyedError(
                    shared,
                    "store.shared needs one audit.checkpoint_key for every process (a secret reference such as "
                    "env:FERRYMAN_AUDIT_KEY): each host's own key file would make the shared chain unverifiable",
                )
        return self

    @property
    def deployments_configured(self) -> bool:
        """False when no deployments were set (file, environment or keywords) and the one
        deployment is the implicit ``default``: ``OPENAI_BASE_URL`` (else OpenAI's) with
        ``OPENAI_API_KEY``. Replacing ``deployments`` afterwards does not change it."""
        return not self._implicit_deployments

    def database_url(self) -> str:
        if self.store.url:
            return self.store.url
        from ferryman.files import private_dir

        # The default data directory is Ferryman's own: tightened to 0700 even if an older
        # version made it 0755. One named by FERRYMAN_DATA_DIR keeps its mode if it exists.
        directory = private_dir(default_data_dir(), tighten=not os.environ.get("FERRYMAN_DATA_DIR"))
        return f"sqlite:///{directory / 'ferryman.db'}"


class _TomlSource(TomlConfigSettingsSource):
    """The settings file, whose syntax errors name the file, the line and the column."""

    def _read_file(self, file_path: Path | Any) -> dict[str, Any]:
        return read_toml(Path(file_path), str(self.toml_file_path))


def load(**overrides: Any) -> Settings:
    """Settings from the file and environment, with keyword overrides on top.

    Raises :class:`SettingsError` (one line: source, key, problem, nearest valid name)."""
    return Settings(**overrides)
