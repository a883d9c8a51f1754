"""Ferryman: make any application's use of the OpenAI API production-grade.

import openai, ferryman
client = openai.OpenAI(http_client=ferryman.http_client())   # settings: ferryman.toml, FERRYMAN_*
aclient = openai.AsyncOpenAI(http_client=ferryman.async_http_client())
client = ferryman.OpenAI()   # the same, with the SDK's own retries off
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import httpx2
    import openai


def http_client(**overrides: Any) -> httpx2.Client:
    """An ``httpx2.Client`` whose transport runs the pipeline (for ``openai.OpenAI``)."""
    import httpx2

    from ferryman import pipeline
    from ferryman.transport import FerrymanTransport

    timeout = overrides.pop("timeout", httpx2.Timeout(600.0, connect=5.0))
    return httpx2.Client(transport=FerrymanTransport(pipeline.build(**overrides)), timeout=timeout)


# ``overrides`` are keyword overrides of ferryman.config.Settings, or ``settings=`` a Settings.


def async_http_client(**overrides: Any) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose transport runs the pipeline (for ``openai.AsyncOpenAI``)."""
    import httpx2

    from ferryman import pipeline
    from ferryman.transport import AsyncFerrymanTransport

    timeout = overrides.pop("timeout", httpx2.Timeout(600.0, connect=5.0))
    return httpx2.AsyncClient(transport=AsyncFerrymanTransport(pipeline.build(**overrides)), timeout=timeout)


def OpenAI(**kwargs: Any) -> openai.OpenAI:
    """``openai.OpenAI`` through Ferryman, with the SDK's own retries off (Ferryman retries).

    Keyword arguments go to ``openai.OpenAI``, except ``ferryman=`` (a dict of setting
    overrides for the pipeline)."""
    import openai

    overrides = kwargs.pop("ferryman", {}) or {}
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("api_key", kwargs.get("api_key") or _env_key())
    return openai.OpenAI(http_client=http_client(**overrides), **kwargs)


def AsyncOpenAI(**kwargs: Any) -> openai.AsyncOpenAI:
    import openai

    overrides = kwargs.pop("ferryman", {}) or {}
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("api_key", kwargs.get("api_key") or _env_key())
    return openai.AsyncOpenAI(http_client=async_http_client(**overrides), **kwargs)


def _env_key() -> str:
    import os

    # The SDK insists on a key; the deployments hold the real ones, so a placeholder will do.
    return os.environ.get("OPENAI_API_KEY") or "ferryman-managed"
