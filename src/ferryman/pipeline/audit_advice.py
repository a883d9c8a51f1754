"""What ``ferryman report``'s advice needs, recorded with every call's audit record without its
bodies (the fields of :data:`ferryman.audit.chain.ADDED`, migration 0008).

- ``output_cap``: the output the request reserved (``max_completion_tokens`` / ``max_tokens`` /
  ``max_output_tokens``, times ``n``; legacy completions' default of 16 included), as pacing
  counts it against TPM (:func:`ferryman.tokens.max_output_tokens`); None when the request names
  none, and for endpoints that produce no output tokens (embeddings, moderations).
- ``service_tier``: the tier the reply says it ran at, else the one the request asked for.
- ``via_batch``: the call is part of Batch API traffic: every call ``ferryman run --via
  batch-api`` makes (upload, create, poll, download), and any ``/batches`` call from any front
  door. The batch's own lines are not calls through the pipeline: their usage and cost are in
  the run's journal, not in the audit log (see the README's audit section).
- ``request_fp``: exact duplicates. HMAC-SHA256 (the first 32 hex digits) over the method, path,
  sorted query, the headers that change a reply and the JSON body as the response cache keys it
  (:func:`ferryman.pipeline.cache.key_body`: sorted keys, ``0.0`` as ``0``, without ``user``,
  ``metadata``, ``store``, ``prompt_cache_key`` … where the reply does not echo them), and
  without ``stream`` and ``stream_options`` too: a streamed call and a plain one that ask the
  same share it. Not the principal: the report groups by key when it wants to. JSON POSTs only.
- ``deterministic``: whether the request asks for a repeatable reply (the cache's own test:
  ``temperature`` 0 or a ``seed``; embeddings and moderations always): the response-cache advice
  counts only those duplicates.
- ``prefix_fp`` / ``prefix_tokens``: prompt-cache groups. OpenAI caches prompts of 1,024 tokens
  or more, in a prefix of 1,024 tokens then 128-token steps; calls whose first 1,024 tokens are
  the same are the ones that can share a cache entry, so ``prefix_fp`` is the HMAC of those first
  1,024 tokens (their ids, in the model's encoding) and ``prefix_tokens`` the longest cacheable
  prefix of this prompt (1,024 + 128·k ≤ its input tokens): the most a cache hit could cover.
  How far beyond 1,024 tokens two prompts agree is not recorded (one fingerprint per step would
  be); the report's savings at 1,024 tokens a call are the part that is sure. The prompt is
  rendered as Ferryman sees it — tools (sorted JSON), then each message's role, name and text
  (other parts as sorted JSON), in order; for the Responses API ``previous_response_id`` and
  ``prompt`` first, then ``instructions`` and ``input`` — which is not OpenAI's exact rendering
  (it adds a few framing tokens a message), so a group is the same calls up to those tokens.
  Only the first ~1,100 tokens are encoded (text cut at four characters a token and extended
  until enough are there): the cost is bounded whatever the prompt's length. Chat, Responses and
  legacy completions only, and only when the call's input tokens (the reply's usage, else the
  count pacing made) reach 1,024.
- ``ratelimit``: the ``x-ratelimit-{limit,remaining}-{requests,tokens}`` levels the upstream's
  reply carried, as ints, read with pacing's own parser (:meth:`Seen.from_headers`); None for a
  cache hit (no upstream reply) and when the upstream sends none.
- ``source``: the front door (``Exchange.source``: ``sdk``, ``gateway``, ``run``, ``run-batch-api``).

Fingerprints are keyed, not bare hashes: a short prompt's sha256 could be found by trying the
likely prompts, and the audit log is meant to hold no bodies. The key is derived from the audit
checkpoint key (:meth:`CheckpointKey.derive`), which never enters the database, so whoever reads
the database cannot test a guess. So fingerprints compare only between records made under one
checkpoint key: hosts sharing a PostgreSQL store must share ``audit.checkpoint_key`` (Ferryman
warns when it is unset there), and a new key starts new groups.
"""

from __future__ import annotations

import hmac
import math
from array import array
from collections.abc import Iterator
from hashlib import sha256
from typing import Any

import orjson

