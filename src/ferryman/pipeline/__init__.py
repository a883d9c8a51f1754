"""The pipeline: one chain of stages between a caller and the upstreams.

The order, outermost first (a stage sees everything inside it as one call)::

    telemetry   span, metrics, JSON log line
    audit       one hash-chained record per call, bodies redacted
    guard       refuses what a front door could not make canonical (paths, oversized headers)
    (gateway)   authenticate the key, intake (read and check the body), ownership of stored objects
    bounds      integers the stages compute with in range (max_tokens, n, …): else 400 invalid_value
    lifecycle   retiring models and APIs: Deprecation/Sunset headers, metric, log; retired: refuse or successor
    limits      the caller's own RPM/TPM
    budget      reserve the worst case before, settle the real cost after
    cache       exact-match replies, streams replayed
    account     usage → cost; ask streams for usage and hide the extra chunk
    route       alias → deployments by weight and health; fallback; circuit breakers
    retry       backoff with full jitter, retry-after honoured, one deadline
    pacing      RPM/TPM buckets per (deployment, model): callers wait instead of getting 429s
    upstream    the HTTP call (ferryman.upstream)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx2

from ferryman.config import Settings, default_data_dir, load
from ferryman.pipeline.account import Account
from ferryman.pipeline.audit import Audit
from ferryman.pipeline.bounds import Bounds
from ferryman.pipeline.budget import Budget
from ferryman.pipeline.cache import Cache
from ferryman.pipeline.chain import Handler, Pipeline, Stage
from ferryman.pipeline.guard import Guard
from ferryman.pipeline.lifecycle import ModelLifecycle
from ferryman.pipeline.limits import CallerLimits
from ferryman.pipeline.pacing import Pacing
from ferryman.pipeline.retry import Retry
from ferryman.pipeline.route import Route
from ferryman.pipeline.telemetry import Telemetry
from ferryman.store import Store, open_store
from ferryman.tokens import cache_in
from ferryman.upstream import Upstream

ORDER = (Telemetry, Audit, Guard, Bounds, ModelLifecycle, CallerLimits, Budget, Cache, Account, Route, Retry, Pacing)


def build(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    principals: bool = False,
    front: Sequence[Stage] = (),
    **overrides: Any,
) -> Pipeline:
    """The pipeline for ``settings`` (default: ferryman.toml and FERRYMAN_* variables).

    ``principals``: callers bring their own limits and budgets (the gateway's virtual keys), so
    the caller-limits and budget stages are on even with no rules in settings. ``front``: a front
    door's own stages (the gateway's authentication, intake and ownership checks) placed right
    inside the guard, so what they refuse is recorded too."""
    settings = settings or load(**overrides)
    store = store or open_store(settings)
    upstream = Upstream.from_settings(settings, transport)
    parts: dict[str, Any] = {"store": store, "upstream": upstream, "principals": principals}
    stages: list[Stage] = []
    for kind in ORDER:
        stage = kind.from_settings(settings, **parts)
        if stage is not None:
            stages.append(stage)
        if kind is Guard:
            stages.extend(front)
    pipeline = Pipeline(stages, upstream)
    pipeline.settings = settings  # type: ignore[attr-defined]
    pipeline.store = store  # type: ignore[attr-defined]
    cache_in(default_data_dir())  # the tokenizer's parsed ranks, for this start and the next
    return pipeline


__all__ = ["ORDER", "Handler", "Pipeline", "Stage", "build"]
