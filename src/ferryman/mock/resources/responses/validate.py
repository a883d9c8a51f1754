"""Request validation for ``POST /v1/responses``, with the spec's over-strict spots relaxed.

Read literally, OpenAI's spec rejects requests the API accepts every day:

- its input item union (``InputItem``) is a ``oneOf`` whose members overlap
  (``{"role": "user", "content": [...]}`` is both an ``EasyInputMessage`` and an
  ``InputMessage``); OpenAPI's ``discriminator`` picks one, JSON Schema's ``oneOf`` fails.
  Here it is an ``anyOf``; every other ``oneOf`` keeps its meaning;
- it lists as required fields the API fills in: a function tool's ``strict`` and
  ``parameters``, an input image's ``detail``, an assistant message's ``id`` and ``status``
  and its ``output_text`` parts' ``annotations`` and ``logprobs``.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema_rs

from ferryman.mock import spec

# schema name -> required fields the API does not actually require in a request
_DEFAULTED = {
    "FunctionTool": {"strict", "parameters"},
    "InputImageContent": {"detail"},
    "OutputTextContent": {"annotations", "logprobs"},
    "OutputMessage": {"id", "status"},
}


# unions whose members overlap: any member may match
_OVERLAPPING = ("InputItem",)


@cache
def _validator() -> Any:
    schemas = copy.deepcopy(spec.document()["components"]["schemas"])
    for name in _OVERLAPPING:
        if "oneOf" in schemas.get(name, {}):
            schemas[name]["anyOf"] = schemas[name].pop("oneOf")
    for name, fields in _DEFAULTED.items():
        target = schemas.get(name, {})
        if "required" in target:
            target["required"] = [f for f in target["required"] if f not in fields]
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": {"schemas": schemas},
        "$ref": "#/components/schemas/CreateResponse",
    }
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)  # e.g. an MCP server_url is a URI


def check_create(body: Any) -> None:
    """Raise an OpenAI-format 400 for the most specific problem in a create request."""
    spec.check_with(_validator(), body)
