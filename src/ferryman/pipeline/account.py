"""The account stage: usage → cost for every inference call, plain or streamed.

- Plain replies (chat completions, responses, embeddings, legacy completions): the reply's
  ``usage``, priced with the reply's ``model`` and ``service_tier`` (flex / priority).
- Streams: chat and completions streams carry usage in a last chunk (``choices: []``) when
  ``stream_options.include_usage`` is set; responses streams in the ``response.completed``
  (or ``.incomplete`` / ``.failed``) event's ``response.usage``.
- A chat/completions stream whose caller did not ask for usage is asked for it upstream, and
  the caller's stream is left as it would have been: the usage chunk is dropped and the
  ``"usage":null`` field the upstream then adds to every other chunk is cut from the event's
  bytes (a byte check per event, no JSON parsing on the common path).
- ``exchange.usage`` is the upstream's usage object and ``exchange.cost_usd`` its cost
  (``Decimal`` USD; the transport reports it as ``x-ferryman-cost-usd`` on plain replies); for a
  stream both are known when it ends. Cache hits and error replies cost 0; models without a
  price leave the cost ``None``.
- A stream that ends without usage (the caller stopped reading, the connection broke, an error
  event) is estimated: the prompt's tokens plus one output token per content event, flagged
  with ``exchange.notes["usage_estimated"]``. The upstream bills what it generated, so the
  budget stage settles this estimate rather than nothing.

The stream's end is handled once, by whichever comes first: the stream's own end, the reply's
``on_close``, or a stage further out calling ``exchange.notes[FINISH_NOTE]()`` (the budget
stage does, so it always settles a known cost).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Handler
from ferryman.pricing import PriceTable
from ferryman.sse import SSEEvent, tap
from ferryman.tokens import count_request_prompt_tokens, endpoint_route

FINISH_NOTE = "account.finish"
# (body, parsed JSON) of the plain reply this stage read; valid while the reply's body is that object.
PARSED_NOTE = "account.parsed"
ASKS_FOR_USAGE = ("/chat/completions", "/completions")  # streams that need stream_options.include_usage
PRICED = ("/chat/completions", "/completions", "/responses", "/embeddings")
FREE = ("/moderations",)
WHOLE_PARSE_LIMIT = 256 * 1024  # larger plain replies: usage read from the tail only

_NULL_USAGE_END = b',"usage":null}'
_NULL_USAGE_ANY = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')
_RESPONSE_END = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
_TIER = re.compile(rb'"service_tier"\s*:\s*"([a-z_]+)"')
_ZERO = Decimal(0)


def spends_tokens(exchange: Exchange) -> bool:
    """Whether the call itself spends tokens: a POST to an inference endpoint. A poll, retrieve or
    list (``GET /v1/batches/{id}``, ``GET /v1/responses/{id}``, a stored chat completion) may
    carry a ``usage`` object too, but it repeats tokens spent, and billed, by an earlier call: it
    counts zero, so each token is counted once."""
    return exchange.method == "POST" and endpoint_route(exchange.path) in (*PRICED, *FREE)


class Account:
    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Account | None:
        return cls(PriceTable.for_settings(settings))

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        route = endpoint_route(exchange.path) if exchange.method == "POST" else None
        if route is None:
            return await call_next(exchange)
        original = _ask_for_usage(exchange) if exchange.stream and route in ASKS_FOR_USAGE else None
        try:
            reply = await call_next(exchange)
        finally:
            if original is not None:  # stages further out see the caller's request
                exchange.body, exchange.json = original
        if exchange.notes.get("cache_hit") or route in FREE or reply.status >= 400:
            exchange.cost_usd = _ZERO
            return reply
        if route not in PRICED:
            return reply
        if reply.stream is not None:
            meter = _Meter(self, exchange, route, hide=original is not None)
            exchange.notes[FINISH_NOTE] = meter.finish
            reply.on_close.append(meter.finish)
            reply.stream = tap(reply.stream, meter.on_event, meter.on_end)
            return reply
        usage, model, tier = _plain_usage(reply.body, exchange)
        if usage is not None:
            exchange.usage = usage
            exchange.cost_usd = self.price(exchange, model, usage, tier)
        return reply

    def price(self, exchange: Exchange, model: str | None, usage: dict[str, Any], tier: str | None) -> Decimal | None:
        """Priced by the model the reply names, else the one the request named."""
        for name in (model, exchange.model):
            if name and self.prices.prices(name) is not None:
                return self.prices.cost_usd(name, usage, tier=tier or "")
        return None


def _ask_for_usage(exchange: Exchange) -> tuple[bytes, Any] | None:
    """Ask the upstream for a usage chunk the caller did not ask for; the original request, or
    None when the caller asked (or the body is not one we can rewrite)."""
    body = exchange.json
    if not isinstance(body, dict):
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    original = (exchange.body, exchange.json)
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    exchange.set_json({**body, "stream_options": options})
    return original


def _plain_usage(body: bytes, exchange: Exchange) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(usage, model, service_tier)`` of a plain reply body."""
    if len(body) <= WHOLE_PARSE_LIMIT:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None, None
        exchange.notes[PARSED_NOTE] = (body, data)  # stages further out need not parse it again
        if not isinstance(data, dict):
            return None, None, None
        usage, model, tier = data.get("usage"), data.get("model"), data.get("service_tier")
        return (
            usage if isinstance(usage, dict) else None,
            model if isinstance(model, str) else None,
            tier if isinstance(tier, str) else None,
        )
    # A large body (many embeddings): usage and service_tier are top-level fields near its end.
    at = body.rfind(b'"usage":')
    if at < 0:
        return None, None, None
    try:
        usage, _ = json.JSONDecoder().raw_decode(body[at + 8 :].decode("utf-8", "replace").lstrip())
    except ValueError:
        return None, None, None
    tiers = _TIER.findall(body[-4096:])
    return (usage if isinstance(usage, dict) else None), exchange.model, (tiers[-1].decode() if tiers else None)


