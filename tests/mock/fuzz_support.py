"""Helpers for ``test_fuzz.py``: the spec as Schemathesis should read it, OpenAI's error shape, JSON values."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema_rs
import orjson
from hypothesis import strategies as st

from ferryman.mock import spec

AUTH = {"Authorization": "Bearer sk-fuzz"}

# OpenAI's own definition (``components.responses`` in openapi.yaml), for when the vendored subset lacks it.
TOO_MANY_REQUESTS = {
    "description": "The request was rejected because a rate limit was exceeded.",
    "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def fuzz_document() -> dict[str, Any]:
    """The spec subset the mock serves, as Schemathesis should read it (a copy; the mock's own is untouched).

    Each repair is a no-op once the vendored subset (``scripts/vendor_openapi.py``) carries it itself.

    1. ``#/components/responses/TooManyRequests`` is referenced (the ``429`` of the inference operations) but the
       subset keeps only ``components.schemas``: Schemathesis refuses every operation with the dangling ``$ref``.

    Spec quirks that would make Schemathesis's response-schema check report false positives:

    2. ``text/event-stream`` content: OpenAI's ``schema`` describes the JSON in each event's ``data``; OpenAPI
       (and Schemathesis) read it as the schema of the SSE event itself (``{"event": ..., "data": "<string>"}``),
       so every stream would fail. Rewritten as an OpenAPI 3.2 ``itemSchema`` whose ``data`` is JSON matching
       that schema, or the chat stream's closing ``[DONE]``.
    3. Every ``discriminator`` (``Tool``, ``OutputItem``, ``ChatCompletionMessageToolCalls.items``, ...) has
       ``propertyName: type`` and no ``mapping``, which in OpenAPI means the value names the schema
       (``"ChatCompletionMessageToolCall"``), not OpenAI's ``"function"``: Schemathesis reports "Unknown discriminator
       value" for every tool call. Dropped; the ``oneOf`` / ``anyOf`` they annotate still validate each variant.
    4. ``Embedding.embedding`` is only an array of numbers, yet with ``encoding_format: "base64"`` (which
       ``CreateEmbeddingRequest`` offers) OpenAI sends a base64 string: a string is allowed too.
    5. ``CreateCompletionResponse`` ``logprobs.token_logprobs`` / ``top_logprobs`` items may not be null, yet with
       ``echo: true`` OpenAI gives the first prompt token none (``"token_logprobs": [null, ...]``): null is allowed.
    """
    doc = copy.deepcopy(spec.document())
    if '"$ref": "#/components/responses/TooManyRequests"' in json.dumps(doc["paths"]):
        doc["components"].setdefault("responses", {}).setdefault("TooManyRequests", TOO_MANY_REQUESTS)
    for item in doc["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict):
                for response in operation.get("responses", {}).values():
                    _sse_item_schema(response.get("content", {}))
    _drop_unmapped_discriminators(doc)
    schemas = doc["components"]["schemas"]
    vector = schemas.get("Embedding", {}).get("properties", {}).get("embedding", {})
    if vector.get("type") == "array":
        schemas["Embedding"]["properties"]["embedding"] = {"anyOf": [vector, {"type": "string"}]}
    choice = schemas.get("CreateCompletionResponse", {}).get("properties", {}).get("choices", {}).get("items", {})
    for variant in choice.get("properties", {}).get("logprobs", {}).get("anyOf", []):
        for key in ("token_logprobs", "top_logprobs"):
            items = variant.get("properties", {}).get(key, {}).get("items")
            if isinstance(items, dict) and isinstance(items.get("type"), str):
                items["type"] = [items["type"], "null"]
    return doc


def _drop_unmapped_discriminators(node: Any) -> None:
    if isinstance(node, dict):
        found = node.get("discriminator")
        if isinstance(found, dict) and "mapping" not in found and ("oneOf" in node or "anyOf" in node):
            del node["discriminator"]
        for value in node.values():
            _drop_unmapped_discriminators(value)
    elif isinstance(node, list):
        for value in node:
            _drop_unmapped_discriminators(value)


def _sse_item_schema(content: dict[str, Any]) -> None:
    media = content.get("text/event-stream")
    if not media or "itemSchema" in media or "schema" not in media:
        return
    payload = {"type": "string", "contentMediaType": "application/json", "contentSchema": media.pop("schema")}
    media["itemSchema"] = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {"if": {"const": "[DONE]"}, "else": payload}},
    }


def error_problems(status: int, content_type: str, raw: bytes) -> list[str]:
    """How an error reply departs from OpenAI's ``{"error": {message, type, param, code}}`` (empty when it doesn't)."""
    if not content_type.startswith("application/json"):
        return [f"{status} reply is {content_type or 'untyped'}, not JSON: {raw[:200]!r}"]
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [f"{status} reply is not valid JSON: {raw[:200]!r}"]
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return [f"{status} reply is not {{'error': {{...}}}}: {raw[:300]!r}"]
    error = body["error"]
    problems = []
    if set(error) != {"message", "type", "param", "code"}:
        problems.append(f"error keys are {sorted(error)}, not code/message/param/type")
    for name, allowed in (
        ("message", (str,)),
        ("type", (str,)),
        ("param", (str, type(None))),
        ("code", (str, type(None))),
    ):
        if name in error and not isinstance(error[name], allowed):
            problems.append(f"error.{name} is {type(error[name]).__name__}: {error[name]!r}")
    if isinstance(error.get("message"), str) and not error["message"]:
        problems.append("error.message is empty")
    problems.extend(spec.response_errors("ErrorResponse", body))
    return problems


def response_schema_name(document: dict[str, Any], method: str, path: str, status: int) -> str | None:
    """The component schema the spec gives for a JSON reply to ``method path`` (a spec path) with ``status``."""
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    response = operation.get("responses", {}).get(str(status), {})
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[1] if ref.startswith("#/components/schemas/") else None


class BodyChecker:
    """JSON Schema 2020-12 validation of reply bodies against ``document``'s components, ``format`` not asserted."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._validators: dict[str, Any] = {}

    def violations(self, method: str, path: str, status: int, raw: bytes) -> list[str]:
        name = response_schema_name(self.document, method, path, status)
        if name is None:
            return []
        if name not in self._validators:
            root = {"components": self.document["components"], "$ref": f"#/components/schemas/{name}"}
            self._validators[name] = jsonschema_rs.Draft202012Validator(root)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [f"{status} reply is not JSON: {raw[:200]!r}"]
        return [
            f"{name} at {list(e.instance_path)}: {e.message[:300]}" for e in self._validators[name].iter_errors(body)
        ]


