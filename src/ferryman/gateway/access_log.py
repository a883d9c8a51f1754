"""The gateway's access log: one JSON line per request on the ``ferryman.access`` logger.

A line holds the method, the path, the names of the query parameters (never their values: a
query string can carry a key), the status, the duration, the virtual key's id (never the key),
the model, the upstream's request id, cost and cache outcome. A key a caller put in the path,
the model or a parameter's name is removed here already; lines then go through
:mod:`ferryman.logs`, whose filter removes anything shaped like a key or bearer token.

Every field a caller can shape is bounded: the path, the model, each query parameter name, the
error and the request id are cut to :data:`FIELD_MAX` characters (a cut one ends in ``…``), and
at most :data:`QUERY_NAMES_MAX` query names are listed (then ``…``), so a line stays small
whatever was sent. Redaction reads a window of :data:`REDACT_WINDOW` characters before the cut
(a long value costs no regex time over all of it, and a key across the cut is still found whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from ferryman.exchange import Exchange
from ferryman.redact import secrets

log = logging.getLogger("ferryman.access")

FIELD_MAX = 256  # characters of the path, model, a query name, the error, the request id
QUERY_NAMES_MAX = 32  # query parameter names listed
QUERY_MAX = 16 * 1024  # bytes of the query string read for its names
REDACT_WINDOW = 4 * FIELD_MAX  # characters redacted before the cut
MARK = "…"


def clip(value: str, size: int = FIELD_MAX) -> str:
    """``value`` redacted and cut to ``size`` characters, a cut one ending in ``…``."""
    window = max(size, REDACT_WINDOW)
    text = secrets(value[:window])
    return text if len(text) <= size and len(value) <= window else text[: size - 1] + MARK


def query_names(query: bytes | str) -> list[str]:
    """The parameter names, sorted, each redacted and clipped; at most ``QUERY_NAMES_MAX`` (then ``…``)."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    names = sorted({clip(name) for name, _ in parse_qsl(text[:QUERY_MAX], keep_blank_values=True)})
    if len(names) > QUERY_NAMES_MAX or len(text) > QUERY_MAX:
        return [*names[:QUERY_NAMES_MAX], MARK]
    return names


class AccessLog:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def write(
        self,
        method: str,
        path: str,
        status: int,
        started: float,
        key_id: str,
        exchange: Exchange | None,
        scope: MutableMapping[str, Any],
    ) -> None:
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        path = clip("/v1" + path)  # redacted: a key pasted where an id goes is never logged, filter or not
        method = clip(method, 32)
        extra: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "key_id": key_id,
        }
        query = scope.get("query_string", b"")
        if query:
            extra["query_params"] = query_names(query)
        client = scope.get("client")
        if client:
            extra["client"] = client[0]
        if exchange is not None:
            model = exchange.model
            extra["model"] = clip(model) if isinstance(model, str) and model else model
            request_id = exchange.request_id
            extra["request_id"] = clip(request_id) if isinstance(request_id, str) else request_id
            extra["cache"] = exchange.cache
            if exchange.cost_usd is not None:
                extra["cost_usd"] = format(exchange.cost_usd, "f")
            if exchange.error:
                extra["error"] = clip(str(exchange.error))
        log.info("%s %s %s", method, path, status, extra=extra)
