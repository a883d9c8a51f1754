"""Fault injection: one small grammar for the ``x-ferryman-fault`` header and ``--fault`` rules.

A fault is a ``;``-separated list of ``key=value`` pairs (``,`` also separates)::

    status=503;retry_after_ms=200          an OpenAI-format error with that status
    status=429;code=insufficient_quota     ... with a chosen code (type follows from it)
    delay_ms=300                           wait before answering
    ttft_ms=500;chunk_delay_ms=20          stream timing: before the first chunk, between chunks
    cut_after=3                            close the stream after 3 chunks, no [DONE]
    error_after=3                          send an error event after 3 chunks, then end
    reset                                  reset the connection without answering

Keys that select when a ``--fault`` rule applies (ignored in the header)::

    path=/v1/chat/*     glob on the request path
    model=gpt-4o*       glob on the request's model
    p=0.05              probability per matching request (default 1)
    times=3             apply to the first 3 matching requests only

Other error keys: ``type``, ``code``, ``message``, ``param``, ``retry_after`` (seconds),
``should_retry=true|false`` (the ``x-should-retry`` header).
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass, field, fields, replace

from ferryman.errors import OpenAIError, invalid_request

_DEFAULT_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "server_error",
}
_DEFAULT_CODE = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
_INT_KEYS = {"status", "cut_after", "error_after", "times"}
_FLOAT_KEYS = {"delay_ms", "ttft_ms", "chunk_delay_ms", "retry_after_ms", "retry_after", "p"}
_STR_KEYS = {"type", "code", "message", "param", "path", "model", "should_retry"}


@dataclass(frozen=True)
class Fault:
    """What to do to one request. Empty fields do nothing."""

    status: int | None = None
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    retry_after_ms: float | None = None
    retry_after: float | None = None
    should_retry: str | None = None
    delay_ms: float = 0.0
    ttft_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    cut_after: int | None = None
    error_after: int | None = None
    reset: bool = False

    @property
    def is_empty(self) -> bool:
        return self == Fault()

    def merged(self, other: Fault) -> Fault:
        """``other``'s settings win where it has any."""
        empty = Fault()
        changes = {
            f.name: getattr(other, f.name) for f in fields(self) if getattr(other, f.name) != getattr(empty, f.name)
        }
        return replace(self, **changes)

    def error(self) -> OpenAIError | None:
        if self.status is None or self.status < 400:
            return None
        status = self.status
        code = self.code if self.code is not None else _DEFAULT_CODE.get(status)
        kind = self.type or ("insufficient_quota" if code == "insufficient_quota" else None)
        kind = kind or _DEFAULT_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
        message = self.message or _default_message(status, code)
        headers: dict[str, str] = {}
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = _num(self.retry_after_ms)
            headers.setdefault("retry-after", _num(max(self.retry_after_ms / 1000, 0)))
        if self.retry_after is not None:
            headers["retry-after"] = _num(self.retry_after)
        if self.should_retry is not None:
            headers["x-should-retry"] = self.should_retry
        return OpenAIError(status, message, kind, self.param, code, headers)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _default_message(status: int, code: str | None) -> str:
    if code == "insufficient_quota":
        return "You exceeded your current quota, please check your plan and billing details."
    if status == 429:
        return "Rate limit reached (injected by ferryman mock)."
    if status >= 500:
        return "The server had an error while processing your request. Sorry about that! (injected)"
    return f"Injected error with status {status}."


@dataclass
class FaultRule:
    """A fault with the conditions under which it applies (``--fault`` and the control API)."""

    fault: Fault
    spec: str = ""
    path: str | None = None
    model: str | None = None
    p: float = 1.0
    times: int | None = None
    applied: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, path: str, model: str | None, rng: random.Random) -> bool:
        """Whether this rule fires for a request; counts it against ``times`` if it does."""
        if self.path and not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.model and not (model and fnmatch.fnmatchcase(model, self.model)):
            return False
        with self._lock:
            if self.times is not None and self.applied >= self.times:
                return False
            if self.p < 1.0 and rng.random() >= self.p:
                return False
            self.applied += 1
        return True


def _pairs(spec: str) -> list[tuple[str, str]]:
    out = []
    for part in spec.replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        out.append((key, value.strip() if sep else "true"))
    return out


def parse_rule(spec: str) -> FaultRule:
    """Parse ``key=value;…``; raise :class:`OpenAIError` (400) naming a bad key or value."""
    fault_args: dict[str, object] = {}
    rule_args: dict[str, object] = {}
    for key, value in _pairs(spec):
        try:
            if key == "reset":
                fault_args["reset"] = value.lower() not in ("0", "false", "no")
            elif key in ("path", "model"):
                rule_args[key] = value
            elif key in ("p", "probability"):
                p = float(value)
                if not 0.0 <= p <= 1.0:
                    raise ValueError
                rule_args["p"] = p
            elif key == "times":
                rule_args["times"] = int(value)
            elif key in _INT_KEYS:
                fault_args[key] = int(value)
            elif key in _FLOAT_KEYS:
                number = float(value)
                if number < 0:
                    raise ValueError
                fault_args[key] = number
            elif key in _STR_KEYS:
                fault_args[key] = value
            else:
                raise invalid_request(f"Unknown fault key {key!r} in {spec!r}.", "x-ferryman-fault")
        except ValueError:
            raise invalid_request(f"Bad value {value!r} for fault key {key!r}.", "x-ferryman-fault") from None
    status = fault_args.get("status")
    if isinstance(status, int) and not 100 <= status <= 599:
        raise invalid_request(f"Fault status must be 100-599, not {status}.", "x-ferryman-fault")
    return FaultRule(fault=Fault(**fault_args), spec=spec, **rule_args)  # type: ignore[arg-type]


def parse_fault(spec: str) -> Fault:
    return parse_rule(spec).fault
