"""The caller-limits stage: requests and tokens per minute per virtual key and per team.

A caller (``Principal.rates``: the gateway's virtual key and its team) may carry RPM and TPM
limits. Each is a pair of token buckets with a full minute's burst that refill continuously, the
same rules OpenAI applies to an organisation (:mod:`ferryman.pipeline.buckets`, with no reserve).
A call costs one request and its prompt tokens plus the output cap it asks for; it takes from
every bucket that applies or from none, and one that does not fit is refused at once with a 429
``rate_limit_exceeded`` in OpenAI's shape, with ``retry-after-ms`` / ``retry-after`` and
``x-ratelimit-*`` headers describing the caller's own limit. Unlike pacing (which waits for an
upstream's capacity), this is a limit the gateway sets, so callers hear about it and back off
as they would from OpenAI.

When the reply reports its real usage the token estimate is settled (the unused part of the
output cap refunded). Buckets live in this process's memory, or in Redis (one Lua script per
step) when the store has it, so every gateway instance enforces the one limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from ferryman.exchange import FERRYMAN_MADE, Exchange, Rate, Reply
from ferryman.pipeline.buckets import Buckets, Cost, MemoryBuckets, RedisBuckets, Seed
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.pacing import cost_of, is_paced, usage_tokens

log = logging.getLogger("ferryman.limits")


class CallerLimits:
    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> CallerLimits | None:
        if not parts.get("principals"):
            return None
        store = parts.get("store")
        redis = store.redis() if store is not None else None
        if store is not None and redis is not None:
            return cls(RedisBuckets(redis, store.redis_prefix + "limits:", exact=True))
        return cls(MemoryBuckets(exact=True))

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        rates = [r for r in exchange.principal.rates if r.rpm or r.tpm]
        if not rates:
            return await call_next(exchange)
        paced = is_paced(exchange)
        cost = cost_of(exchange) if paced else Cost(1.0, 0.0)
        taken: list[Rate] = []
        for rate in rates:
            seed = Seed(rate.rpm, rate.tpm)
            try:
                wait = await self.buckets.take(rate.scope, cost, seed)
            except Exception:  # the shared store is down: serve rather than refuse everyone
                log.warning("caller limits unavailable for %s; the call goes unlimited", rate.scope, exc_info=True)
                continue
            if wait:
                await self._give_back(taken, cost)
                return self._refusal(exchange, rate, cost, wait)
            taken.append(rate)
        reply = await call_next(exchange)
        if paced and cost.tokens and taken:
            self._settle_later(exchange, reply, taken, cost)
        return reply

    async def _give_back(self, taken: list[Rate], cost: Cost) -> None:
        """All or none: what earlier buckets gave this refused call goes back (tokens; a request
        slot once given is spent, as a refused call still counts as one at OpenAI)."""
        for rate in taken:
            if cost.tokens:
                try:
                    await self.buckets.adjust(rate.scope, cost.tokens, Seed(rate.rpm, rate.tpm))
                except Exception:
                    log.warning("caller limits could not refund %s", rate.scope, exc_info=True)

    def _settle_later(self, exchange: Exchange, reply: Reply, taken: list[Rate], cost: Cost) -> None:
        async def settle() -> None:
            used = usage_tokens(exchange.usage)
            if used is None or used >= cost.tokens:
                return
            for rate in taken:
                if rate.tpm:
                    try:
                        await self.buckets.adjust(rate.scope, cost.tokens - used, Seed(rate.rpm, rate.tpm))
                    except Exception:
                        log.warning("caller limits could not settle %s", rate.scope, exc_info=True)

        if reply.is_stream:
            loop = asyncio.get_running_loop()
            reply.on_close.append(lambda: loop.call_soon_threadsafe(lambda: loop.create_task(settle())))
            return
        if reply.status < 400:
            asyncio.get_running_loop().create_task(settle())

    @staticmethod
    def _refusal(exchange: Exchange, rate: Rate, cost: Cost, wait: float) -> Reply:
        exchange.notes[FERRYMAN_MADE] = True
        exchange.error = "rate_limit_exceeded"
        whose = "team " + rate.scope[5:] if rate.scope.startswith("team:") else "this key"
        if math.isinf(wait):
            message = (
                f"Request too large for {whose}: it needs {cost.tokens:.0f} tokens (prompt plus max output), "
                f"more than its limit of {rate.tpm} tokens per minute. Reduce the input or max tokens."
            )
            headers = {"x-should-retry": "false"}
        else:
            limits = ", ".join(
                part for part in (f"{rate.rpm} requests" if rate.rpm else "", f"{rate.tpm} tokens" if rate.tpm else "")
                if part
            )  # fmt: skip
            message = (
                f"Rate limit reached for {whose} ({limits} per minute, set on the Ferryman gateway). "
                f"Please try again in {max(wait, 0.001):.3f}s."
            )
            headers = {"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(max(1, math.ceil(wait)))}
        if rate.rpm:
            headers["x-ratelimit-limit-requests"] = str(rate.rpm)
        if rate.tpm:
            headers["x-ratelimit-limit-tokens"] = str(rate.tpm)
        body = {"error": {"message": message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        return Reply.of_json(429, body, headers)
