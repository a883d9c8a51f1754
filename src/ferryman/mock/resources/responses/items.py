"""Input items as the Responses API stores and lists them, and the context of earlier turns.

A request's ``input`` (a string, or a list of messages and items in their many accepted
shapes) becomes a list of item resources with ids (``msg_…``, ``fc_…``), as
``GET /v1/responses/{id}/input_items`` returns them. Stored responses keep those items under
a private key (``_input_items``) that :func:`public` strips.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from ferryman.errors import invalid_request
from ferryman.mock.state import ObjectStore

KIND = "responses"
INPUT_KEY = "_input_items"


def new_id(prefix: str) -> str:
    """An id shaped like OpenAI's Responses ids: a prefix and 48 hex digits."""
    return prefix + secrets.token_hex(24)


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored object without the mock's private keys (those starting with ``_``)."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _input_part(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "input_text", "text": part}
    if not isinstance(part, dict):
        return {"type": "input_text", "text": ""}
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "input_text", "text": part.get("text") or ""}
    if kind == "input_image":
        return {
            "type": "input_image",
            "detail": part.get("detail") or "auto",
            "file_id": part.get("file_id"),
            "image_url": part.get("image_url"),
        }
    if kind == "input_file":
        out = {"type": "input_file", "file_id": part.get("file_id")}
        out.update({k: v for k, v in part.items() if k in ("file_data", "file_url", "filename")})
        return out
    return copy.deepcopy(part)


def _output_part(part: Any) -> dict[str, Any]:
    if isinstance(part, dict) and part.get("type") == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal") or ""}
    text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else ""
    out: dict[str, Any] = {"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}
    if isinstance(part, dict):
        out["annotations"] = part.get("annotations") or []
        out["logprobs"] = part.get("logprobs") or []
    return out


def _message(item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role", "user")
    content = item.get("content")
    parts = content if isinstance(content, list) else [content if isinstance(content, str) else ""]
    if role == "assistant":
        out = {
            "id": item.get("id") or new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "status": item.get("status") or "completed",
            "content": [_output_part(p) for p in parts],
        }
        if item.get("phase") is not None:
            out["phase"] = item["phase"]
        return out
    return {
        "id": item.get("id") or new_id("msg_"),
        "type": "message",
        "role": role,
        "status": item.get("status") or "completed",
        "content": [_input_part(p) for p in parts],
    }


def _find_item(store: ObjectStore, item_id: str) -> dict[str, Any] | None:
    for obj in store.all(KIND):
        for item in [*obj.get(INPUT_KEY, []), *obj.get("output", [])]:
            if isinstance(item, dict) and item.get("id") == item_id:
                return copy.deepcopy(item)
    return None


def to_items(value: Any, store: ObjectStore) -> list[dict[str, Any]]:
    """A request's ``input`` as item resources, each with an id."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message({"role": "user", "content": value})]
    items: list[dict[str, Any]] = []
    for index, raw in enumerate(value if isinstance(value, list) else []):
        if not isinstance(raw, dict):
            continue
        kind = raw.get("type")
        if kind == "message" or (kind is None and "role" in raw):
            items.append(_message(raw))
        elif kind == "function_call":
            items.append(
                {
                    "id": raw.get("id") or new_id("fc_"),
                    "type": "function_call",
                    "status": raw.get("status") or "completed",
                    "arguments": raw.get("arguments") or "",
                    "call_id": raw.get("call_id") or "",
                    "name": raw.get("name") or "",
                }
            )
        elif kind == "function_call_output":
            items.append(
                {
                    "id": raw.get("id") or new_id("fco_"),
                    "type": "function_call_output",
                    "status": raw.get("status") or "completed",
                    "call_id": raw.get("call_id") or "",
                    "output": raw.get("output") if raw.get("output") is not None else "",
                }
            )
        elif kind == "item_reference" or (kind is None and "id" in raw):
            found = _find_item(store, str(raw.get("id")))
            if found is None:
                raise invalid_request(f"Item with id '{raw.get('id')}' not found.", f"input[{index}].id")
            items.append(found)
        else:
            item = copy.deepcopy(raw)
            item.setdefault("id", new_id("item_"))
            items.append(item)
    return items


def history(store: ObjectStore, previous_id: str | None) -> list[dict[str, Any]]:
    """The items of the earlier turns of a conversation, oldest first: for each stored
    response in the ``previous_response_id`` chain, its input items and then its output."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    while previous_id and previous_id not in seen:
        seen.add(previous_id)
        obj = store.get(KIND, previous_id)
        if obj is None:
            break
        chain.append(obj)
        previous_id = obj.get("previous_response_id")
    items: list[dict[str, Any]] = []
    for obj in reversed(chain):
        items.extend(obj.get(INPUT_KEY, []))
        items.extend(obj.get("output") or [])
    return items


def last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            texts = [p.get("text", "") for p in item.get("content", []) if isinstance(p, dict) and "text" in p]
            return "\n".join(t for t in texts if isinstance(t, str))
    return ""
