"""OpenTelemetry spans for the telemetry stage, with the GenAI semantic conventions.

Imported only when ``settings.telemetry.otel`` is on; OpenTelemetry itself is the optional extra
``ferryman[otel]`` and is imported lazily, so a missing package is a clear startup error
(:class:`TelemetryError`) rather than an ImportError on the first call.

One CLIENT span per call, named ``"{gen_ai.operation.name} {gen_ai.request.model}"`` (other API
calls: ``"{METHOD} {endpoint}"``), ended when the reply is complete (a stream: when it ends).
Attribute values never hold bodies, headers or secrets; exception messages are redacted.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import orjson

from ferryman.exchange import Exchange, Reply
from ferryman.redact import secrets
from ferryman.sse import SSEEvent

# gen_ai.operation.name by API path (chat completions and responses are both "chat").
_OPERATIONS = {
    "/chat/completions": "chat",
    "/responses": "chat",
    "/embeddings": "embeddings",
    "/completions": "text_completion",
}
_REQUEST_NUMBERS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}
_BODY_PARSE_LIMIT = 512 * 1024  # larger plain replies are not parsed for response attributes
_RESPONSE_EVENTS = (b'"response.created"', b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


class TelemetryError(RuntimeError):
    """Telemetry is configured in a way that cannot work (raised when the pipeline is built)."""


def operation(path: str) -> str | None:
    """The GenAI operation name of an API path, or None for the non-inference endpoints."""
    return _OPERATIONS.get(path)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clip(value: str, size: int = 256) -> str:
    return secrets(value)[:size]


class Tracing:
    """Starts and ends the spans; ``tracer`` is any OpenTelemetry tracer (tests pass their own)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer = tracer
        self._use_span = trace.use_span
        self._kind = SpanKind.CLIENT
        self._status, self._error = Status, StatusCode.ERROR

    @classmethod
    def create(cls, tracer: Any = None) -> Tracing:
        """With the global tracer provider's ``ferryman`` tracer unless ``tracer`` is given."""
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise TelemetryError(
                "telemetry.otel is on, but OpenTelemetry is not installed: pip install 'ferryman[otel]' "
                "(or set telemetry.otel = false)"
            ) from exc
        from ferryman import __version__

        return cls(tracer or trace.get_tracer("ferryman", __version__))

    def start(self, exchange: Exchange) -> Any:
        op = _OPERATIONS.get(exchange.path)
        model = _clip(exchange.model) if exchange.model else None
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "http.request.method": exchange.method,
        }
        if op is not None:
            name = f"{op} {model}" if model else op
            attributes["gen_ai.operation.name"] = op
        else:
            from ferryman.pipeline.telemetry import endpoint_label

            name = f"{exchange.method} {endpoint_label(exchange.path)}"
        if model:
            attributes["gen_ai.request.model"] = model
        body = exchange.json
        if isinstance(body, dict):
            cap = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
            if _number(cap):
                attributes["gen_ai.request.max_tokens"] = cap
            for field, attribute in _REQUEST_NUMBERS.items():
                if _number(body.get(field)):
                    attributes[attribute] = body[field]
            n = body.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and n != 1:
                attributes["gen_ai.request.choice.count"] = n
        if exchange.stream:
            attributes["ferryman.stream"] = True
        return self.tracer.start_span(name, kind=self._kind, attributes=attributes)

    def activate(self, span: Any) -> AbstractContextManager[Any]:
        """The span as the current one while the inner stages run (so HTTP client spans nest)."""
        cm: AbstractContextManager[Any] = self._use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        return cm

    def stream_event(self, info: dict[str, Any]) -> Callable[[SSEEvent], bytes]:
        """An ``on_event`` for :func:`ferryman.sse.tap` that notes the response id, model and finish
        reasons from the few events that carry them (others are not parsed)."""

        def on_event(event: SSEEvent) -> bytes:
            raw = event.raw
            if not info.get("seen") or b'"finish_reason":"' in raw or any(m in raw for m in _RESPONSE_EVENTS):
                data = event.json()
                if isinstance(data, dict):
                    info["seen"] = True
                    inner = data.get("response")
                    _note_response(info, inner if isinstance(inner, dict) else data)
            return raw

        return on_event

    def finish(
        self,
        span: Any,
        exchange: Exchange,
        reply: Reply | None,
        error: BaseException | None,
        completed: bool,
        stream_info: dict[str, Any] | None,
    ) -> None:
        from ferryman.pipeline.telemetry import token_counts

        try:
            info: dict[str, Any] = dict(stream_info or {})
            if reply is not None and _parsable(reply):
                try:
                    data = orjson.loads(reply.body)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict):
                    _note_response(info, data)
            attributes: dict[str, Any] = {}
            if info.get("model"):
                attributes["gen_ai.response.model"] = _clip(str(info["model"]))
            if info.get("id"):
                attributes["gen_ai.response.id"] = _clip(str(info["id"]), 128)
            if info.get("finish_reasons"):
                attributes["gen_ai.response.finish_reasons"] = tuple(info["finish_reasons"])
            if exchange.usage is not None:
                given, cached, produced, reasoning = token_counts(exchange.usage)
                attributes["gen_ai.usage.input_tokens"] = given
                attributes["gen_ai.usage.output_tokens"] = produced
                if cached:
                    attributes["gen_ai.usage.cache_read.input_tokens"] = cached
                if reasoning:
                    attributes["gen_ai.usage.reasoning.output_tokens"] = reasoning
            deployment = exchange.deployment
            base_url = getattr(getattr(deployment, "settings", None), "base_url", None)
            if base_url:
                parts = urlsplit(base_url)
                if parts.hostname:
                    attributes["server.address"] = parts.hostname
                port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
                if port:
                    attributes["server.port"] = port
            if deployment is not None:
                attributes["ferryman.deployment"] = str(getattr(deployment, "name", ""))
            attributes["ferryman.attempts"] = exchange.attempts
            attributes["ferryman.cache"] = exchange.cache
            if exchange.cost_usd is not None:
                attributes["ferryman.cost_usd"] = float(exchange.cost_usd)
            if exchange.stream:
                attributes["ferryman.stream.completed"] = completed
            if reply is not None:
                attributes["http.response.status_code"] = reply.status
            span.set_attributes(attributes)
            if error is not None:
                message = _clip(str(error), 1000)
                kind = type(error).__qualname__
                span.set_attribute("error.type", kind)
                span.add_event("exception", {"exception.type": kind, "exception.message": message})
                span.set_status(self._status(self._error, f"{kind}: {message}"[:200]))
            elif reply is not None and reply.status >= 400:
                error_type = _error_type(reply)
                span.set_attribute("error.type", error_type)
                span.set_status(self._status(self._error, error_type))
        finally:
            span.end()


def _parsable(reply: Reply) -> bool:
    return (
        reply.stream is None
        and 0 < len(reply.body) <= _BODY_PARSE_LIMIT
        and reply.status < 400
        and reply.headers.get("content-type", "").startswith("application/json")
    )


def _note_response(info: dict[str, Any], data: dict[str, Any]) -> None:
    if isinstance(data.get("id"), str) and "id" not in info:
        info["id"] = data["id"]
    if isinstance(data.get("model"), str) and "model" not in info:
        info["model"] = data["model"]
    reasons: list[str] = info.setdefault("finish_reasons", [])
    choices = data.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str) and len(reasons) < 16:
                reasons.append(reason)
    status = data.get("status")
    if data.get("object") == "response" and isinstance(status, str) and status != "in_progress":
        reasons[:] = [status]  # responses have no finish_reason; their final status stands in


def _error_type(reply: Reply) -> str:
    """The upstream's error code (``rate_limit_exceeded``), else its type, else the status."""
    try:
        error = orjson.loads(reply.body).get("error") if reply.body else None
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        for field in ("code", "type"):
            value = error.get(field)
            if isinstance(value, str) and value and len(value) <= 64:
                return secrets(value)
    return str(reply.status)
