"""The cache stage: exact-match replies for identical requests, streams replayed as streams.

A request is cacheable when it is a ``POST`` with a JSON body (never multipart) to one of
:data:`CACHEABLE_PATHS`, and, in ``deterministic`` mode, when it asks for a repeatable reply
(``temperature`` 0 or a ``seed``; embeddings and moderations always are). Its key is a sha256
over the method, path, sorted query, the principal's id (virtual keys never see each other's
replies), the request headers in :data:`KEY_HEADERS`, ``stream``, and the body as canonical
JSON (sorted keys, no whitespace, integral floats as integers) without the fields in
:data:`IGNORED_FIELDS`, which do not change the reply.

Per call, the ``ferryman-cache`` header (``exchange.cache_control``) says ``no-store`` (neither
read nor write) or ``refresh`` (skip the read, store the new reply). ``exchange.cache`` ends as
``hit``, ``miss``, ``refresh`` or ``bypass`` (not cacheable, or no-store).

Only 200 replies are stored, for ``ttl_s``, at most ``max_entries`` (expired, then oldest, go
first). A streamed reply is recorded event by event as it is forwarded and stored only when it
ended cleanly: its terminal event (``data: [DONE]``, ``response.completed`` or
``response.incomplete``) went out and no error event came; the SDK stops reading at
``[DONE]``, so a stream closed right after its terminal event counts as clean. A hit returns
the same status, headers (minus per-call ones, see :data:`DROPPED_REPLY_HEADERS`) and bytes —
a stream as the same events — with ``exchange.usage`` the cached usage, ``exchange.cost_usd``
0 and ``exchange.notes["cache_hit"] = True``; it never reaches the inner stages.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import orjson

from ferryman import sse
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.cache_backends import REDIS_PREFIX, Backend, Entry, RedisBackend, SQLBackend
from ferryman.pipeline.chain import Handler

log = logging.getLogger("ferryman.cache")

CACHEABLE_PATHS = frozenset({"/chat/completions", "/responses", "/completions", "/embeddings", "/moderations"})
ALWAYS_DETERMINISTIC = frozenset({"/embeddings", "/moderations"})

# Body fields left out of the key because they do not change the reply: end-user ids for abuse
# monitoring, prompt-cache routing hints, and tags/flags for stored completions. (A hit skips the
# upstream's side effects, such as storing a chat completion, whatever these fields say.) The
# Responses API echoes all of them in its reply object, so there only the obfuscation flag is
# dropped.
_NOT_ECHOED = ("user", "safety_identifier", "metadata", "store", "prompt_cache_key", "prompt_cache_retention")
IGNORED_FIELDS: dict[str, tuple[str, ...]] = {
    "/chat/completions": _NOT_ECHOED,
    "/completions": _NOT_ECHOED,
    "/embeddings": ("user",),
    "/moderations": (),
    "/responses": (),
}
# Nested fields dropped on every path: stream_options.include_obfuscation only pads chunks.
IGNORED_NESTED = (("stream_options", "include_obfuscation"),)
# Request headers that can change the reply (which organisation, project, beta features).
KEY_HEADERS = ("openai-organization", "openai-project", "openai-beta")
# Reply headers that describe one upstream call, not the reply: not stored, never replayed.
DROPPED_REPLY_HEADERS = frozenset(
    {"date", "age", "set-cookie", "content-length", "openai-processing-ms", "retry-after", "retry-after-ms"}
)
_DROPPED_PREFIXES = ("x-ratelimit-", "x-ferryman-")
MAX_ENTRY_BYTES = 16 * 1024 * 1024  # larger replies pass through unstored
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


class Cache:
    def __init__(self, settings: Any, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.mode: str = settings.mode
        self.ttl_s: float = settings.ttl_s
        self.max_entries: int = settings.max_entries
        self.backend = backend
        self.clock = clock  # unix seconds; tests move it to expire entries

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Cache | None:
        store = parts.get("store")
        if settings.cache.mode == "off" or store is None:
            return None
        redis = store.redis()
        backend: Backend = SQLBackend(store)
        if redis is not None:
            backend = RedisBackend(redis, store.redis_prefix + REDIS_PREFIX.removeprefix("ferryman:"))
        return cls(settings.cache, backend)

    # The decision and the key.

    def key(self, exchange: Exchange) -> str | None:
        """The cache key of a cacheable request under this mode, or None."""
        if exchange.method != "POST" or exchange.path not in CACHEABLE_PATHS:
            return None
        if "multipart" in exchange.headers.get("content-type", "") or not isinstance(exchange.json, dict):
            return None
        body: dict[str, Any] = exchange.json
        if exchange.path == "/responses" and (body.get("background") is True or body.get("conversation")):
            return None  # a queued reply, or a conversation the call must append to
        if self.mode == "deterministic" and not is_deterministic(exchange.path, body):
            return None
        return request_key(exchange)

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        key = None if exchange.cache_control == "no-store" else self.key(exchange)
        if key is None:
            exchange.cache = "bypass"
            return await call_next(exchange)
        exchange.notes["cache_key"] = key
        if exchange.cache_control == "refresh":
            exchange.cache = "refresh"
        else:
            entry = await self._get(key)
            if entry is not None:
                return self._hit(exchange, entry)
            exchange.cache = "miss"
        reply = await call_next(exchange)
        if reply.status != 200:
            return reply
        if reply.stream is not None:
            reply.stream = self._recorded(exchange, key, reply, reply.stream)
            return reply
        if len(reply.body) <= MAX_ENTRY_BYTES:
            await self._put(key, self._entry(exchange, reply, reply.body, False, exchange.usage or _usage_of(reply)))
        return reply

    # Hits.

    def _hit(self, exchange: Exchange, entry: Entry) -> Reply:
        exchange.cache = "hit"
        exchange.usage = dict(entry.usage) if entry.usage is not None else None
        exchange.cost_usd = Decimal(0)
        exchange.notes["cache_hit"] = True
        headers = dict(entry.headers)
        headers["age"] = str(max(0, int(self.clock() - entry.created)))
        if not entry.stream:
            return Reply(entry.status, headers, entry.body)
        exchange.first_byte_at = exchange.first_byte_at or time.perf_counter()
        return Reply(entry.status, headers, stream=_replay(entry.body))

    # Misses and refreshes: store what came back.

    async def _recorded(
        self, exchange: Exchange, key: str, reply: Reply, stream: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """Forward the stream as it comes, keeping a copy; store it once it has ended cleanly."""
        recording = _Recording()
        tapped = sse.tap(stream, recording.on_event, recording.on_end)
        try:
            async for chunk in tapped:
                yield chunk
        finally:
            # Close both ends now (not when collected) so every stage's on_end has run.
            await _aclose(tapped)
            await _aclose(stream)
            if recording.storable:
                usage = exchange.usage or recording.usage
                await self._put(key, self._entry(exchange, reply, b"".join(recording.parts), True, usage))

    def _entry(self, exchange: Exchange, reply: Reply, body: bytes, stream: bool, usage: Any) -> Entry:
        now = self.clock()
        headers = {
            name: value
            for name, value in reply.headers.items()
            if name not in DROPPED_REPLY_HEADERS and not name.startswith(_DROPPED_PREFIXES)
        }
        model = exchange.model
        return Entry(
            status=reply.status,
            headers=headers,
            body=body,
            stream=stream,
            model=model,
            created=now,
            expires=now + self.ttl_s,
            usage=usage if isinstance(usage, dict) else None,
        )

    # The backend, failing open: a cache that cannot answer is a miss, never a failed call.

    async def _get(self, key: str) -> Entry | None:
        try:
            return await self.backend.get(key, self.clock())
        except Exception:
            log.warning("cache read failed; treating it as a miss", exc_info=True)
            return None

    async def _put(self, key: str, entry: Entry) -> None:
        try:
            await self.backend.put(key, entry, self.max_entries, self.clock())
        except Exception:
            log.warning("cache write failed; the reply is not cached", exc_info=True)


def is_deterministic(path: str, body: dict[str, Any]) -> bool:
    if path in ALWAYS_DETERMINISTIC:
        return True
    temperature = body.get("temperature")
    is_zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    return is_zero or body.get("seed") is not None


def request_key(exchange: Exchange) -> str:
    material = {
        "v": 1,
        "method": exchange.method,
        "path": exchange.path,
        "query": "&".join(sorted(p for p in exchange.query.split("&") if p)),
        "principal": exchange.principal.id,
        "headers": key_headers(exchange),
        "stream": exchange.stream,
        "body": key_body(exchange),
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def key_headers(exchange: Exchange) -> dict[str, str]:
    """The request headers that can change the reply (:data:`KEY_HEADERS`) the call carries."""
    return {name: exchange.headers[name] for name in KEY_HEADERS if name in exchange.headers}


def key_body(exchange: Exchange) -> Any:
    """The JSON body as the key sees it: without what does not change the reply, in canonical form
    (also the audit's request fingerprint, :mod:`ferryman.pipeline.audit_advice`, so that what it
    calls duplicates are what this cache would serve)."""
    body = dict(exchange.json)
    for name in IGNORED_FIELDS.get(exchange.path, ()):
        body.pop(name, None)
    for outer, inner in IGNORED_NESTED:
        nested = body.get(outer)
        if isinstance(nested, dict) and inner in nested:
            nested = {k: v for k, v in nested.items() if k != inner}
            if nested:
                body[outer] = nested
            else:
                body.pop(outer)
    return _canonical(body)


def _canonical(value: Any) -> Any:
    """JSON values that mean the same get the same form: ``0.0`` and ``0`` alike."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _usage_of(reply: Reply) -> Any:
    body = reply.json()
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if usage is None and isinstance(body.get("response"), dict):
        usage = body["response"].get("usage")
    return usage


