"""The gateway's access log: one JSON line per request on the ``ferryman.access`` logger.

A line holds the method, the path, the names of the query parameters (never their values: a
query string can carry a key), the status, the duration, the virtual key's id (never the key),
the model, the upstream's request id, cost and cache outcome. A key a caller put in the path,
the model or a parameter's name is removed here already; lines then go through
:mod:`ferryman.logs`, whose filter removes anything shaped like a key or bearer token.
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


def query_names(query: bytes | str) -> list[str]:
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    return sorted({name for name, _ in parse_qsl(text, keep_blank_values=True)})


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
        path = secrets("/v1" + path)  # a key pasted where an id goes: never logged, filter or not
        extra: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "key_id": key_id,
        }
        query = scope.get("query_string", b"")
        if query:
            extra["query_params"] = [secrets(name) for name in query_names(query)]
        client = scope.get("client")
        if client:
            extra["client"] = client[0]
        if exchange is not None:
            extra["model"] = secrets(exchange.model) if exchange.model else exchange.model
            extra["request_id"] = exchange.request_id
            extra["cache"] = exchange.cache
            if exchange.cost_usd is not None:
                extra["cost_usd"] = format(exchange.cost_usd, "f")
            if exchange.error:
                extra["error"] = exchange.error
        log.info("%s %s %s", method, path, status, extra=extra)
