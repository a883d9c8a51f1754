"""OpenAI's OpenAPI spec (the part the mock serves) and validators compiled from it.

``data/openapi-subset.json`` is cut from OpenAI's own ``openapi.yaml`` by
``scripts/vendor_openapi.py``; its ``info.x-ferryman-source`` names the commit.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs

from ferryman.errors import OpenAIError, invalid_request


@cache
def document() -> dict[str, Any]:
    raw = resources.files("ferryman.mock.data").joinpath("openapi-subset.json").read_text()
    doc: dict[str, Any] = json.loads(raw)
    return doc


@cache
def validator(schema_name: str) -> Any:
    """A compiled JSON Schema 2020-12 validator for ``components.schemas[schema_name]``."""
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document()["components"],
        "$ref": f"#/components/schemas/{schema_name}",
    }
    return jsonschema_rs.Draft202012Validator(root)


def schema(schema_name: str) -> dict[str, Any]:
    found: dict[str, Any] = document()["components"]["schemas"][schema_name]
    return found


def param_path(parts: list[str | int]) -> str | None:
    """``["messages", 0, "role"]`` → ``"messages[0].role"`` (OpenAI's ``param`` style)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


_REQUIRED = re.compile(r'^"?(?P<name>[^"]+)"? is a required property')


_VERDICTS = (
    " has more than",
    " has less than",
    " is not valid under",
    " is not of type",
    " is not one of",
    " is too long",
    " is too short",
    " is longer than",
    " is shorter than",
    " is greater than",
    " is less than",
    " does not match",
    " is not a multiple",
    " was expected",
)


def _without_long_instance(message: str, limit: int = 200) -> str:
    """jsonschema messages start with the offending value; a huge one says nothing useful."""
    if len(message) <= limit:
        return message
    cut = max(message.rfind(verdict) for verdict in _VERDICTS)
    if cut > 0:
        return "The value" + message[cut:][:limit]
    return message[:limit] + "…"


def _describe(error: Any) -> OpenAIError:
    path = list(error.instance_path)
    message: str = error.message
    match = _REQUIRED.match(message)
    if match:
        name = match.group("name")
        param = param_path([*path, name])
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    param = param_path(path)
    message = _without_long_instance(message)
    where = f"'{param}'" if param else "the request body"
    return invalid_request(f"Invalid value for {where}: {message}", param, "invalid_value")


def check(schema_name: str, body: Any) -> None:
    """Raise an OpenAI-format 400 for the most specific problem, if ``body`` is invalid."""
    check_with(validator(schema_name), body)


def check_with(v: Any, body: Any) -> None:
    """:func:`check` with a validator of the caller's (e.g. one with relaxed schemas)."""
    if v.is_valid(body):
        return
    errors = list(v.iter_errors(body))
    # Prefer a missing required field, then the deepest error: the most useful to a reader.
    errors.sort(key=lambda e: (not _REQUIRED.match(e.message), -len(list(e.instance_path))))
    raise _describe(errors[0])


def response_errors(schema_name: str, body: Any) -> list[str]:
    """Every way ``body`` fails the spec's schema (empty when valid); used by the tests."""
    return [
        f"{param_path(list(e.instance_path)) or '<root>'}: {e.message[:500]}"
        for e in validator(schema_name).iter_errors(body)
    ]


_INT_LIMIT = 2**63


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _INT_LIMIT:
        return int(value)
    if isinstance(value, list):
        return [_whole(v) if isinstance(v, (float, list)) else v for v in value]
    return value


def normalise_numbers(body: Any) -> Any:
    """Whole-number floats (``2.0``) as ints in a body's top-level fields and their lists.

    JSON Schema counts ``2.0`` as an integer, so a body that passed validation may carry
    floats where the spec says integer (``n``, ``top_logprobs``, token arrays…); handlers
    then see the ints they expect, as OpenAI's own server does.
    """
    if not isinstance(body, dict):
        return body
    for key, value in body.items():
        if isinstance(value, (float, list)):
            body[key] = _whole(value)
    return body
