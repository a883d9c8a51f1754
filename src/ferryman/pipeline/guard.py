"""The guard stage: requests that must not go anywhere are refused here, inside audit and
telemetry, so that every refusal is recorded like a call.

A front door that could not make a request canonical (a path with dot segments or encoded
separators, a query that would split the request line: :mod:`ferryman.apipath`; headers over the
gateway's limits) leaves the reason on ``exchange.refusal``; this stage answers it in OpenAI's
error shape, and nothing inside it (ownership, budgets, routing, the upstream) ever sees the
request.
"""

from __future__ import annotations

from typing import Any

from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.chain import Handler


def refusal_reply(exchange: Exchange, status: int, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    """The one way a front-door stage answers a refusal: marked as Ferryman's own (never retried
    or counted as the upstream's), its code kept on the exchange for the records."""
    exchange.notes[FERRYMAN_MADE] = True
    error = body.get("error") if isinstance(body, dict) else None
    exchange.error = exchange.error or (error.get("code") if isinstance(error, dict) else None) or "refused"
    return Reply.of_json(status, body, headers)


class Guard:
    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Guard:
        return cls()

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        refusal = exchange.refusal
        if refusal is not None:
            return refusal_reply(exchange, refusal.status, refusal.body(), dict(refusal.headers))
        return await call_next(exchange)
