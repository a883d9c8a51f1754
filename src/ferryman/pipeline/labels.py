"""Metric label values, each from a bounded set, whatever callers send.

A label never carries a key, a key id, a team, a tag or a fine-tune suffix, and every label has
few values however many models, paths or tags callers invent: endpoints are the API's own
templates (else ``other``), models are the configured, shipped or priced names (a fine-tuned
model is labelled by its base, else ``other``), deployments the configured ones, statuses the
HTTP codes, budget scopes their kind. The telemetry stage (:mod:`ferryman.pipeline.telemetry`)
labels its series with these.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from ferryman import catalogue
from ferryman.exchange import Exchange
from ferryman.redact import secrets

log = logging.getLogger("ferryman.telemetry")

LABEL_MAX = 96
MODEL_MAX = 256  # a longer model name is ``other`` at once (no real model is that long; never cached)
PATH_MAX = 256  # longer paths are labelled without the cache
SCOPE_REFUSAL = re.compile(r"budget exceeded for scope '([^']{1,200})'")  # the budget stage's refusal message
_SCOPE_KINDS = frozenset({"process", "key", "team", "tag"})
_STATUSES = {str(n): str(n) for n in (*range(100, 600), "error", "cancelled")}


# -- label values -------------------------------------------------------------------------------

# The API's endpoints as label templates ({id} stands for any id in the path).
_ENDPOINTS = frozenset(
    """
    /chat/completions /chat/completions/{id} /chat/completions/{id}/messages /completions /embeddings
    /moderations /responses /responses/{id} /responses/{id}/input_items /responses/{id}/cancel
    /responses/input_tokens /responses/compact /models /models/{id} /files /files/{id} /files/{id}/content
    /batches /batches/{id} /batches/{id}/cancel /fine_tuning/jobs /fine_tuning/jobs/{id}
    /fine_tuning/jobs/{id}/cancel /fine_tuning/jobs/{id}/events /fine_tuning/jobs/{id}/checkpoints
    /fine_tuning/jobs/{id}/pause /fine_tuning/jobs/{id}/resume /audio/speech /audio/transcriptions
    /audio/translations /images/generations /images/edits /images/variations /uploads /uploads/{id}/parts
    /uploads/{id}/complete /uploads/{id}/cancel /conversations /conversations/{id}
    /conversations/{id}/items /conversations/{id}/items/{id} /vector_stores /vector_stores/{id}
    """.split()  # noqa: SIM905 - a list of 45 quoted paths reads worse
)
_WORDS = frozenset(w for e in _ENDPOINTS for w in e.split("/") if w and w != "{id}")
_FIRST = frozenset(e.split("/")[1] for e in _ENDPOINTS)


def endpoint_label(path: str) -> str:
    """``/files/file-abc/content`` → ``/files/{id}/content``; other paths → ``/{resource}/…`` or ``other``."""
    return _endpoint_label(path) if len(path) <= PATH_MAX else _endpoint_label.__wrapped__(path)


@lru_cache(maxsize=1024)
def _endpoint_label(path: str) -> str:
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    template = "/" + "/".join(p if p in _WORDS else "{id}" for p in parts)
    if template in _ENDPOINTS:
        return template
    return f"/{parts[0]}/…" if parts and parts[0] in _FIRST else "other"


_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # a snapshot's date suffix, as the price table reads it
_GLOB = frozenset("*?[]")
NO_MODELS: frozenset[str] = frozenset()


def shipped_models() -> frozenset[str]:
    """The models of the shipped price table (``PriceTable.default()`` is built from these)."""
    return _shipped()


@lru_cache(maxsize=1)
def _shipped() -> frozenset[str]:
    return frozenset(catalogue.models())


def configured_models(settings: Any) -> frozenset[str]:
    """Model names the settings spell out: routing aliases and their targets, deployments'
    ``models`` entries that are not globs, their ``azure_deployments`` and the pricing file's."""
    names: set[str] = set()
    for alias, targets in settings.routing.aliases.items():
        names.add(alias)
        names.update(targets)
    for deployment in settings.deployments:
        names.update(m for m in deployment.models if not _GLOB.intersection(m))
        names.update(deployment.azure_deployments)
    path = getattr(settings, "pricing_file", None)
    if path:
        try:
            priced = orjson.loads(Path(path).read_bytes()).get("models")  # read once, when the stage is built
            names.update(str(m) for m in priced or ())
        except (OSError, orjson.JSONDecodeError, AttributeError, TypeError):
            pass  # the price table reports its own errors; labels just lack these names
    return frozenset(n for n in names if n and len(n) <= MODEL_MAX and secrets(n) == n)


def model_label(model: str | None, configured: frozenset[str] = NO_MODELS) -> str:
    """A known model's name (see the module's docstring), ``ft:BASE`` for a model fine-tuned from a
    known BASE, ``none`` without a model; anything else ``other``."""
    if not model:
        return "none"
    if len(model) > MODEL_MAX:
        return "other"
    return _model_label(model, configured)


@lru_cache(maxsize=4096)  # keys are at most MODEL_MAX characters: bounded memory
def _model_label(model: str, configured: frozenset[str]) -> str:
    if model.startswith("ft:"):  # ft:BASE:org:suffix:id: only BASE may show
        base = _known_model(model.split(":", 2)[1], configured)
        return f"ft:{base}" if base is not None else "other"
    return _known_model(model, configured) or "other"


def _known_model(model: str, configured: frozenset[str]) -> str | None:
    shipped = _shipped()
    if model in configured or model in shipped:
        return model
    family = _DATED.sub("", model)  # an unlisted snapshot: its family (else any date were a label)
    if family != model and (family in shipped or family in configured):
        return family
    return None


def deployment_label(exchange: Exchange, known: frozenset[str] | None = None) -> str:
    """The deployment's name if configured (``known``; None: any :class:`Deployment` Ferryman made),
    ``other`` if not, ``none`` before one was chosen."""
    name = getattr(exchange.deployment, "name", None)
    if not name:
        return "none"
    if known is not None:
        return name if name in known else "other"
    return str(name)[:LABEL_MAX]


def status_label(status: int | str) -> str:
    """An HTTP status 100-599, ``error`` (no reply) or ``cancelled``; anything else ``other``."""
    return _STATUSES.get(str(status), "other")


def scope_label(scope: Any) -> str:
    """A budget counter's kind (``key:ID`` → ``key``, ``tag:team=a`` → ``tag``), never its name."""
    kind = str(scope).partition(":")[0]
    return kind if kind in _SCOPE_KINDS else "other"
