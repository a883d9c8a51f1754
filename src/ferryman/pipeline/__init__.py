"""The pipeline: one chain of stages between a caller and the upstreams.

The order, outermost first (a stage sees everything inside it as one call)::

    telemetry   span, metrics, JSON log line
    audit       one hash-chained record per call, bodies redacted
    budget      reserve the worst case before, settle the real cost after
    cache       exact-match replies, streams replayed
    account     usage → cost; ask streams for usage and hide the extra chunk
    route       alias → deployments by weight and health; fallback; circuit breakers
    retry       backoff with full jitter, retry-after honoured, one deadline
    pacing      RPM/TPM buckets per (deployment, model): callers wait instead of getting 429s
    upstream    the HTTP call (ferryman.upstream)
"""

from __future__ import annotations

from typing import Any

import httpx2

from ferryman.config import Settings, load
from ferryman.pipeline.account import Account
from ferryman.pipeline.audit import Audit
from ferryman.pipeline.budget import Budget
from ferryman.pipeline.cache import Cache
from ferryman.pipeline.chain import Handler, Pipeline, Stage
from ferryman.pipeline.pacing import Pacing
from ferryman.pipeline.retry import Retry
from ferryman.pipeline.route import Route
from ferryman.pipeline.telemetry import Telemetry
from ferryman.store import Store, open_store
from ferryman.upstream import Upstream

ORDER = (Telemetry, Audit, Budget, Cache, Account, Route, Retry, Pacing)


def build(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> Pipeline:
    """The pipeline for ``settings`` (default: ferryman.toml and FERRYMAN_* variables)."""
    settings = settings or load(**overrides)
    store = store or open_store(settings)
    upstream = Upstream.from_settings(settings, transport)
    parts: dict[str, Any] = {"store": store, "upstream": upstream}
    stages = [stage for kind in ORDER if (stage := kind.from_settings(settings, **parts)) is not None]
    pipeline = Pipeline(stages, upstream)
    pipeline.settings = settings  # type: ignore[attr-defined]
    pipeline.store = store  # type: ignore[attr-defined]
    return pipeline


__all__ = ["ORDER", "Handler", "Pipeline", "Stage", "build"]