from ferryman.audit.keys import CheckpointKey
from ferryman.audit.record import StreamRecorder
from ferryman.exchange import SOURCE_RUN_BATCH_API, Exchange
from ferryman.pipeline.buckets import Seen
from ferryman.pipeline.cache import is_deterministic, key_body, key_headers
from ferryman.tokens import encoding_for_model, endpoint_route, max_output_tokens

PREFIX_TOKENS = 1024  # OpenAI's prompt cache: prompts this long or longer, this first …
PREFIX_STEP = 128  # … then in steps of this many tokens
_MARGIN = 64  # tokens encoded past the cut, so the text's cut cannot change the tokens before it
_FP_HEX = 32
_NO_OUTPUT = frozenset({"/embeddings", "/moderations"})
_PROMPTED = frozenset({"/chat/completions", "/responses", "/completions"})
_STREAMING = ("stream", "stream_options")  # the same answer, streamed or not
_LEVELS = ("limit_requests", "remaining_requests", "limit_tokens", "remaining_tokens")
_TIER_CHARS = 32
_LEVEL_MAX = 2**53  # a header's number beyond this is no limit a JSON int should carry
_INT_MAX = 2**31 - 1  # the columns are INTEGER: a refused ``max_tokens: 2**63`` is recorded without its cap


ADVICE_NOTE = "audit.advice"  # in Exchange.notes: Fingerprints.request's fields, worked out once a call


class Fingerprints:
    """Keyed fingerprints (HMAC-SHA256 under a key derived from the checkpoint key), and the
    fields of a record that use them."""

    def __init__(self, key: CheckpointKey) -> None:
        self._hmac = hmac.new(key.derive("record-fingerprints"), digestmod=sha256)

    def of(self, kind: bytes, data: bytes) -> str:
        digest = self._hmac.copy()
        digest.update(kind + b"\n" + data)
        return digest.hexdigest()[:_FP_HEX]

    def request(self, exchange: Exchange) -> dict[str, Any]:
        """The fields known from the request alone."""
        ex = exchange
        body = ex.json if isinstance(ex.json, dict) and ex.upload is None and ex.method == "POST" else None
        route = endpoint_route(ex.path) if body is not None else None
        cap = ex.output_cap
        if cap is None and body is not None:
            cap = max_output_tokens(ex.path, body)
        tier = body.get("service_tier") if body is not None else None
        fields: dict[str, Any] = {
            "output_cap": None if route in _NO_OUTPUT else _whole(cap),
            "service_tier": tier[:_TIER_CHARS] if isinstance(tier, str) else None,
            "via_batch": ex.source == SOURCE_RUN_BATCH_API or ex.path.startswith("/batches"),
            "source": ex.source,
            "request_fp": None,
            "deterministic": None,
            "_prefix": None,  # (fingerprint, tokens rendered): settled with the input tokens
        }
        if body is None:
            return fields
        normal = key_body(ex)
        for name in _STREAMING:
            normal.pop(name, None)
        query = sorted(p for p in ex.query.split("&") if p)
        material = {"m": ex.method, "p": ex.path, "q": query, "h": key_headers(ex), "b": normal}
        try:
            fields["request_fp"] = self.of(b"request", orjson.dumps(material, option=orjson.OPT_SORT_KEYS))
        except orjson.JSONEncodeError:  # a value JSON cannot hold (nesting too deep): no fingerprint, still a record
            fields["request_fp"] = None
        fields["deterministic"] = is_deterministic(ex.path, body) if route is not None else None
        if route in _PROMPTED:
            fields["_prefix"] = self._prefix(route, body, ex.prompt_tokens)
        return fields

    def _prefix(self, route: str, body: dict[str, Any], counted: int | None) -> tuple[str, int] | None:
        """The first :data:`PREFIX_TOKENS` tokens' fingerprint and how many were rendered, when
        the prompt may be long enough to cache (it is settled against the reply's usage)."""
        if counted is not None and counted < PREFIX_TOKENS:
            return None
        try:
            encoding = encoding_for_model(body.get("model"))
            ids = _first_tokens(encoding, _pieces(route, body), PREFIX_TOKENS)
        except Exception:  # a fingerprint must never fail the call's record
            return None
        if not ids:
            return None
        return self.of(b"prefix", array("I", ids[:PREFIX_TOKENS]).tobytes()), len(ids)

    def fields(
        self, exchange: Exchange, reply: Any, stream: StreamRecorder | None, input_tokens: int, ratelimit: Any
    ) -> dict[str, Any]:
        """The record's advice fields: the request's (:meth:`request`, once a call: a stream's
        write-ahead row and its record share them) and the reply's (its parsed body or its
        stream, its input tokens, :func:`ratelimit_levels` of its headers)."""
        request = exchange.notes.get(ADVICE_NOTE)
        if request is None:
            request = exchange.notes[ADVICE_NOTE] = self.request(exchange)
        return _fields(request, reply, stream, input_tokens, ratelimit)


