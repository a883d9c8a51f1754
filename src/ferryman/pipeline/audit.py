"""The audit stage: one append-only, redacted, hash-chained record per call, a stream's
included even when its gateway dies while delivering it.

The record is written when the call is over: for a plain reply before it is returned, for a
stream when its last event has gone out (or it broke, or the caller left early), so the inner
stages (account, cache) have settled usage and cost by then. Refusals by inner stages are
replies like any other; a transport error raised from inside is recorded with status 599 and
re-raised. Rendering and redacting bodies, hashing and the insert take tens of µs for a small
record on SQLite and run on the loop then; large bodies, PostgreSQL and a busy database go to
the store's threads.

Written at its end, a stream's record would be lost with a gateway killed mid-stream, though
the caller got part of the reply and the upstream bills it. So a stream is written ahead
(:mod:`ferryman.audit.inflight`): when its reply arrives, a row in ``audit_open`` holds the
record's fields known by then (the request body rendered once, for both), written at once on
SQLite when the database is free, else on a store thread while the upstream's first chunk is
awaited; no chunk reaches the caller before the row is in. Its progress (bytes, events, output
counted) is written about once a second, and the stream's record deletes the row in its own
transaction. A row left by a gateway that died becomes an ``interrupted`` record with estimated
usage and cost (:mod:`ferryman.audit.recovery`) when a pipeline is built again
(:meth:`Audit.from_settings` recovers once, before any call: a restarted gateway or SDK client
closes its predecessor's rows) or, from any instance, once the row's lease has run out. A
write-ahead row that cannot be written is logged and the stream goes on, as with a record.

A record that cannot be written for want of the store (a full disk, the database down) is
logged, and the call it is for has gone through already; but from then on nothing more is sent
that could not be recorded: every call is refused with the store's 503 (``disk_full``,
``store_unavailable``, ``retry-after: 1``) and tries to write its refusal's record. The first of
those that lands (the disk has room again) lets the next call through.

What a stage noted for the record (``notes[AUDIT_TAGS]``, such as the lifecycle stage's
``@routed_from``) joins the record's ``tags`` under names starting with ``@``, which no caller's
tag can have: the record's fields, and so its hash, stay as they were. What the report's advice
needs (fingerprints, rate-limit levels, …): :mod:`ferryman.pipeline.audit_advice`.

See :mod:`ferryman.audit.chain` for the chain and :mod:`ferryman.audit.record` for the bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from ferryman.audit.inflight import LEASE_S, InFlight, Tracker
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
from ferryman.audit.recovery import this_process
from ferryman.errors import OpenAIError
from ferryman.exchange import AUDIT_TAGS, OWN_TAG, Exchange, Reply
from ferryman.pipeline import audit_advice
from ferryman.pipeline.account import FINISH_NOTE, PRICED, parsed_reply, spends_tokens
from ferryman.pipeline.chain import Handler
from ferryman.pricing import PriceTable, TokenCounts
from ferryman.sse import tap
from ferryman.store import Store
from ferryman.store.faults import infrastructure_failure
from ferryman.tokens import count_request_prompt_tokens, endpoint_route

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
    # A stream's write-ahead row (None for a plain reply), and its write while under way.
    tracker: Tracker | None = None
    opening: asyncio.Task[bool] | None = None
    request_body: str | None = None
    rendered: bool = False  # request_body holds the request body as recorded (rendered for the row)
    known: dict[str, Any] | None = None  # _known_fields, once worked out
    ratelimit: dict[str, int] | None = None  # the reply's x-ratelimit-* levels


class Audit:
    def __init__(
        self,
        store: Store,
        chain: Chain,
        bodies: str = "redacted",
        *,
        prices: PriceTable | None = None,
        instance: str | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        """``instance``: a name that stays the same when this gateway restarts (its rows left by a
        crash are then closed as it starts, wherever it runs); default ``hostname:pid``."""
        self.store = store
        self.chain = chain
        self.bodies = bodies
        self.inflight = InFlight(store, chain, this_process(instance), prices or PriceTable.default(), lease_s)
        self.fingerprints = audit_advice.Fingerprints(chain.key)
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = False
        self._checkpointing = False
        # Set when a record could not be written for want of the store (a full disk, the database
        # down): new calls are refused with it until a record is written again.
        self._failing: OpenAIError | None = None

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
        prices = PriceTable.for_settings(settings)
        chain = Chain(store.engine, key)
        stage = cls(store, chain, settings.audit.bodies, prices=prices, instance=parts.get("instance"))
        stage.recover(startup=True)
        return stage

    def recover(self, startup: bool = False) -> int:
        """Record the streams whose gateway died mid-stream as interrupted (blocking: once at the
        start, before any call); errors are logged, never raised."""
        try:
            return self.inflight.recover(startup=startup)
        except Exception as exc:
            log.error(
                "audit: the write-ahead records of streams cut by a crash could not be closed: %s",
                redact.secrets(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300],
            )
            return 0

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        call = _Call(exchange, time.time())
        failing = self._failing
        if failing is not None:  # nothing goes upstream that cannot be recorded
            call.status = failing.status
            call.error = reply_error(failing.status, failing.body(), self.bodies)
            exchange.error = failing.code
            await self._write(call)  # the refusal's own record: when it lands, the next call goes on
            return Reply.of_json(failing.status, failing.body(), dict(failing.headers))
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
        call.ratelimit = audit_advice.ratelimit_levels(exchange, reply.headers)
        if reply.stream is None:
            call.reply = reply.body
            await self._write(call)
            return reply
        call.stream = StreamRecorder(self.bodies)
        loop = asyncio.get_running_loop()
        # The write-ahead row: at once on SQLite when quick, else while the upstream's first
        # chunk is awaited (see _watch).
        prompt = None if exchange.prompt_tokens is not None else functools.partial(_prompt_tokens, exchange)
        call.tracker = tracker = self.inflight.track(call.stream, exchange.started, prompt)
        record = functools.partial(self._ahead_record, call)
        quick = self.store.is_sqlite and len(exchange.received) <= INLINE_BODY_BYTES
        if not (quick and self.inflight.open_now(tracker, call.ts, record)):
            call.opening = loop.create_task(self.inflight.open(tracker, call.ts, record))
        source = reply.stream
        reply.stream = self._watch(call, source)

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
        tracker = call.tracker
        try:
            async for chunk in tapped:
                if call.opening is not None:  # no byte reaches the caller before the write-ahead row
                    await _opened(call)
                if call.stream.finished and not call.done:
                    # This chunk holds the stream's last event: the record is written before the
                    # caller can see it, so every stream a caller received whole has its record
                    # (even if the process dies right after).
                    await self._record_end(call)
                if tracker is not None:
                    self.inflight.delivered(tracker, len(chunk))
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
        cancelled = False
        if call.opening is not None:  # the row must be in before the record that deletes it
            try:
                await _opened(call)
            except asyncio.CancelledError:  # the record is still written; the row is deleted once in
                cancelled = True
                if call.tracker is not None:
                    call.tracker.orphan = True
        ttft = (call.stream.first_at or ex.first_byte_at) if call.stream is not None else None
        call.fields = {
            **_known_fields(call),
            "latency_ms": ex.elapsed_ms,
            "ttft_ms": (ttft - ex.started) * 1000 if ttft is not None else None,
            "cost_usd": ex.cost_usd if ex.cost_usd is not None else Decimal(0),
            "error": call.error or (error_text(ex.error, self.bodies) if ex.error else None),
        }
        usage = ex.usage or (call.stream.usage if call.stream is not None else None)
        if not spends_tokens(ex):  # a poll or retrieve repeats an earlier call's usage: zero here
            usage = None
        try:
            appended = await self._append(call, usage)
        except Exception as exc:  # the call itself went through: say so, loudly, and carry on
            failing = infrastructure_failure(exc)
            log.error(
                "audit record for %s %s not written: %s%s",
                ex.method,
                ex.path,
                redact.secrets(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300],
                f"; new calls get 503 {failing.code} until a record can be written" if failing is not None else "",
            )
            if failing is not None:
                self._failing = failing
            return
        finally:
            if call.tracker is not None:
                self.inflight.done(call.tracker)
            if cancelled:
                raise asyncio.CancelledError
        if self._failing is not None:
            self._failing = None
            log.warning("audit records are written again; calls go through")
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
        close = _open_row(call)
        appended = chain.try_append(fields, close)
        if appended is None:
            return await self.store.run(chain.append, fields, close)
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
        return self.chain.append(self._render(call, usage), _open_row(call))

    def _ahead_record(self, call: _Call) -> dict[str, Any]:
        """What a stream's write-ahead row keeps to make its record from, should the gateway die
        (:func:`ferryman.audit.recovery.interrupted_record`): the fields known now, the request
        body rendered as the record has it (kept for the record too), and what pricing an
        estimate needs. On the loop for a small body on SQLite, else on a store thread."""
        ex = call.exchange
        call.request_body, call.rendered = self._request_body(ex), True
        tier = ex.json.get("service_tier") if isinstance(ex.json, dict) else None
        route = endpoint_route(ex.path) if ex.method == "POST" else None
        priced = route in PRICED and call.status < 400 and ex.cache != "hit" and not ex.notes.get("cache_hit")
        advice = self.fingerprints.fields(ex, None, call.stream, ex.prompt_tokens or 0, call.ratelimit)
        return {
            "fields": {**_known_fields(call), "request_body": call.request_body, **advice},
            "prompt_tokens": ex.prompt_tokens,  # else counted with the first progress update
            "service_tier": tier if isinstance(tier, str) else None,
            "priced": priced,
            "bodies": self.bodies,
        }

    def _request_body(self, ex: Exchange) -> str | None:
        """The body as the caller sent it (read by then; inner stages may rewrite ex.body)."""
        mode = self.bodies
        if ex.upload is not None:  # a spooled upload: its form's text fields and its size, not its bytes
            upload = {**ex.json, "bytes": ex.upload.size} if isinstance(ex.json, dict) else {"bytes": ex.upload.size}
            return render_json(upload, mode)
        return render_body(ex.received, ex.headers.get("content-type", ""), mode)

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
        if usage is None and spends_tokens(call.exchange):
            usage = usage_in(value)
        counts = TokenCounts.from_usage(usage)
        fields = call.fields
        fields["error"] = fields["error"] or reply_error(call.status, value, mode)
        fields["request_body"] = call.request_body if call.rendered else self._request_body(call.exchange)
        if call.stream is not None:
            fields["response_body"] = render_json(call.stream.body(call.completed), mode)
        elif value is not None:
            fields["response_body"] = render_json(value, mode)
        else:
            fields["response_body"] = render_body(call.reply, call.reply_type, mode)
        fields.update(
            self.fingerprints.fields(call.exchange, value, call.stream, counts.input, call.ratelimit),
            input_tokens=counts.input,
            cached_tokens=counts.cached_input,
            output_tokens=counts.output,
            reasoning_tokens=counts.reasoning,
        )
        return fields


def _prompt_tokens(exchange: Exchange) -> int:
    """The prompt's tokens (on a store thread), for an interrupted stream's estimate."""
    if exchange.prompt_tokens is not None:  # counted by now (the account stage, at a stream's end)
        return exchange.prompt_tokens
    return count_request_prompt_tokens(exchange.path, exchange.json) if isinstance(exchange.json, dict) else 0


def _known_fields(call: _Call) -> dict[str, Any]:
    """The record's fields known once the reply has come (its status and headers): settled by
    then (routing, retries and the cache are done), so worked out once for a stream's row and
    its record."""
    if call.known is not None:
        return call.known
    ex = call.exchange
    call.known = {
        "ts": call.ts,
        "request_id": _cut(ex.request_id, 64),
        "principal": _cut(ex.principal.id, 128) or "unknown",
        "upstream": _cut(getattr(ex.deployment, "name", None), 128),
        "model": _cut(ex.model, 128),
        "endpoint": _cut(ex.path, 128) or "/",
        "status": call.status,
        "attempts": ex.attempts or (1 if ex.deployment is not None else 0),
        "cache": ex.cache,
        "tags": {**{k: redact.secrets(v) for k, v in ex.tags.items()}, **_own_tags(ex)},
    }
    return call.known


def _own_tags(exchange: Exchange) -> dict[str, str]:
    """What the stages noted for the record (``AUDIT_TAGS``): ``@``-names only, values capped."""
    noted = exchange.notes.get(AUDIT_TAGS)
    if not isinstance(noted, dict):
        return {}
    return {k: _cut(str(v), 256) or "" for k, v in noted.items() if isinstance(k, str) and k.startswith(OWN_TAG)}


async def _opened(call: _Call) -> None:
    """Wait for the stream's write-ahead row (its write goes on if this wait is cancelled)."""
    opening = call.opening
    if opening is not None:
        await asyncio.shield(opening)
        call.opening = None


def _open_row(call: _Call) -> str | None:
    """The id of the write-ahead row the call's record deletes, if it has one."""
    tracker = call.tracker
    return tracker.id if tracker is not None and tracker.written else None


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