def parsed_reply(exchange: Exchange, body: bytes) -> tuple[bool, Any]:
    """``(True, value)`` when this stage parsed exactly ``body`` (the same object) already."""
    seen = exchange.notes.get(PARSED_NOTE)
    if seen is not None and seen[0] is body:
        return True, seen[1]
    return False, None


def without_null_usage(event: SSEEvent) -> bytes | None:
    """The event's bytes without its ``"usage":null`` field, or None when it has none."""
    raw = event.raw
    body = raw.rstrip(b"\r\n")
    if body.endswith(_NULL_USAGE_END):  # where OpenAI (and the mock) put it: the last field
        return body[: -len(_NULL_USAGE_END)] + b"}" + raw[len(body) :]
    if b'"usage"' not in body:
        return None
    data = event.json()
    if not isinstance(data, dict) or "usage" not in data or data["usage"] is not None:
        return None
    expected = {k: v for k, v in data.items() if k != "usage"}
    for match in _NULL_USAGE_ANY.finditer(body):  # another key order or spacing: cut where it still parses
        candidate = body[: match.start()] + body[match.end() :]
        start, end = candidate.find(b"{"), candidate.rfind(b"}")
        try:
            if start >= 0 and orjson.loads(candidate[start : end + 1]) == expected:
                return candidate + raw[len(body) :]
        except orjson.JSONDecodeError:
            continue
    return None


class _Meter:
    """Watches one stream for its usage (and hides what the caller did not ask for)."""

    def __init__(self, account: Account, exchange: Exchange, route: str, hide: bool) -> None:
        self.account = account
        self.exchange = exchange
        self.responses = route == "/responses"
        self.hide = hide
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.tier: str | None = None
        self.content_events = 0
        self.finished = False

    def on_event(self, event: SSEEvent) -> bytes:
        raw = event.raw
        if self.responses:  # quoted names: text inside a JSON string has its quotes escaped
            if any(name in raw for name in _RESPONSE_END):
                data = event.json()
                response = data.get("response") if isinstance(data, dict) else None
                if isinstance(response, dict):
                    self._record(response)
            elif b'.delta"' in raw:
                self.content_events += 1
            return raw
        if b'"usage"' not in raw:
            if not event.is_done:
                self.content_events += 1
            return raw
        body = raw.rstrip(b"\r\n")
        if body.endswith(_NULL_USAGE_END):  # the common case: a byte check, no parsing
            self.content_events += 1
            return body[: -len(_NULL_USAGE_END)] + b"}" + raw[len(body) :] if self.hide else raw
        data = event.json()
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            self._record(data)
            return b"" if self.hide else raw
        self.content_events += 1
        stripped = without_null_usage(event) if self.hide else None
        return raw if stripped is None else stripped

    def _record(self, obj: dict[str, Any]) -> None:
        usage, model, tier = obj.get("usage"), obj.get("model"), obj.get("service_tier")
        if isinstance(usage, dict):
            self.usage = usage
        self.model = model if isinstance(model, str) else self.model
        self.tier = tier if isinstance(tier, str) else self.tier

    def on_end(self, completed: bool) -> None:
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        exchange = self.exchange
        if self.usage is not None:
            exchange.usage = self.usage
            exchange.cost_usd = self.account.price(exchange, self.model, self.usage, self.tier)
            return
        estimate = {"prompt_tokens": self._prompt_tokens(), "completion_tokens": self.content_events}
        exchange.notes["usage_estimated"] = estimate
        body = exchange.json if isinstance(exchange.json, dict) else {}
        tier = body.get("service_tier")
        exchange.cost_usd = self.account.price(exchange, self.model, estimate, tier if isinstance(tier, str) else None)

    def _prompt_tokens(self) -> int:
        exchange = self.exchange
        if exchange.prompt_tokens is None:
            try:
                exchange.prompt_tokens = count_request_prompt_tokens(exchange.path, exchange.json)
            except Exception:  # an estimate must never break the caller's stream
                return 0
        return exchange.prompt_tokens


__all__ = ["FINISH_NOTE", "PARSED_NOTE", "Account", "parsed_reply", "without_null_usage"]