def _fields(
    request: dict[str, Any], reply: Any, stream: StreamRecorder | None, input_tokens: int, ratelimit: Any
) -> dict[str, Any]:
    out = {name: value for name, value in request.items() if not name.startswith("_")}
    tier = stream.service_tier if stream is not None else reply.get("service_tier") if isinstance(reply, dict) else None
    if isinstance(tier, str):
        out["service_tier"] = tier[:_TIER_CHARS]
    out["ratelimit"] = ratelimit
    prefix, tokens = request.get("_prefix"), input_tokens
    if prefix is not None and tokens <= 0:  # no usage (a stream cut short): the tokens rendered
        tokens = prefix[1]
    cacheable = prefix is not None and tokens >= PREFIX_TOKENS
    out["prefix_fp"] = prefix[0] if cacheable and prefix is not None else None
    out["prefix_tokens"] = (
        _whole(PREFIX_TOKENS + (tokens - PREFIX_TOKENS) // PREFIX_STEP * PREFIX_STEP) if cacheable else None
    )
    return out


def _whole(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= _INT_MAX else None


def ratelimit_levels(exchange: Exchange, headers: dict[str, str]) -> dict[str, int] | None:
    """The ``x-ratelimit-*`` levels an upstream reply carried (none for a cache hit's replay)."""
    if exchange.cache == "hit" or exchange.notes.get("cache_hit"):
        return None
    seen = Seen.from_headers(headers)
    if seen is None:
        return None
    levels = {name: getattr(seen, name) for name in _LEVELS}
    # pacing refines ``remaining`` with the reset time's fraction; the header's whole number is its floor
    return {name: math.floor(value) for name, value in levels.items() if value is not None and 0 <= value <= _LEVEL_MAX}


def _first_tokens(encoding: Any, pieces: Iterator[str], want: int) -> list[int]:
    """The token ids of the pieces, one after the other, until ``want`` (+ a margin) are there:
    a long piece is encoded from a cut of its text (four characters a token, then as many as the
    text's own ratio says), extended until the cut is past the margin."""
    ids: list[int] = []
    for piece in pieces:
        need = want + _MARGIN - len(ids)
        if need <= 0:
            break
        chars = 4 * need + 256
        while True:
            part = encoding.encode_ordinary(piece[:chars])
            if len(part) >= need or chars >= len(piece):
                break
            # too few tokens: cut again where this text's own characters per token say, and a bit more
            chars = max(chars + 256, chars * need * 9 // (8 * max(len(part), 1)) + 64)
        ids += part if chars >= len(piece) else part[:need]
    return ids


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _pieces(route: str, body: dict[str, Any]) -> Iterator[str]:
    """The prompt's text in the order the model reads it (see the module's docstring)."""
    if route == "/completions":
        prompt = body.get("prompt")
        yield prompt if isinstance(prompt, str) else _json(prompt)
        return
    if body.get("tools"):
        yield _json(body["tools"])
    if route == "/responses":
        for name in ("previous_response_id", "prompt"):
            if body.get(name) is not None:
                yield _json(body[name])
        if isinstance(body.get("instructions"), str):
            yield body["instructions"]
        items = body.get("input")
        if isinstance(items, str):
            yield items
            return
    else:
        items = body.get("messages")
    for item in items if isinstance(items, list) else ():
        yield from _item(item)


def _item(item: Any) -> Iterator[str]:
    """One message (or Responses input item): role and name, text as text, the rest as sorted JSON."""
    if not isinstance(item, dict):
        yield _json(item)
        return
    for name in ("role", "name"):
        if isinstance(item.get(name), str):
            yield item[name]
    content = item.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            yield text if isinstance(text, str) else _json(part)
    rest = {k: v for k, v in item.items() if k not in ("role", "name", "content")}
    if rest:
        yield _json(rest)
