"""Isolation of stored objects: a virtual key sees only the files, batches, fine-tuning jobs and
stored responses it created; another key's id answers 404, as if it did not exist.

Every object the upstream creates for a key is recorded (``owned_objects``) before its id
reaches the caller: on the create reply, on a streamed response's first event, and for the
files a batch or a job produces (output, error and result files), when the caller reads the
batch or job. Requests naming an object (in the path, or as ``input_file_id``,
``training_file``, ``validation_file``, ``previous_response_id`` in the body, or as a file inside
the input: :func:`named_files`) are checked before they leave; lists are filtered to the key's
own objects. The same holds for stored chat completions (``store: true``), conversations,
vector stores, uploads and containers.

Ownership never changes, so positive answers are kept in memory (bounded); the table is the
truth shared by every instance.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import Connection, insert, select

from ferryman.errors import OpenAIError
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.account import parsed_reply
from ferryman.pipeline.chain import Handler
from ferryman.sse import SSEDecoder
from ferryman.store import Store
from ferryman.store.tables import owned_objects

# The first path segment → (kind, the 404 message for an id)
COLLECTIONS: dict[str, tuple[str, Callable[[str], str]]] = {
    "files": ("file", lambda i: f"No such File object: {i}"),
    "batches": ("batch", lambda i: f"No batch found with id '{i}'."),
    "fine_tuning": ("ftjob", lambda i: f"Could not find fine-tune job: {i}"),
    "responses": ("response", lambda i: f"Response with id '{i}' not found."),
    "chat_completions": ("chatcmpl", lambda i: f"Completion with id '{i}' not found."),
    "conversations": ("conversation", lambda i: f"Conversation with id '{i}' not found."),
    "vector_stores": ("vector_store", lambda i: f"No vector store found with id '{i}'."),
    "uploads": ("upload", lambda i: f"No upload found with id '{i}'."),
    "containers": ("container", lambda i: f"Container with id '{i}' not found."),
}
# Body fields that name an object the caller must own.
REFERENCES = {
    "input_file_id": "files",
    "training_file": "files",
    "validation_file": "files",
    "previous_response_id": "responses",
}
# ``/responses/<name>`` paths that are not a response id (``POST /responses/input_tokens``).
RESPONSE_ACTIONS = frozenset({"input_tokens", "compact"})
# Fields of a batch or job whose files become the caller's too.
PRODUCED = ("output_file_id", "error_file_id", "result_files")
_CACHE_MAX = 100_000
# Upstream pages read for one list at most (another key's objects may fill many pages).
MAX_LIST_PAGES = 20


def _target(path: str) -> tuple[str, str | None] | None:
    """``/files/file-1/content`` → ("files", "file-1"); ``/files`` → ("files", None);
    ``/fine_tuning/jobs/ftjob-1/events`` → ("fine_tuning", "ftjob-1"); other paths → None."""
    parts = [p for p in path.split("/") if p]
    # Collections are told apart whatever their case: an upstream that ignored case must not
    # serve ``/Files/<another key's id>`` past the check.
    if parts:
        parts[0] = parts[0].lower()
        if len(parts) >= 2 and parts[0] in ("chat", "fine_tuning"):
            parts[1] = parts[1].lower()
    if len(parts) >= 2 and parts[0] == "chat" and parts[1] == "completions":
        parts = ["chat_completions", *parts[2:]]  # stored chat completions (store: true)
    if not parts or parts[0] not in COLLECTIONS:
        return None
    if parts[0] == "fine_tuning":
        if len(parts) < 2 or parts[1] != "jobs":
            return None  # checkpoints' permissions and the like: not per-key objects
        parts = parts[1:]
    if parts[0] == "responses" and len(parts) == 2 and parts[1] in RESPONSE_ACTIONS:
        return None  # an action on new input, not a stored response's id
    return parts[0] if parts[0] != "jobs" else "fine_tuning", (parts[1] if len(parts) > 1 else None)


def named_files(value: Any) -> Iterator[str]:
    """File ids named inside a request: ``input_file`` / ``input_image`` parts (Responses), a chat
    ``file`` part's ``file.file_id``, and ``file_ids`` lists (a code interpreter's container)."""
    if isinstance(value, list):
        for item in value:
            yield from named_files(item)
        return
    if not isinstance(value, dict):
        return
    kind = value.get("type")
    if kind in ("input_file", "input_image") and isinstance(value.get("file_id"), str):
        yield value["file_id"]
    elif kind == "file" and isinstance(value.get("file"), dict) and isinstance(value["file"].get("file_id"), str):
        yield value["file"]["file_id"]
    ids = value.get("file_ids")
    if isinstance(ids, list):
        yield from (i for i in ids if isinstance(i, str))
    for item in value.values():
        if isinstance(item, dict | list):
            yield from named_files(item)


def _not_found(collection: str, object_id: str, param: str | None = None) -> Reply:
    message = COLLECTIONS[collection][1]
    error = OpenAIError(404, message(object_id), "invalid_request_error", param, None)
    return Reply.of_json(404, error.body())


class Ownership:
    """The gateway's stage, placed right inside the audit stage."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, str] = {}  # object id → owner

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
        target = _target(exchange.path)
        if target is not None and target[1] is not None:
            collection, object_id = target[0], target[1]
            if await self.owner_of(object_id) != owner:
                exchange.notes[FERRYMAN_MADE] = True
                exchange.error = "not_found"
                return _not_found(collection, object_id)
        if exchange.method == "POST" and isinstance(exchange.json, dict):
            for field, collection in REFERENCES.items():
                value = exchange.json.get(field)
                if isinstance(value, str) and await self.owner_of(value) != owner:
                    exchange.notes[FERRYMAN_MADE] = True
                    exchange.error = "not_found"
                    return _not_found(collection, value, field)
            if b"file_id" in exchange.body:  # a file named inside the input is read as surely
                for value in named_files(exchange.json):
                    if await self.owner_of(value) != owner:
                        exchange.notes[FERRYMAN_MADE] = True
                        exchange.error = "not_found"
                        return _not_found("files", value)
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

    async def _after(self, exchange: Exchange, reply: Reply, owner: str, target: tuple[str, str | None] | None) -> None:
        seen, body = parsed_reply(exchange, reply.body)  # the account stage's parse, when it made one
        if not seen:
            body = reply.json()
        if not isinstance(body, dict):
            return
        collection = target[0] if target is not None else "responses"
        kind = COLLECTIONS[collection][0]
        if body.get("object") == "list" and isinstance(body.get("data"), list):
            return  # a list under an object the caller owns (a job's events, a response's input items)
        created: list[tuple[str, str]] = []
        object_id = body.get("id")
        creates = exchange.method == "POST" and (target is None or target[1] is None) and isinstance(object_id, str)
        if creates and (collection != "responses" or body.get("store", True) is not False):
            created.append((str(object_id), kind))
        for field in PRODUCED:
            value = body.get(field)
            for produced in value if isinstance(value, list) else [value]:
                if isinstance(produced, str):
                    created.append((produced, "file"))
        if created:
            await self.record(created, owner)

    async def _list(self, exchange: Exchange, call_next: Handler, owner: str, collection: str) -> Reply:
        """A collection's list, of the caller's own objects only, rebuilt: the upstream's pages
        are read on (``after`` its last id) until ``limit`` of the caller's objects and one more
        are found, the upstream has no more, or :data:`MAX_LIST_PAGES` were read; ``first_id``,
        ``last_id`` and ``has_more`` then describe what the caller may see. A cursor
        (``after``, ``before``) must be one of the caller's own objects."""
        params = parse_qsl(exchange.query, keep_blank_values=True)
        for name, value in params:
            if name in ("after", "before") and value and await self.owner_of(value) != owner:
                exchange.notes[FERRYMAN_MADE] = True
                exchange.error = "not_found"
                return _not_found(collection, value, name)
        asked = next((v for k, v in params if k == "limit"), None)
        limit = int(asked) if asked is not None and asked.isdigit() and 0 < int(asked) <= 10_000 else None
        mine: list[Any] = []
        seen: set[str] = set()
        page = exchange
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
            mine.extend(item for item in fresh if item["id"] in own)
            wanted = limit or max(len(body["data"]), 1)  # asked for, or the upstream's own page size
            more = body.get("has_more") is True and bool(fresh)
            cut_short = pages == MAX_LIST_PAGES
            if len(mine) > wanted or not more:
                break
            after = [(k, v) for k, v in params if k not in ("after", "before")] + [("after", fresh[-1]["id"])]
            page = dataclasses.replace(exchange, query=urlencode(after), notes={})
        rebuilt = dict(body)  # the last page's other members, as the upstream sent them
        rebuilt["data"] = mine[:wanted]
        rebuilt["first_id"] = mine[0]["id"] if mine else None
        rebuilt["last_id"] = rebuilt["data"][-1]["id"] if mine else None
        rebuilt["has_more"] = len(mine) > wanted or (more and cut_short)
        reply.body = orjson.dumps(rebuilt)
        return reply

    async def _watch_stream(self, stream: AsyncIterator[bytes], owner: str) -> AsyncIterator[bytes]:
        """A streamed response's id is recorded before the event carrying it reaches the caller."""
        decoder = SSEDecoder()
        found = False
        async for chunk in stream:
            if not found:
                for event in decoder.feed(chunk):
                    data = event.data
                    if '"response"' not in data:
                        continue
                    try:
                        payload = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    response = payload.get("response") if isinstance(payload, dict) else None
                    if isinstance(response, dict) and isinstance(response.get("id"), str):
                        if response.get("store", True):
                            await self.record([(response["id"], "response")], owner)
                        found = True
                        break
            yield chunk
