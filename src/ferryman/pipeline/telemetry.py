"""The telemetry stage (outermost): Prometheus metrics, OpenTelemetry GenAI spans, JSON log lines.

It reads what the inner stages learned once the call is over (usage, cost, cache, attempts,
deployment, ``notes["retries"]`` / ``notes["upstream_429s"]``; anything missing counts 0) and, for
a stream, when the stream ends (the caller has seen its last byte, or stopped reading).

- **Prometheus** (``settings.telemetry.prometheus``): the metrics below live in :data:`REGISTRY`, a
  dedicated registry (the gateway serves it at ``/metrics``). Every label value comes from a
  bounded set fixed by the shipped price table and the settings, never from what a caller sent:

  - ``endpoint``: one of the API's path templates (``/files/{id}/content``), else
    ``/{resource}/…`` for a known resource, else ``other``;
  - ``model``: a model named in the settings (routing aliases and their targets, deployments'
    ``models`` entries that are plain names rather than globs, ``azure_deployments``, the
    ``pricing_file``) or in the shipped price table; a dated snapshot the table does not list
    (``gpt-4o-mini-2031-01-01``) counts as its family (``gpt-4o-mini``), one it lists keeps its
    name; a fine-tuned ``ft:BASE:org:suffix:id`` is ``ft:BASE`` when BASE is known (never the
    organisation, suffix or id); anything else ``other``; no model ``none``;
  - ``deployment``: a configured deployment's name, else ``other`` (none yet: ``none``);
  - ``status``: the HTTP status (100-599), ``error`` (no reply) or ``cancelled``;
  - ``scope`` (budget refusals): the kind of counter only, ``process``, ``key``, ``team``, ``tag``
    or ``other``: never a key id, team name or tag value;
  - ``kind`` (tokens): ``input``, ``cached``, ``output``, ``reasoning``.

  No key id, principal, tag or other caller-supplied string is ever a label.
- **OpenTelemetry** (``settings.telemetry.otel``, needs ``ferryman[otel]``): one CLIENT span per
  call, ``"{operation} {model}"``, with the GenAI semantic-convention attributes; a stream's span
  ends with the stream.
- **JSON logs** (``settings.telemetry.json_logs``): one INFO line per call on the
  ``ferryman.telemetry`` logger (see :mod:`ferryman.logs`), without bodies or headers.

Error replies pass through :func:`ferryman.redact.secrets_bytes` here, so an upstream that echoes a
key in an error message does not hand it to the caller's exception and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from ferryman._loop import abandoned
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.labels import (
    NO_MODELS,
    SCOPE_REFUSAL,
    configured_models,
    deployment_label,
    endpoint_label,
    model_label,
    scope_label,
    shipped_models,
    status_label,
)
from ferryman.pipeline.telemetry_otel import TelemetryError, Tracing, operation
from ferryman.redact import secrets, secrets_bytes

log = logging.getLogger("ferryman.telemetry")

REGISTRY = CollectorRegistry(auto_describe=True)
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_TTFT = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter(
    "ferryman_requests", "Calls through the pipeline, by final HTTP status ('error': no reply).",
    ("endpoint", "model", "deployment", "status"), registry=REGISTRY,
)  # fmt: skip
TOKENS = Counter(
    "ferryman_tokens", "Tokens billed, by kind: input (all prompt tokens), cached (of input), output, reasoning "
    "(of output).", ("model", "kind"), registry=REGISTRY,
)  # fmt: skip
COST = Counter("ferryman_cost_usd", "Cost of the calls in USD, from the price table.", ("model",), registry=REGISTRY)
DURATION = Histogram(
    "ferryman_request_duration_seconds", "Call duration as the caller saw it (a stream: until its end).",
    ("endpoint", "model"), buckets=_SECONDS, registry=REGISTRY,
)  # fmt: skip
TTFT = Histogram(
    "ferryman_time_to_first_token_seconds", "Streams: time until the first event reached the caller.",
    ("model",), buckets=_TTFT, registry=REGISTRY,
)  # fmt: skip
RETRIES = Counter("ferryman_retries", "Retries (attempts after the first).", ("deployment",), registry=REGISTRY)
UPSTREAM_429 = Counter("ferryman_upstream_429", "429 replies from upstreams.", ("deployment",), registry=REGISTRY)
CACHE_HITS = Counter("ferryman_cache_hits", "Calls answered from the cache.", registry=REGISTRY)
BUDGET_REFUSALS = Counter(
    "ferryman_budget_refusals", "Calls refused by a budget (429 budget_exceeded).", ("scope",), registry=REGISTRY
)
OVERHEAD = Histogram(
    "ferryman_overhead_seconds", "Time the pipeline itself took: until the reply, less upstream time and deliberate "
    "waits (backoff, pacing).", buckets=_OVERHEAD, registry=REGISTRY,
)  # fmt: skip

_CHILDREN_MAX = 8192
_children: dict[tuple[Any, ...], Any] = {}  # (metric, *labels) -> child: labels() is slow-ish


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = metric.labels(*labels)
        if len(_children) < _CHILDREN_MAX:  # labels are bounded; the cache is too, whatever they are
            _children[key] = child
    return child


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def token_counts(usage: Any) -> tuple[int, int, int, int]:
    """``(input, cached, output, reasoning)`` from a chat/completions or responses usage object."""
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    produced = usage.get("completion_tokens", usage.get("output_tokens"))
    inputs = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    outputs = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    cached = inputs.get("cached_tokens") if isinstance(inputs, dict) else 0
    reasoning = outputs.get("reasoning_tokens") if isinstance(outputs, dict) else 0
    return _count(given), _count(cached), _count(produced), _count(reasoning)


def _per_deployment(value: Any, default: str, known: frozenset[str] | None = None) -> dict[str, int]:
    """``notes["retries"]`` as a count (for the final deployment) or ``{deployment: count}`` (a name
    not configured, or without ``known`` not the final deployment's, counts as ``other``)."""
    if isinstance(value, dict):
        allowed = known if known is not None else frozenset({default})
        counts: dict[str, int] = {}
        for k, v in value.items():
            if _count(v):
                name = k if isinstance(k, str) and k in allowed else "other"
                counts[name] = counts.get(name, 0) + _count(v)
        return counts
    return {default: _count(value)} if _count(value) else {}


def _error_of(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


# -- the stage ----------------------------------------------------------------------------------


class Telemetry:
    def __init__(
        self,
        *,
        prometheus: bool = True,
        tracing: Tracing | None = None,
        json_logs: bool = False,
        models: frozenset[str] = NO_MODELS,
        deployments: frozenset[str] | None = None,
    ) -> None:
        """``models``: configured model names that may be labels besides the price table's;
        ``deployments``: the configured deployment names (None: any deployment Ferryman chose)."""
        self.prometheus = prometheus
        self.tracing = tracing
        self.json_logs = json_logs
        self.models = models
        self.deployments = deployments

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Telemetry | None:
        t = settings.telemetry
        if not (t.prometheus or t.otel or t.json_logs):
            return None
        tracing = Tracing.create() if t.otel else None  # TelemetryError when OpenTelemetry is missing
        if t.json_logs:
            from ferryman.logs import ensure_json_logging

            ensure_json_logging()
        return cls(
            prometheus=t.prometheus,
            tracing=tracing,
            json_logs=t.json_logs,
            models=configured_models(settings),
            deployments=frozenset(d.name for d in settings.deployments),
        )

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        span = self.tracing.start(exchange) if self.tracing is not None else None
        try:
            if span is not None and self.tracing is not None:
                with self.tracing.activate(span):
                    reply = await call_next(exchange)
            else:
                reply = await call_next(exchange)
        except BaseException as exc:
            self.record(exchange, None, span, error=exc)
            raise
        notes = exchange.notes
        waited_ms = _number(notes.get("upstream_ms")) + _number(notes.get("waited_ms"))
        overhead = max(0.0, time.perf_counter() - exchange.started - waited_ms / 1000)
        if reply.stream is None:
            if reply.status >= 400 and reply.body:
                reply.body = secrets_bytes(reply.body)
            self.record(exchange, reply, span, overhead=overhead)
            return reply
        watch = _StreamWatch(self, exchange, reply, span, overhead)
        reply.stream = watch.wrap(reply.stream)
        reply.on_close.append(watch.abandoned)
        return reply

    def record(
        self,
        exchange: Exchange,
        reply: Reply | None,
        span: Any,
        *,
        error: BaseException | None = None,
        overhead: float | None = None,
        first_at: float | None = None,
        completed: bool = True,
        stream_info: dict[str, Any] | None = None,
    ) -> None:
        """Everything about one finished call (a stream: once it ended)."""
        elapsed = time.perf_counter() - exchange.started
        if reply is not None:
            status = str(reply.status)
        else:
            status = "cancelled" if isinstance(error, asyncio.CancelledError) else "error"
        refusal = reply.body if reply is not None and reply.status == 429 and b"budget_exceeded" in reply.body else None
        try:  # telemetry never breaks a call
            try:
                if self.prometheus:
                    self._metrics(exchange, status, elapsed, overhead, first_at, refusal)
                if self.json_logs and log.isEnabledFor(logging.INFO):
                    self._log(exchange, status, elapsed, error, completed)
            finally:
                if span is not None and self.tracing is not None:
                    self.tracing.finish(span, exchange, reply, error, completed, stream_info)
        except Exception:
            log.warning("telemetry could not record %s %s", exchange.method, exchange.path, exc_info=True)

    def _metrics(
        self,
        exchange: Exchange,
        status: str,
        elapsed: float,
        overhead: float | None,
        first_at: float | None,
        refusal: bytes | None,
    ) -> None:
        endpoint = endpoint_label(exchange.path)
        model = model_label(exchange.model, self.models)
        deployment = deployment_label(exchange, self.deployments)
        _child(REQUESTS, endpoint, model, deployment, status_label(status)).inc()
        _child(DURATION, endpoint, model).observe(elapsed)
        if overhead is not None:
            OVERHEAD.observe(overhead)
        if first_at is not None:
            _child(TTFT, model).observe(max(0.0, first_at - exchange.started))
        if exchange.usage is not None:
            for kind, n in zip(("input", "cached", "output", "reasoning"), token_counts(exchange.usage), strict=True):
                if n:
                    _child(TOKENS, model, kind).inc(n)
        if exchange.cost_usd:
            _child(COST, model).inc(float(exchange.cost_usd))
        notes = exchange.notes
        if "retries" in notes:
            for name, n in _per_deployment(notes["retries"], deployment, self.deployments).items():
                _child(RETRIES, name).inc(n)
        if "upstream_429s" in notes:
            for name, n in _per_deployment(notes["upstream_429s"], deployment, self.deployments).items():
                _child(UPSTREAM_429, name).inc(n)
        if exchange.cache == "hit":
            CACHE_HITS.inc()
        if refusal is not None:
            error = _error_of(refusal)
            if error.get("code") == "budget_exceeded":
                said = SCOPE_REFUSAL.search(str(error.get("message", "")))
                scope = notes.get("budget_scope") or error.get("param") or (said.group(1) if said else "unknown")
                _child(BUDGET_REFUSALS, scope_label(scope)).inc()

    def _log(
        self, exchange: Exchange, status: str, elapsed: float, error: BaseException | None, completed: bool
    ) -> None:
        endpoint = endpoint_label(exchange.path)
        given, cached, produced, reasoning = token_counts(exchange.usage)
        fields: dict[str, Any] = {
            "request_id": exchange.request_id,
            "model": secrets(exchange.model)[:256] if exchange.model else None,
            "endpoint": endpoint,
            "status": int(status) if status.isdigit() else status,
            "attempts": exchange.attempts,
            "latency_ms": round(elapsed * 1000, 3),
            "cost_usd": float(exchange.cost_usd) if exchange.cost_usd is not None else None,
            "cache": exchange.cache,
            "tags": {k: secrets(v) for k, v in exchange.tags.items()},
            "deployment": deployment_label(exchange) if exchange.deployment is not None else None,
            "principal": exchange.principal.id,
            "input_tokens": given,
            "cached_tokens": cached,
            "output_tokens": produced,
            "reasoning_tokens": reasoning,
        }
        if exchange.stream:
            fields["stream"] = True
            fields["completed"] = completed
        if error is not None:
            fields["error"] = type(error).__name__
        log.info("%s %s %s", exchange.method, endpoint, status, extra=fields)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class _StreamWatch:
    """Times a stream's first chunk and records the call when the stream ends (once)."""

    __slots__ = ("done", "exchange", "first_at", "info", "overhead", "reply", "span", "stage")

    def __init__(self, stage: Telemetry, exchange: Exchange, reply: Reply, span: Any, overhead: float) -> None:
        self.stage, self.exchange, self.reply, self.span, self.overhead = stage, exchange, reply, span, overhead
        self.first_at: float | None = None
        self.done = False
        self.info: dict[str, Any] | None = {} if span is not None else None

    async def wrap(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        completed = False
        error: BaseException | None = None
        source = stream
        if self.info is not None and self.stage.tracing is not None:
            from ferryman.sse import tap

            source = tap(stream, self.stage.tracing.stream_event(self.info))
        last = b""
        try:
            async for chunk in source:
                if self.first_at is None:
                    self.first_at = time.perf_counter()
                last = chunk
                yield chunk
            completed = True
        except BaseException as exc:
            error = exc if not isinstance(exc, GeneratorExit) and not abandoned(exc) else None
            raise
        finally:
            if not completed:  # stopped early: let the inner stages see their stream end first
                for gen in {id(source): source, id(stream): stream}.values():
                    close = getattr(gen, "aclose", None)
                    if close is not None:
                        with contextlib.suppress(Exception):  # a broken stream; the call is recorded below
                            await close()
            # The SDK stops reading at ``data: [DONE]``: such a stream was whole, though closed early.
            self.finish(completed or last.rstrip().endswith(b"data: [DONE]"), error)

    def finish(self, completed: bool, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.stage.record(
            self.exchange,
            self.reply,
            self.span,
            error=error,
            overhead=self.overhead,
            first_at=self.first_at,
            completed=completed,
            stream_info=self.info,
        )

    def abandoned(self) -> None:
        """The reply was closed without its stream being read to the end (or at all)."""
        self.finish(False)


__all__ = [
    "BUDGET_REFUSALS",
    "CACHE_HITS",
    "COST",
    "DURATION",
    "OVERHEAD",
    "REGISTRY",
    "REQUESTS",
    "RETRIES",
    "TOKENS",
    "TTFT",
    "UPSTREAM_429",
    "Telemetry",
    "TelemetryError",
    "configured_models",
    "deployment_label",
    "endpoint_label",
    "model_label",
    "operation",
    "scope_label",
    "shipped_models",
    "status_label",
    "token_counts",
]
