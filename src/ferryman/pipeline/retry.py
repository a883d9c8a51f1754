"""The retry stage: backoff with full jitter, the server's advice honoured, one deadline.

Per call, up to ``retry.max_attempts`` attempts (the first included):

- a reply is **never** retried when it is a quota error (429 with type or code
  ``insufficient_quota``, or code ``credit_balance_exhausted``, ``*_spend_limit_exceeded``,
  ``organization_usage_limit_exceeded``): retrying cannot help, so it goes back at once;
- a ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) longer than
  ``retry.max_retry_after_s`` means "not soon": the error goes back, unretried;
- otherwise ``x-should-retry: true|false`` decides when present;
- otherwise 408, 409, 429 and ≥ 500 are retried, other statuses are not;
- transport failures (connect, read, write, timeouts, a broken protocol) are retried; when the
  attempts run out the last one is re-raised (the SDK turns it into ``APIConnectionError``).

The wait before a retry is exactly the server's ``retry-after-ms`` / ``retry-after`` when it
sent one, else full jitter: ``uniform(0, min(max_delay, base * 2**n))`` for the n-th retry. A
wait that would end past the call's deadline (``retry.deadline_s`` from the first attempt) is
not started: the last answer goes back instead.

A streamed reply is retried only until its first chunk: the stage pulls that chunk itself (a
failure there is still a retryable transport error) and hands on a stream that yields it and
then the rest. Once a byte has reached the caller nothing is retried.

Counters in ``exchange.notes``: ``retries``, ``upstream_429s``, ``retry_reasons`` and the waits in
``waited_ms``. Request headers are left alone.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import orjson

from ferryman.config import RetrySettings, Settings
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.chain import Handler

# Transport failures worth another attempt. Not: UnsupportedProtocol, ProxyError, LocalProtocolError
# (the request itself is wrong; sending it again fails the same way).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    httpx2.TimeoutException,
    httpx2.NetworkError,
    httpx2.RemoteProtocolError,
)
RETRYABLE_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "organization_usage_limit_exceeded"})


def backoff(retries_taken: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: ``uniform(0, min(max_s, base_s * 2**retries_taken))``."""
    ceiling = min(max_s, base_s * 2.0 ** min(retries_taken, 64))
    return rng.uniform(0.0, ceiling)


def retry_after_s(headers: dict[str, str], now: float | None = None) -> float | None:
    """The server's advised wait in seconds: ``retry-after-ms``, else ``retry-after`` as seconds
    or an HTTP date; None when absent or unreadable. Negative values count as 0."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, value) if math.isfinite(value) else None


def error_of(reply: Reply) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-format error body (empty when there is none)."""
    if not reply.body or b'"error"' not in reply.body:
        return {}
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def is_quota_error(reply: Reply) -> bool:
    """A 429 that retrying cannot fix: out of credit, a spend or usage limit reached."""
    if reply.status != 429:
        return False
    error = error_of(reply)
    code, kind = error.get("code"), error.get("type")
    if kind == "insufficient_quota" or code in QUOTA_CODES:
        return True
    return isinstance(code, str) and code.endswith("_spend_limit_exceeded")


def verdict(reply: Reply, max_retry_after_s: float) -> tuple[bool, float | None]:
    """Whether a reply may be retried, and the server's advised wait (None: use backoff)."""
    if reply.status < 400:
        return False, None
    if is_quota_error(reply):
        return False, None
    advised = retry_after_s(reply.headers)
    if advised is not None and advised > max_retry_after_s:
        return False, advised
    hint = reply.headers.get("x-should-retry", "").strip().lower()
    if hint in ("true", "false"):
        return hint == "true", advised
    return reply.status in RETRYABLE_STATUSES or reply.status >= 500, advised


class Retry:
    def __init__(
        self,
        settings: RetrySettings,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **parts: Any) -> Retry:
        return cls(settings.retry)

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        s = self.settings
        deadline = self.clock() + s.deadline_s
        notes = exchange.notes
        attempt = 0
        while True:
            attempt += 1
            exchange.attempts += 1
            try:
                reply = await call_next(exchange)
                if reply.status >= 400 and reply.is_stream:
                    await reply.aread()  # an error is small; its body decides
                reply = await _first_chunk_pulled(reply)
            except RETRYABLE_ERRORS as error:
                wait = backoff(attempt - 1, s.base_delay_s, s.max_delay_s, self.rng)
                if attempt >= s.max_attempts or self.clock() + wait > deadline:
                    raise
                _count(notes, type(error).__name__)
            else:
                if reply.status == 429 and not notes.get(FERRYMAN_MADE):
                    notes["upstream_429s"] = notes.get("upstream_429s", 0) + 1
                retry, advised = verdict(reply, s.max_retry_after_s)
                if not retry or attempt >= s.max_attempts:
                    return reply
                if advised is None or advised <= 0:
                    wait = backoff(attempt - 1, s.base_delay_s, s.max_delay_s, self.rng)
                else:
                    wait = advised
                if self.clock() + wait > deadline:
                    return reply
                _discard(reply)
                _count(notes, str(reply.status))
            notes["retries"] = notes.get("retries", 0) + 1
            if wait > 0:
                notes["waited_ms"] = notes.get("waited_ms", 0.0) + wait * 1000
                await self.sleep(wait)


def _count(notes: dict[str, Any], reason: str) -> None:
    notes.setdefault("retry_reasons", []).append(reason)


def _discard(reply: Reply) -> None:
    """A reply that will not reach the caller is finished with."""
    for callback in reply.on_close:
        callback()
    reply.on_close.clear()


async def _first_chunk_pulled(reply: Reply) -> Reply:
    """Pull a stream's first chunk here, where a failure may still be retried; the reply's
    stream then yields that chunk and the rest."""
    stream = reply.stream
    if stream is None or reply.status >= 400:
        return reply
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        reply.stream = _chained(None, iterator)
        return reply
    except BaseException:
        await _aclose(iterator)
        _discard(reply)
        raise
    reply.stream = _chained(first, iterator)
    return reply


async def _chained(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await _aclose(rest)


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
