"""The Responses API's stream events for a finished Response object.

``response.created`` → ``response.in_progress`` → per output item ``output_item.added`` …
(content parts, deltas of about one token each, ``.done`` events) … ``output_item.done`` →
``response.completed`` (or ``response.incomplete`` / ``response.failed``) carrying the whole
response. ``sequence_number`` is added by :class:`ferryman.mock.sse.EventStream`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from ferryman.mock.replies import pieces
from ferryman.tokens import encoding_name_for_model, get_encoding

Event = dict[str, Any]

_FINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.failed",
}


def shell(response: dict[str, Any], status: str = "in_progress") -> dict[str, Any]:
    """The response as it looks while output is still being generated.

    OpenAI sends ``"usage": null`` here, but its spec types ``usage`` as an object only; the
    mock leaves the key out, which the SDK reads the same way (``usage is None``).
    """
    out = {**response, "status": status, "output": [], "completed_at": None, "incomplete_details": None, "error": None}
    out.pop("usage", None)
    return out


def _obfuscation(delta: str) -> str:
    return secrets.token_urlsafe(16)[: max(1, 16 - len(delta))]


class _Deltas:
    def __init__(self, model: str, obfuscate: bool) -> None:
        self.model = model
        self.obfuscate = obfuscate

    def split(self, text: str) -> list[str]:
        return pieces(text, self.model)

    def extra(self, delta: str) -> dict[str, Any]:
        return {"obfuscation": _obfuscation(delta)} if self.obfuscate else {}

    def logprobs(self, piece: str) -> list[dict[str, Any]]:
        encoding = get_encoding(encoding_name_for_model(self.model))
        tokens = [encoding.decode_single_token_bytes(t) for t in encoding.encode(piece, disallowed_special=())]
        return [{"token": t.decode("utf-8", errors="replace"), "logprob": -0.01, "top_logprobs": []} for t in tokens]


def _done_logprobs(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp["token"],
            "logprob": lp["logprob"],
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in lp.get("top_logprobs", [])],
        }
        for lp in part.get("logprobs") or []
    ]


def _message(index: int, item: dict[str, Any], d: _Deltas) -> Iterator[Event]:
    at = {"item_id": item["id"], "output_index": index}
    yield {
        "type": "response.output_item.added",
        "output_index": index,
        "item": {**item, "status": "in_progress", "content": []},
    }
    for ci, part in enumerate(item["content"]):
        if part["type"] == "refusal":
            yield {
                "type": "response.content_part.added",
                **at,
                "content_index": ci,
                "part": {"type": "refusal", "refusal": ""},
            }
            for piece in d.split(part["refusal"]):
                yield {"type": "response.refusal.delta", **at, "content_index": ci, "delta": piece}
            yield {"type": "response.refusal.done", **at, "content_index": ci, "refusal": part["refusal"]}
        else:
            with_logprobs = bool(part.get("logprobs"))
            yield {
                "type": "response.content_part.added",
                **at,
                "content_index": ci,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            }
            for piece in d.split(part["text"]):
                yield {
                    "type": "response.output_text.delta",
                    **at,
                    "content_index": ci,
                    "delta": piece,
                    "logprobs": d.logprobs(piece) if with_logprobs else [],
                    **d.extra(piece),
                }
            yield {
                "type": "response.output_text.done",
                **at,
                "content_index": ci,
                "text": part["text"],
                "logprobs": _done_logprobs(part),
            }
        yield {"type": "response.content_part.done", **at, "content_index": ci, "part": part}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _function_call(index: int, item: dict[str, Any], d: _Deltas) -> Iterator[Event]:
    at = {"item_id": item["id"], "output_index": index}
    yield {
        "type": "response.output_item.added",
        "output_index": index,
        "item": {**item, "status": "in_progress", "arguments": ""},
    }
    for piece in d.split(item["arguments"]):
        yield {"type": "response.function_call_arguments.delta", **at, "delta": piece, **d.extra(piece)}
    yield {"type": "response.function_call_arguments.done", **at, "name": item["name"], "arguments": item["arguments"]}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _reasoning(index: int, item: dict[str, Any], d: _Deltas) -> Iterator[Event]:
    at = {"item_id": item["id"], "output_index": index}
    yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "summary": []}}
    for si, part in enumerate(item.get("summary") or []):
        yield {
            "type": "response.reasoning_summary_part.added",
            **at,
            "summary_index": si,
            "part": {"type": "summary_text", "text": ""},
        }
        for piece in d.split(part["text"]):
            yield {
                "type": "response.reasoning_summary_text.delta",
                **at,
                "summary_index": si,
                "delta": piece,
                **d.extra(piece),
            }
        yield {"type": "response.reasoning_summary_text.done", **at, "summary_index": si, "text": part["text"]}
        yield {"type": "response.reasoning_summary_part.done", **at, "summary_index": si, "part": part}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def events(final: dict[str, Any], obfuscate: bool = True) -> Iterator[Event]:
    """Every event of a stream that produces ``final``, in order."""
    yield {"type": "response.created", "response": shell(final)}
    yield {"type": "response.in_progress", "response": shell(final)}
    yield from output_events(final, obfuscate)
    yield {"type": _FINAL.get(final["status"], "response.completed"), "response": final}


def output_events(final: dict[str, Any], obfuscate: bool = True) -> Iterator[Event]:
    d = _Deltas(final["model"], obfuscate)
    for index, item in enumerate(final.get("output") or []):
        if item.get("type") == "message":
            yield from _message(index, item, d)
        elif item.get("type") == "function_call":
            yield from _function_call(index, item, d)
        elif item.get("type") == "reasoning":
            yield from _reasoning(index, item, d)
        else:
            yield {"type": "response.output_item.added", "output_index": index, "item": item}
            yield {"type": "response.output_item.done", "output_index": index, "item": item}
