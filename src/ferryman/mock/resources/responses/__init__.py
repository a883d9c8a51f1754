"""The Responses API: ``POST /v1/responses`` (plain, streamed, background), retrieve, delete,
cancel and input items.

Stored responses (``store`` defaults to true) live in the object store under ``responses``,
with their input items under the private key ``_input_items`` (stripped from every reply).
A background response is stored ``queued``, turns ``in_progress`` and then ``completed``
over ``batch_seconds / 6`` (1 s by default); its finished form waits under ``_pending``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ferryman import pricing
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.resources.responses.build import Turn, plan
from ferryman.mock.resources.responses.events import Event, events, shell
from ferryman.mock.resources.responses.items import INPUT_KEY, KIND, public
from ferryman.mock.resources.responses.validate import check_create
from ferryman.mock.sse import EventStream
from ferryman.mock.state import ObjectStore, now

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

PENDING_KEY = "_pending"
_RUNNING = ("queued", "in_progress")
_POLL_SECONDS = 0.05
_SERVER_ERROR = {
    "code": "server_error",
    "message": "The server had an error while processing your request. Sorry about that!",
}


def not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{response_id}' not found.", "invalid_request_error")


def _stored(call: Call) -> dict[str, Any]:
    response_id = str(call.path_params["response_id"])
    obj = call.app.store.get(KIND, response_id)
    if obj is None:
        raise not_found(response_id)
    return obj


def _tier(body: dict[str, Any]) -> str:
    asked = body.get("service_tier")
    return "flex" if asked == "flex" else "priority" if asked in ("priority", "fast") else ""


# -- create ----------------------------------------------------------------------------------


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    app = call.app
    turn = plan(body, app.store, app.fixtures, app.prompt_cache, call.key)
    call.usage = turn.usage
    call.cost_tier = _tier(body)
    call.cost_usd = pricing.cost_usd(turn.response["model"], turn.usage, tier=call.cost_tier)
    store = body.get("store") is not False
    if body.get("stream") is True:
        obfuscate = (body.get("stream_options") or {}).get("include_obfuscation") is not False
        return EventStream(_streamed(app.store, turn, store, obfuscate), "responses", call.fault)
    if body.get("background") is True:
        queued = shell(turn.response, "queued")
        app.store.put(KIND, {**queued, INPUT_KEY: turn.input_items, PENDING_KEY: turn.response})
        app.tasks.spawn(_lifecycle(app, queued["id"]))
        return json_response(queued)
    if store:
        app.store.put(KIND, {**turn.response, INPUT_KEY: turn.input_items})
    return json_response(turn.response)


def _streamed(store: ObjectStore, turn: Turn, keep: bool, obfuscate: bool) -> Iterator[Event]:
    """The stream's events; the stored response follows along. A stream that ends early (a
    cut connection, an injected error) leaves the stored response ``failed``."""
    final = turn.response
    if keep:
        store.put(KIND, {**shell(final), INPUT_KEY: turn.input_items})
    finished = False
    try:
        for event in events(final, obfuscate):
            if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                if keep:
                    store.put(KIND, {**final, INPUT_KEY: turn.input_items})
                finished = True
            yield event
    finally:
        if keep and not finished and store.get(KIND, final["id"]) is not None:
            store.put(KIND, {**shell(final, "failed"), "error": _SERVER_ERROR, INPUT_KEY: turn.input_items})


async def _lifecycle(app: MockApp, response_id: str) -> None:
    """queued → in_progress → completed, unless cancelled or deleted on the way."""
    while True:
        obj = app.store.get(KIND, response_id)
        if obj is None or obj.get("status") not in _RUNNING or PENDING_KEY not in obj:
            return
        await asyncio.sleep(app.settings.batch_seconds / 12)
        obj = app.store.get(KIND, response_id)
        if obj is None or obj.get("status") not in _RUNNING or PENDING_KEY not in obj:
            return
        if obj["status"] == "queued":
            app.store.put(KIND, {**obj, "status": "in_progress"})
            continue
        final = dict(obj[PENDING_KEY])
        if final.get("status") == "completed":
            final["completed_at"] = now()
        app.store.put(KIND, {**final, INPUT_KEY: obj.get(INPUT_KEY, [])})
        return


async def on_startup(app: MockApp) -> None:
    """Resume background responses that were running when the mock stopped."""
    for obj in app.store.all(KIND):
        if obj.get("status") in _RUNNING and PENDING_KEY in obj:
            app.tasks.spawn(_lifecycle(app, obj["id"]))


# -- retrieve, delete, cancel ------------------------------------------------------------------


async def retrieve(call: Call) -> Any:
    obj = _stored(call)
    if str(call.query.get("stream", "")).lower() != "true":
        return json_response(public(obj))
    raw_after = call.query.get("starting_after")
    try:
        after = int(raw_after) if raw_after is not None else -1
    except ValueError:
        raise invalid_request(f"Invalid 'starting_after': '{raw_after}' is not an integer.", "starting_after") from None
    return EventStream(_replay(call.app.store, obj["id"], after), "responses", call.fault, first_sequence=after + 1)


async def _replay(store: ObjectStore, response_id: str, after: int) -> AsyncIterator[Event]:
    """A stored response's events; for a running background response, once it has finished."""
    obj = store.get(KIND, response_id)
    while obj is not None and obj.get("status") in _RUNNING:
        await asyncio.sleep(_POLL_SECONDS)
        obj = store.get(KIND, response_id)
    if obj is None:
        return
    for index, event in enumerate(events(public(obj))):
        if index > after:
            yield event


async def delete(call: Call) -> Any:
    obj = _stored(call)
    call.app.store.delete(KIND, obj["id"])
    return json_response({"id": obj["id"], "object": "response", "deleted": True})


async def cancel(call: Call) -> Any:
    obj = _stored(call)
    if not obj.get("background"):
        raise invalid_request("Cannot cancel a synchronous response.")
    if obj.get("status") in _RUNNING:
        obj = {k: v for k, v in obj.items() if k != PENDING_KEY}
        obj["status"] = "cancelled"
        call.app.store.put(KIND, obj)
    return json_response(public(obj))


# -- input items -------------------------------------------------------------------------------


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise invalid_request(
            f"Invalid 'limit': expected an integer, but got '{raw}' instead.", "limit", "invalid_type"
        ) from None
    if limit < 1:
        raise invalid_request(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} instead.",
            "limit",
            "integer_below_min_value",
        )
    if limit > 100:
        raise invalid_request(
            f"Invalid 'limit': integer above maximum value. Expected a value <= 100, but got {limit} instead.",
            "limit",
            "integer_above_max_value",
        )
    return limit


async def input_items(call: Call) -> Any:
    obj = _stored(call)
    limit = _limit(call.query.get("limit"))
    order = call.query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid_request(
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", "order", "invalid_value"
        )
    items: list[dict[str, Any]] = list(obj.get(INPUT_KEY, []))
    if order == "desc":
        items.reverse()
    after = call.query.get("after")
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


ENDPOINTS = [
    # The body is checked against the spec with its over-strict spots relaxed (validate.py).
    Endpoint("POST", "/v1/responses", create, body="json", validate=check_create, inference=True),
    Endpoint("GET", "/v1/responses/{response_id}", retrieve),
    Endpoint("DELETE", "/v1/responses/{response_id}", delete),
    Endpoint("POST", "/v1/responses/{response_id}/cancel", cancel),
    Endpoint("GET", "/v1/responses/{response_id}/input_items", input_items),
]