def post_paths() -> list[str]:
    """Every POST path the spec subset declares (templates such as ``/batches/{batch_id}/cancel``)."""
    return [path for path, item in spec.document()["paths"].items() if "post" in item]


def concrete(path: str) -> str:
    """``path`` with its parameters filled by an id that names nothing."""
    return re.sub(r"\{[^}]+\}", "fuzz_missing_id", path)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, lists and objects, nested a few levels."""
    return st.recursive(
        _SCALARS,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=12,
    )


def json_objects_with_known_keys(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that use the request schema's own property names, with values of any type."""
    names = st.sampled_from(keys) | st.text(max_size=12) if keys else st.text(max_size=12)
    return st.dictionaries(names, json_values(), max_size=6)


def request_properties(path: str) -> list[str]:
    """Top-level property names of the JSON request body the spec declares for ``POST path``."""
    operation = spec.document()["paths"].get(path, {}).get("post", {})
    content = operation.get("requestBody", {}).get("content", {})
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    if not ref.startswith("#/components/schemas/"):
        return []
    return sorted(_properties(spec.schema(ref.rsplit("/", 1)[1]), set()))


def _properties(schema: dict[str, Any], seen: set[str]) -> set[str]:
    names = set(schema.get("properties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(key, []):
            ref = part.get("$ref", "")
            if ref.startswith("#/components/schemas/") and ref not in seen:
                seen.add(ref)
                names |= _properties(spec.schema(ref.rsplit("/", 1)[1]), seen)
            elif not ref:
                names |= _properties(part, seen)
    return names
