"""The audit stage: one append-only, redacted, hash-chained record per call.

The record is written when the call is over: for a plain reply before it is returned, for a
stream when its last event has gone out (or it broke, or the caller left early), so the inner
stages (account, cache) have settled usage and cost by then. Refusals by inner stages are
replies like any other; a transport error raised from inside is recorded with status 599 and
re-raised. Rendering and redacting bodies, hashing and the insert take tens of µs for a small
record on SQLite and run on the loop then; large bodies, PostgreSQL and a busy database go to
the store's threads. See :mod:`ferryman.audit.chain` for the chain and :mod:`ferryman.audit.record`
for the bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from ferryman import redact
from ferryman._loop import abandoned
from ferryman.audit.chain import Appended, Chain
from ferryman.audit.keys import load_key
from ferryman.audit.record import (
    MAX_PARSE_BYTES,
    StreamRecorder,
    error_text,
    render_body,
    render_json,
    reply_error,
    usage_in,
)
from ferryman.errors import OpenAIError
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.account import FINISH_NOTE, parsed_reply
from ferryman.pipeline.chain import Handler
from ferryman.pricing import TokenCounts
from ferryman.sse import tap
from ferryman.store import Store

log = logging.getLogger("ferryman.audit")

TRANSPORT_ERROR_STATUS = 599
CANCELLED_STATUS = 499
# Records whose bodies are at most this big are rendered and written on the event loop (SQLite).
INLINE_BODY_BYTES = 16 * 1024


@dataclass
class _Call:
    """What the stage captured as the call went in, and learned as it came out."""

    exchange: Exchange
    ts: float  # wall-clock start, unix seconds
    status: int = 0
    reply: bytes = b""
    reply_type: str = ""
    stream: StreamRecorder | None = None
    completed: bool = True
    error: str | None = None
    done: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


class Audit:
    def __init__(self, store: Store, chain: Chain, bodies: str = "redacted") -> None:
        self.store = store
        self.chain = chain
        self.bodies = bodies
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = False
        self._checkpointing = False

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Audit | None:
        store: Store | None = parts.get("store")
        if not settings.audit.enabled or store is None:
            return None
        key = load_key(settings.audit.checkpoint_key, create=True)
        if not store.is_sqlite and not settings.audit.checkpoint_key:
            log.warning(
                "audit.checkpoint_key is not set: checkpoints are signed with %s, which other hosts sharing "
                "this database do not have; set audit.checkpoint_key to one secret reference on every host",
                key.source,
            )
        return cls(store, Chain(store.engine, key), settings.audit.bodies)

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        call = _Call(exchange, time.time())
        try:
            reply = await call_next(exchange)
        except asyncio.CancelledError:
            call.status, call.error = CANCELLED_STATUS, "cancelled before the reply"
            self._spawn(self._write(call))
            raise
        except OpenAIError as exc:  # a refusal raised rather than returned: the front door answers it
            call.status = exc.status
            call.error = reply_error(exc.status, exc.body(), self.bodies)
            await self._write(call)
            raise
        except Exception as exc:
            call.status = TRANSPORT_ERROR_STATUS
            call.error = error_text(f"{type(exc).__name__}: {exc}", self.bodies)
            await self._write(call)
            raise
        call.status = reply.status
        call.reply_type = reply.headers.get("content-type", "")
        if reply.stream is None:
            call.reply = reply.body
            await self._write(call)
            return reply
        call.stream = StreamRecorder(self.bodies)
        source = reply.stream
        reply.stream = self._watch(call, source)
        loop = asyncio.get_running_loop()

        def closed() -> None:
            """The reply is done with: record a stream that was never read to its end."""
            if call.done:  # the usual case: the stream's end (or its close) was recorded already
                return
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                self._spawn(self._closed_unread(call, source))
                return
            # The sync SDK closes from its own thread: wait for the record, as it waits for the close.
            with contextlib.suppress(Exception):  # the loop is gone, or the write failed (and was logged)
                asyncio.run_coroutine_threadsafe(self._closed_unread(call, source), loop).result(timeout=60)

        reply.on_close.append(closed)
        return reply

    async def _watch(self, call: _Call, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        assert call.stream is not None
        tapped = tap(source, call.stream.on_event)
        outcome: str | None = "stream abandoned by the caller"
        try:
            async for chunk in tapped:
                if call.stream.finished and not call.done:
                    # This chunk holds the stream's last event: the record is written before the
                    # caller can see it, so every stream a caller received whole has its record
                    # (even if the process dies right after).
                    await self._record_end(call)
                yield chunk
            outcome = None
        except GeneratorExit:
            raise
        except BaseException as exc:
            if not abandoned(exc):  # a sync reader's close stops the read-ahead with a cancellation
                outcome = f"stream broke: {type(exc).__name__}: {exc}"
            raise
        finally:
            if call.done:
                await _aclose(tapped)
                await _aclose(source)
            else:
                call.done = True
                await _aclose(tapped)
                await _aclose(source)
                # The SDK closes a stream once it has read chat's [DONE]: that stream is complete.
                call.completed = outcome is None or call.stream.finished
                if call.completed:
                    outcome = None
                call.error = call.stream.error or (error_text(outcome, self.bodies) if outcome else None)
                await self._write(call)

    async def _record_end(self, call: _Call) -> None:
        assert call.stream is not None
        call.done = True
        finish = call.exchange.notes.get(FINISH_NOTE)
        if callable(finish):  # the account stage settles usage and cost now, not at the close
            finish()
        call.completed = True
        call.error = call.stream.error
        await self._write(call)

    async def _closed_unread(self, call: _Call, source: AsyncIterator[bytes]) -> None:
        """The reply was closed before its stream was read to the end (or at all)."""
        if call.done:
            return
        call.done = True
        call.completed = False
        call.error = "stream closed before it was read"
        await _aclose(source)
        await self._write(call)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, call: _Call) -> None:
        call.done = True
        ex = call.exchange
        ttft = (call.stream.first_at or ex.first_byte_at) if call.stream is not None else None
        call.fields = {
            "ts": call.ts,
            "request_id": _cut(ex.request_id, 64),
            "principal": _cut(ex.principal.id, 128) or "unknown",
            "upstream": _cut(getattr(ex.deployment, "name", None), 128),
            "model": _cut(ex.model, 128),
            "endpoint": _cut(ex.path, 128) or "/",
            "status": call.status,
            "attempts": ex.attempts or (1 if ex.deployment is not None else 0),
            "latency_ms": ex.elapsed_ms,
            "ttft_ms": (ttft - ex.started) * 1000 if ttft is not None else None,
            "cost_usd": ex.cost_usd if ex.cost_usd is not None else Decimal(0),
            "cache": ex.cache,
            "tags": {k: redact.secrets(v) for k, v in ex.tags.items()},
            "error": call.error or (error_text(ex.error, self.bodies) if ex.error else None),
        }
        usage = ex.usage or (call.stream.usage if call.stream is not None else None)
        try:
            appended = await self._append(call, usage)
        except Exception as exc:  # the call itself went through: say so, loudly, and carry on
            log.error(
                "audit record for %s %s not written: %s",
                ex.method,
                ex.path,
                redact.secrets(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300],
            )
            return
        if not appended.anchored and not self._warned:
            self._warned = True
            log.warning(
                "the audit head checkpoint is missing or its signature does not verify (tampering, or the "
                "checkpoint key changed); records are still chained but the checkpoint is left as found: "
                "run `ferryman audit verify`"
            )

    async def _append(self, call: _Call, usage: dict[str, Any] | None) -> Appended:
        """Render and append the record: on the loop when that is quick (SQLite, small bodies, the
        head known and the database free: tens of µs, and a commit does not fsync in WAL mode),
        else on a store thread."""
        chain = self.chain
        if not self.store.is_sqlite or _body_size(call) > INLINE_BODY_BYTES:
            return await self.store.run(self._render_and_append, call, usage)
        fields = self._render(call, usage)
        appended = chain.try_append(fields)
        if appended is None:
            return await self.store.run(chain.append, fields)
        if chain.wal_checkpoint_due and not self._checkpointing:
            self._checkpointing = True
            self._spawn(self._checkpoint_wal())
        return appended

    async def _checkpoint_wal(self) -> None:
        try:
            await self.store.run(self.chain.checkpoint_wal)
        except Exception as exc:  # the next one will try again; appends do not depend on it
            log.warning("audit: WAL checkpoint failed: %s", redact.secrets(str(exc))[:300])
        finally:
            self._checkpointing = False

    def _render_and_append(self, call: _Call, usage: dict[str, Any] | None) -> Appended:
        """On a store thread: render the record, then append it."""
        return self.chain.append(self._render(call, usage))

    def _render(self, call: _Call, usage: dict[str, Any] | None) -> dict[str, Any]:
        """Parse, redact and render the bodies into the record's fields."""
        mode = self.bodies
        value: Any = None
        if call.reply and "json" in (call.reply_type or "json") and len(call.reply) <= MAX_PARSE_BYTES:
            known, value = parsed_reply(call.exchange, call.reply)
            if not known:
                try:
                    value = orjson.loads(call.reply)
                except orjson.JSONDecodeError:
                    value = None
        usage = usage or usage_in(value)
        counts = TokenCounts.from_usage(usage)
        fields = call.fields
        fields["error"] = fields["error"] or reply_error(call.status, value, mode)
        ex = call.exchange  # the body as the caller sent it (read by then; inner stages may rewrite ex.body)
        if ex.upload is not None:  # a spooled upload: its form's text fields and its size, not its bytes
            upload = {**ex.json, "bytes": ex.upload.size} if isinstance(ex.json, dict) else {"bytes": ex.upload.size}
            fields["request_body"] = render_json(upload, mode)
        else:
            fields["request_body"] = render_body(ex.received, ex.headers.get("content-type", ""), mode)
        if call.stream is not None:
            fields["response_body"] = render_json(call.stream.body(call.completed), mode)
        elif value is not None:
            fields["response_body"] = render_json(value, mode)
        else:
            fields["response_body"] = render_body(call.reply, call.reply_type, mode)
        fields.update(
            input_tokens=counts.input,
            cached_tokens=counts.cached_input,
            output_tokens=counts.output,
            reasoning_tokens=counts.reasoning,
        )
        return fields


def _body_size(call: _Call) -> int:
    """The bytes (or characters) rendering the record will go through."""
    return len(call.exchange.received) + len(call.reply) + (call.stream.kept_chars if call.stream is not None else 0)


def _cut(value: str | None, limit: int) -> str | None:
    """A caller-supplied name, capped, with any key in it removed (a key sent as a model name)."""
    return redact.secrets(value)[:limit] if value else None


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # a stream that breaks while closing is over all the same
            await close()
