"""Ferryman: make any application's use of the OpenAI API production-grade.

import openai, ferryman
client = openai.OpenAI(http_client=ferryman.http_client())   # settings: ferryman.toml, FERRYMAN_*
aclient = openai.AsyncOpenAI(http_client=ferryman.async_http_client())
client = ferryman.OpenAI()   # the same, with the SDK's own retries off
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import httpx2
    import openai


def http_client(base_url: str | httpx2.URL | None = None, **overrides: Any) -> httpx2.Client:
    """An ``httpx2.Client`` whose transport runs the pipeline (for ``openai.OpenAI``).

    ``base_url``: the SDK's base URL. With no deployments configured it is the upstream (its
    calls carry the SDK's own key); with deployments it must be one of theirs (``ValueError``)."""
    with _collector_paused():
        import httpx2

        from ferryman.transport import FerrymanTransport

        timeout = overrides.pop("timeout", httpx2.Timeout(600.0, connect=5.0))
        return httpx2.Client(transport=FerrymanTransport(_pipeline(base_url, overrides)), timeout=timeout)


# ``overrides`` are keyword overrides of ferryman.config.Settings, or ``settings=`` a Settings.


def async_http_client(base_url: str | httpx2.URL | None = None, **overrides: Any) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose transport runs the pipeline (for ``openai.AsyncOpenAI``);
    ``base_url`` as for :func:`http_client`."""
    with _collector_paused():
        import httpx2

        from ferryman.transport import AsyncFerrymanTransport

        timeout = overrides.pop("timeout", httpx2.Timeout(600.0, connect=5.0))
        return httpx2.AsyncClient(transport=AsyncFerrymanTransport(_pipeline(base_url, overrides)), timeout=timeout)


def OpenAI(**kwargs: Any) -> openai.OpenAI:
    """``openai.OpenAI`` through Ferryman, with the SDK's own retries off (Ferryman retries).

    Keyword arguments go to ``openai.OpenAI``, except ``ferryman=`` (a dict of setting
    overrides for the pipeline). ``base_url=`` goes to both: see :func:`http_client`."""
    with _collector_paused():
        import openai

        overrides = kwargs.pop("ferryman", {}) or {}
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", kwargs.get("api_key") or _env_key())
        http = http_client(kwargs.get("base_url"), **overrides)
        return openai.OpenAI(http_client=http, **kwargs)


def AsyncOpenAI(**kwargs: Any) -> openai.AsyncOpenAI:
    """``openai.AsyncOpenAI`` through Ferryman: as :func:`OpenAI`."""
    with _collector_paused():
        import openai

        overrides = kwargs.pop("ferryman", {}) or {}
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", kwargs.get("api_key") or _env_key())
        http = async_http_client(kwargs.get("base_url"), **overrides)
        return openai.AsyncOpenAI(http_client=http, **kwargs)


# Keywords of ``pipeline.build`` that are not settings overrides.
_BUILD_KEYWORDS = ("store", "transport", "principals", "front")


def _pipeline(base_url: str | httpx2.URL | None, overrides: dict[str, Any]) -> Any:
    """The pipeline for ``http_client(base_url, **overrides)``.

    With no deployments configured, an explicit ``base_url`` is the upstream: a deployment
    ``default`` with no keys of its own, so the SDK's authorization reaches it as the SDK sent it.
    With deployments, routing decides where calls go, and ``base_url`` must name one of them:
    a base URL that none has would otherwise be silently ignored."""
    from ferryman import pipeline

    if base_url is None:
        return pipeline.build(**overrides)
    from ferryman.config import DeploymentSettings, load
    from ferryman.transport import base_url_key

    build = {name: overrides.pop(name) for name in _BUILD_KEYWORDS if name in overrides}
    settings = overrides.pop("settings", None) or load(**overrides)
    wanted = str(base_url).rstrip("/")
    if settings.deployments_configured:
        if not any(base_url_key(d.base_url) == base_url_key(wanted) for d in settings.deployments):
            known = ", ".join(f"{d.name}: {d.base_url}" for d in settings.deployments)
            raise ValueError(
                f"base_url {wanted} is not one of the configured deployments ({known}); "
                "remove base_url (routing picks the deployment) or add it to [[deployments]]"
            )
    else:
        deployment = DeploymentSettings(name="default", base_url=wanted, api_keys=[])
        settings = settings.model_copy(update={"deployments": [deployment]})  # still implicit
    return pipeline.build(settings, **build)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a client is built: the first build imports the SDK,
    SQLAlchemy and the pipeline (tens of thousands of objects, none of them garbage), and each full
    collection the imports would set off walks every one of them again (a tenth of a second or
    more at a cold start). It is turned back on at once, if it was on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _env_key() -> str:
    import os

    # The SDK insists on a key; the deployments hold the real ones, so a placeholder will do.
    return os.environ.get("OPENAI_API_KEY") or "ferryman-managed"
