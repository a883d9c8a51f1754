"""Isolation of stored objects: a virtual key sees only the objects it created; another key's id
answers 404, as if it did not exist, and kinds Ferryman does not track are refused.

Every object the upstream creates for a key is recorded (``owned_objects``) before its id
reaches the caller: on the create reply, on a streamed response's first event, and for what a
batch or a job produces (output, error and result files, the fine-tuned model and its
checkpoints) when the caller reads the batch or job. Requests naming an object, in the path,
the body (at any depth) or a list's cursor, are checked before they leave (where ids occur:
:mod:`ferryman.gateway.objects`); lists are rebuilt from the key's own objects
(``GET /v1/models``: base models and the key's own fine-tuned ones).

Ownership never changes, so positive answers are kept in memory (bounded); the table is the
truth shared by every instance.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import Connection, insert, select

from ferryman.errors import OpenAIError
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.gateway import objects
from ferryman.gateway.objects import COLLECTIONS, PRODUCED, UPLOAD_MODELS
from ferryman.pipeline.account import parsed_reply
from ferryman.pipeline.chain import Handler
from ferryman.sse import SSEDecoder
from ferryman.store import Store
from ferryman.store.tables import owned_objects

_CACHE_MAX = 100_000
# Upstream pages read for one list at most (another key's objects may fill many pages).
MAX_LIST_PAGES = 20
SCAN_PAGE = 100
# The API's default page size where a caller names no limit (files: all of them, up to 10,000).
DEFAULT_LIMITS = {"files": 10_000, "models": 10_000}  # the largest page every list endpoint of the API serves


def _not_found(collection: str, object_id: str, param: str | None = None) -> Reply:
    _, message, own_param, code = COLLECTIONS[collection]
    error = OpenAIError(404, message(object_id), "invalid_request_error", param or own_param, code)
    return Reply.of_json(404, error.body())


def _not_isolated(what: str) -> Reply:
    error = OpenAIError(
        403,
        f"{what} is not isolated between this gateway's keys, so virtual keys may not use it "
        "(an operator can allow it with gateway.pass_through).",
        "invalid_request_error",
        None,
        "not_isolated",
    )
    return Reply.of_json(403, error.body())


class Ownership:
    """The gateway's stage, placed right inside the audit stage."""

    def __init__(self, store: Store, pass_through: list[str] | tuple[str, ...] = ()) -> None:
        self.store = store
        self._known: dict[str, str] = {}  # object id → owner
        # Path collections (``assistants``) the operator lets virtual keys reach unisolated; the
        # matching body fields (``assistant_id``) go with them.
        self.pass_through = frozenset(p.strip("/").lower() for p in pass_through)
        self.pass_through_kinds = frozenset(p.rstrip("s") for p in self.pass_through)

    # -- the table ----------------------------------------------------------------------------

    async def owner_of(self, object_id: str) -> str | None:
        owner = self._known.get(object_id)
        if owner is not None:
            return owner

        def read(c: Connection) -> str | None:
            row = c.execute(select(owned_objects.c.owner).where(owned_objects.c.id == object_id)).first()
            return row[0] if row is not None else None

        owner = await self.store.read(read)
        if owner is not None:
            self._remember(object_id, owner)
        return owner

    async def record(self, ids: list[tuple[str, str]], owner: str) -> None:
        """Record ``(id, kind)`` pairs as ``owner``'s (an id already recorded keeps its owner)."""
        fresh = [(i, k) for i, k in ids if i and i not in self._known]
        if not fresh:
            return
        now = time.time()

        def write(c: Connection) -> None:
            existing = set(
                c.execute(select(owned_objects.c.id).where(owned_objects.c.id.in_([i for i, _ in fresh]))).scalars()
            )
            rows = [{"id": i, "kind": k, "owner": owner, "created": now} for i, k in fresh if i not in existing]
            if rows:
                c.execute(insert(owned_objects), rows)

        await self.store.write(write)
        for object_id, _ in fresh:
            self._remember(object_id, owner)

    async def own_among(self, ids: list[str], owner: str) -> set[str]:
        if not ids:
            return set()

        def read(c: Connection) -> set[str]:
            query = select(owned_objects.c.id).where(owned_objects.c.owner == owner, owned_objects.c.id.in_(ids))
            return set(c.execute(query).scalars())

        result: set[str] = await self.store.read(read)
        return result

    def _remember(self, object_id: str, owner: str) -> None:
        if len(self._known) >= _CACHE_MAX:
            self._known.clear()
        self._known[object_id] = owner

    # -- the stage ----------------------------------------------------------------------------

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        owner = exchange.principal.id
        if owner == "process":  # not a virtual key: nothing to isolate
            return await call_next(exchange)
        refusal = await self._check(exchange, owner)
        if refusal is not None:
            exchange.notes[FERRYMAN_MADE] = True
            exchange.error = exchange.error or ("not_found" if refusal.status == 404 else "not_isolated")
            return refusal
        target = objects.target(exchange.path)
        if target is not None and target[1] is None and exchange.method == "GET":
            return await self._list(exchange, call_next, owner, target[0])
        reply = await call_next(exchange)
        if target is None and exchange.path != "/responses":
            return reply
        if target == ("chat_completions", None) and exchange.method == "POST":
            stored = isinstance(exchange.json, dict) and exchange.json.get("store") is True
            if not stored or reply.is_stream:  # only a stored completion can be read back later
                return reply
        if reply.status >= 400:
            return reply
        if reply.is_stream:
            if exchange.path == "/responses" and exchange.method == "POST":
                reply.stream = self._watch_stream(reply.stream, owner)  # type: ignore[arg-type]
            return reply
        await self._after(exchange, reply, owner, target)
        return reply

    async def _check(self, exchange: Exchange, owner: str) -> Reply | None:
        """A refusal when the request names what the caller does not own, or a kind that is not
        isolated; None when it may go."""
        if not objects.isolated(exchange.path, self.pass_through):
            return _not_isolated(f"/v1/{exchange.path.strip('/').split('/')[0]}")
        target = objects.target(exchange.path)
        if target is not None and target[1] is not None and await self.owner_of(target[1]) != owner:
            return _not_found(target[0], target[1])
        body = exchange.json
        if exchange.upload is not None and isinstance(body, dict):  # a form: ``images[0][file_id]`` names a file_id
            body = {objects.form_field(k): v for k, v in body.items()}
        marked = exchange.upload is not None or any(marker in exchange.body for marker in objects.MARKERS)
        if isinstance(body, dict | list) and marked:
            for collection, object_id, field in objects.named_ids(body):
                if collection is None:
                    if field.removesuffix("_id") not in self.pass_through_kinds:
                        return _not_isolated(f"`{field}`")
                elif await self.owner_of(object_id) != owner:
                    return _not_found(collection, object_id, field)
        elif objects.fine_tuned(exchange.model) and await self.owner_of(str(exchange.model)) != owner:
            return _not_found("models", str(exchange.model), "model")  # a form's model (audio)
        for model in exchange.notes.get(UPLOAD_MODELS, ()):  # the models a batch file's lines name
            if objects.fine_tuned(model) and await self.owner_of(model) != owner:
                return _not_found("models", model, "file")
        return None

    async def _after(self, exchange: Exchange, reply: Reply, owner: str, target: tuple[str, str | None] | None) -> None:
        seen, body = parsed_reply(exchange, reply.body)  # the account stage's parse, when it made one
        if not seen:
            body = reply.json()
        if not isinstance(body, dict):
            return
        collection = target[0] if target is not None else "responses"
        kind = COLLECTIONS[collection][0]
        if body.get("object") == "list" and isinstance(body.get("data"), list):
            # a list under an object the caller owns (a job's events and checkpoints, a response's
            # input items): what it names the job produced is the caller's too
            items = [item for item in body["data"] if isinstance(item, dict)]
            checkpoints = [
                (i["fine_tuned_model_checkpoint"], "model") for i in items if _named(i, "fine_tuned_model_checkpoint")
            ]
            if checkpoints:
                await self.record(checkpoints, owner)
            return
        await self.record(_created(exchange, body, target, kind), owner)

    async def _list(self, exchange: Exchange, call_next: Handler, owner: str, collection: str) -> Reply:
        """A collection's list, of the caller's own objects only, rebuilt: the upstream's pages
        are read on (``after`` its last id) until ``limit`` of the caller's objects and one more
        are found, the upstream has no more, or :data:`MAX_LIST_PAGES` were read; ``first_id``,
        ``last_id`` and ``has_more`` then describe what the caller may see. A cursor
        (``after``, ``before``) must be one of the caller's own objects."""
        params = parse_qsl(exchange.query, keep_blank_values=True)
        for name, value in params:  # the models list has no cursor: nothing to check there
            cursor = name in ("after", "before") and value and collection != "models"
            if cursor and await self.owner_of(value) != owner:
                exchange.notes[FERRYMAN_MADE] = True
                exchange.error = "not_found"
                return _not_found(collection, value, name)
        asked = next((v for k, v in params if k == "limit"), None)
        limit = int(asked) if asked is not None and asked.isdigit() and 0 < int(asked) <= 10_000 else None
        mine: list[Any] = []
        seen: set[str] = set()
        # The upstream is read in large pages whatever the caller's limit (another key's objects
        # may be many), and the list cut to that limit once rebuilt.
        scan = [(k, v) for k, v in params if k != "limit"] + [("limit", str(max(limit or 0, SCAN_PAGE)))]
        page = dataclasses.replace(exchange, query=urlencode(scan), notes={})
        wanted, cut_short = limit or 1, False
        for pages in range(1, MAX_LIST_PAGES + 1):
            reply = await call_next(page)
            if reply.status >= 400 or reply.is_stream:
                return reply
            known, body = parsed_reply(page, reply.body)
            if not known:
                body = reply.json()
            if not (isinstance(body, dict) and body.get("object") == "list" and isinstance(body.get("data"), list)):
                return reply
            data = [item for item in body["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)]
            fresh = [item for item in data if item["id"] not in seen]
            seen.update(item["id"] for item in fresh)
            own = await self.own_among([item["id"] for item in fresh], owner)
            mine.extend(item for item in fresh if item["id"] in own or _public(collection, item["id"]))
            await self.record([p for item in fresh if item["id"] in own for p in _produced(item)], owner)
            wanted = limit or DEFAULT_LIMITS.get(collection, 20)  # asked for, or the API's default
            more = body.get("has_more") is True and bool(fresh)
            cut_short = pages == MAX_LIST_PAGES
            if len(mine) > wanted or not more:
                break
            after = [(k, v) for k, v in params if k not in ("after", "before", "limit")]
            after += [("after", fresh[-1]["id"]), ("limit", str(max(wanted, SCAN_PAGE)))]
            page = dataclasses.replace(exchange, query=urlencode(after), notes={})
        rebuilt = dict(body)  # the last page's other members, as the upstream sent them
        rebuilt["data"] = mine[:wanted]
        rebuilt["first_id"] = mine[0]["id"] if mine else None
        rebuilt["last_id"] = rebuilt["data"][-1]["id"] if mine else None
        rebuilt["has_more"] = len(mine) > wanted or (more and cut_short)
        reply.body = orjson.dumps(rebuilt)
        return reply

    async def _watch_stream(self, stream: AsyncIterator[bytes], owner: str) -> AsyncIterator[bytes]:
        """A streamed response's id, and each of its output items' ids, are recorded before the
        event carrying them reaches the caller (a stored response's items can be referenced
        later, by their owner only)."""
        decoder = SSEDecoder()
        stored = True
        async for chunk in stream:
            if stored:
                for event in decoder.feed(chunk):
                    payload = _event_json(event.data)
                    response = payload.get("response")
                    if isinstance(response, dict) and isinstance(response.get("id"), str):
                        stored = response.get("store", True) is not False
                        if stored:
                            await self.record([(response["id"], "response")], owner)
                    item = payload.get("item")
                    if stored and isinstance(item, dict) and isinstance(item.get("id"), str):
                        await self.record([(item["id"], "item")], owner)
            yield chunk


def _event_json(data: str) -> dict[str, Any]:
    if '"response"' not in data and '"item"' not in data:
        return {}
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _named(item: dict[str, Any], field: str) -> bool:
    return isinstance(item.get(field), str)


def _public(collection: str, object_id: str) -> bool:
    """Listed to every key: the base models (a fine-tuned one is its maker's)."""
    return collection == "models" and not objects.fine_tuned(object_id)


def _produced(body: dict[str, Any]) -> list[tuple[str, str]]:
    """What a batch or a job made (files, the fine-tuned model), as ``(id, kind)``."""
    found: list[tuple[str, str]] = []
    for field, kind in PRODUCED.items():
        value = body.get(field)
        found.extend((v, kind) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return found


def _created(
    exchange: Exchange, body: dict[str, Any], target: tuple[str, str | None] | None, kind: str
) -> list[tuple[str, str]]:
    """The object a reply creates (a POST to a collection), and what it produced."""
    created = _produced(body)
    output = body.get("output") if kind == "response" and body.get("store", True) is not False else None
    if isinstance(output, list):  # a stored response's output items can be referenced later
        created += [(i["id"], "item") for i in output if isinstance(i, dict) and isinstance(i.get("id"), str)]
    object_id = body.get("id")
    creates = exchange.method == "POST" and (target is None or target[1] is None) and isinstance(object_id, str)
    if creates and (kind != "response" or body.get("store", True) is not False):
        created.append((str(object_id), kind))
    return created