class _Recording:
    """What a stage sees of a stream while forwarding it, via ``sse.tap``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.terminal = False
        self.failed = False
        self.completed = False
        self.usage: dict[str, Any] | None = None

    def on_event(self, event: sse.SSEEvent) -> bytes:
        if not self.failed:
            self.size += len(event.raw)
            if self.size > MAX_ENTRY_BYTES:
                self.failed, self.parts = True, []
            else:
                self.parts.append(event.raw)
        if event.is_done:
            self.terminal = True
            return event.raw
        data = event.json()
        if not isinstance(data, dict):
            self.failed = self.failed or event.event == "error"
            return event.raw
        kind = data.get("type")
        if event.event == "error" or kind in ("error", "response.failed") or data.get("error"):
            self.failed = True  # a chat error chunk is {"error": {...}}; Responses sends type "error"
        elif kind in _TERMINAL_EVENTS:
            self.terminal = True
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
        elif isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        return event.raw

    def on_end(self, completed: bool) -> None:
        self.completed = completed

    @property
    def storable(self) -> bool:
        # Clean: the terminal event went out and nothing failed. A consumer that stops right
        # after the terminal event (the SDK does, at [DONE]) has lost nothing.
        return self.terminal and not self.failed


async def _replay(body: bytes) -> AsyncIterator[bytes]:
    decoder = sse.SSEDecoder()
    for event in decoder.feed(body):
        yield event.raw
    rest = decoder.flush()
    if rest:
        yield rest


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


__all__ = [
    "CACHEABLE_PATHS",
    "IGNORED_FIELDS",
    "Cache",
    "is_deterministic",
    "key_body",
    "key_headers",
    "request_key",
]
