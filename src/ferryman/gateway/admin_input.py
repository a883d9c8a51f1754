"""What the admin API accepts, and how it answers what it cannot.

Input is checked strictly, before anything is written; a refusal is a 400 in OpenAI's shape
whose ``param`` names the field:

- a body, where a route takes one, is a JSON object of at most 64 KiB (larger: 413) holding only
  that route's fields; routes that take none (rotate, revoke, DELETE) take an empty body or ``{}``;
  query arguments other than a route's own are refused too
- ``name`` (required on create; also the ``{name}`` of ``PUT /admin/teams``) and ``team``:
  strings of 1 to 128 printable characters, any but ``/`` (no control characters, no line
  breaks; surrounding spaces are dropped)
- ``rpm`` 1 to 1,000,000 and ``tpm`` 1 to 1,000,000,000: JSON integers (not ``true``, not ``5.0``,
  not ``"5"``); ``null`` is no limit (on PATCH: remove the limit)
- ``budget``: ``"AMOUNT/day"`` or ``"AMOUNT/month"`` (``$`` allowed, period month when left out),
  or a JSON number of USD per month; the amount a finite decimal from 0.000001 to 1,000,000 (so no
  ``NaN``, ``inf``, ``1e999999999``, ``0``, ``-5`` or ``1e-40``), cut to ten decimal places, the
  text at most 64 characters; ``null`` is no budget (on PATCH: remove it)
- ``models``: a list (or a comma-separated string) of 1 to 100 model names or globs, each 1 to
  128 printable ASCII characters without spaces; ``null`` is every model
- ``tags``: billing tags, an object ``{"project": "apollo"}`` (or ``"project=apollo,env=prod"``)
  of at most 16; names 1 to 64 letters, digits, ``_ . -`` (lower-cased), values 1 to 128
  printable ASCII characters but space, ``,`` and ``=``; ``team`` is reserved (the key's team);
  ``null`` is none. ``tag:`` budget rules count a key's tags and its team's, never a caller's
  ``ferryman-tags`` header
- ``expires``: a duration string, a whole number and one of ``s m h d w`` (``30d``, ``12h``),
  from 1 second to 3650 days; ``null`` is never (on PATCH: remove the expiry)
- ``days`` 1 to 366, ``limit`` 1 to 1000, ``hours`` 1 to 8784: whole numbers

A name a live key has already is a 409 ``name_taken`` (``param: "name"``, naming the key that
has it), not a 400: the input is well formed, the store's state refuses it. A key reference that
fits several keys (``/admin/keys/{id}``) is a 400 ``key_ambiguous`` listing their ids.

A failure that is not the caller's answers in the same shape: 503 ``store_unavailable`` when
the database (or Redis) cannot be reached or used, 503 ``disk_full`` when the disk is full
(:mod:`ferryman.store.faults`), 500 ``server_error`` otherwise, logged once
without a traceback or a secret (:func:`failure_response`).
"""

from __future__ import annotations

import logging
import math
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferryman.errors import OpenAIError
from ferryman.gateway.key_rules import LIMIT_MAX, check_limit, check_name, check_tags, parse_budget, parse_duration
from ferryman.store.faults import describe, infrastructure_failure

if TYPE_CHECKING:
    from ferryman.gateway.key_lookup import KeyAmbiguous, NameTaken

log = logging.getLogger("ferryman.gateway.admin")

MAX_BODY = 64 * 1024
MAX_MODELS = 100
MODEL_MAX = 128
_MODEL = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_WHOLE = re.compile(r"-?[0-9]{1,12}")
NO_FIELDS: frozenset[str] = frozenset()
KEY_FIELDS = frozenset({"name", "team", "rpm", "tpm", "budget", "models", "tags", "expires"})
KEY_UPDATE_FIELDS = frozenset({"rpm", "tpm", "budget", "models", "tags", "expires"})
TEAM_FIELDS = frozenset({"rpm", "tpm", "budget", "tags"})


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value, default=str), status, media_type="application/json")


def error_response(error: OpenAIError) -> Response:
    response = json_response(error.body(), error.status)
    response.headers.update(error.headers)
    return response


def bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, None)


def shown(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit else name[:limit] + "…"


def name_taken(error: NameTaken) -> OpenAIError:
    """409: a live key (or a team) has the name already."""
    held = f" ({error.holder})" if error.holder else ""
    fix = "use another name or revoke it first" if error.kind == "key" else "use another name"
    message = f"A {error.kind} named {shown(error.name)!r} already exists{held}: {fix}."
    return OpenAIError(409, message, "invalid_request_error", "name", "name_taken")


def ambiguous(error: KeyAmbiguous) -> OpenAIError:
    """400: the reference fits several keys; their ids, so the caller can pick one."""
    ids = ", ".join(k.id for k in error.candidates)
    message = f"{shown(error.ref)!r} fits several keys ({ids}): name one by its id."
    return OpenAIError(400, message, "invalid_request_error", "id", "key_ambiguous")


def check_query(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        listed = ", ".join(repr(shown(u)) for u in unknown)
        raise bad(f"unknown query argument(s) {listed}: this route takes {takes}", shown(unknown[0]))


def int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw.strip()):
        raise bad(f"{name} must be a whole number from {low} to {high}", name)
    value = int(raw)
    if not low <= value <= high:
        raise bad(f"{name} must be a whole number from {low} to {high}, got {value}", name)
    return value


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def too_large() -> OpenAIError:
    return OpenAIError(
        413, f"The request body is larger than {MAX_BODY} bytes.", "invalid_request_error", None, "request_too_large"
    )


async def body_of(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object a route takes: no other fields than ``allowed``."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise bad("The request body must be a JSON object.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        listed = ", ".join(repr(shown(u)) for u in unknown)
        if allowed:
            message = f"unknown field(s) {listed}: this route takes {', '.join(sorted(allowed))}"
        else:
            message = f"unknown field(s) {listed}: this route takes no fields"
        raise bad(message, shown(unknown[0]))
    return value


def name_of(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise bad(f"{what} must be a string", what)
    try:
        return check_name(value, what)
    except ValueError as error:
        raise bad(str(error), what) from None


def limit_of(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be a whole number from 1 to {LIMIT_MAX[name]:,} (a JSON integer)", name)
    try:
        check_limit(name, value)
    except ValueError as error:
        raise bad(str(error), name) from None
    return value


def budget_of(body: dict[str, Any]) -> tuple[Decimal, str] | None:
    value = body.get("budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad('budget must be a string like "50/month" or "5/day" (or a number: USD per month)', "budget")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad("a budget must be from $0.000001 to $1,000,000 per month (a finite amount)", "budget")
    try:
        return parse_budget(value if isinstance(value, str) else str(value))
    except ValueError as error:
        raise bad(str(error), "budget") from None


def models_of(body: dict[str, Any]) -> list[str] | None:
    value = body.get("models")
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise bad("models must be a list of model names or globs (strings)", "models")
    if not 1 <= len(value) <= MAX_MODELS:
        raise bad(
            f"models must list from 1 to {MAX_MODELS} model names or globs, got {len(value)} (null: every model)",
            "models",
        )
    models = [m.strip() for m in value]
    for i, model in enumerate(models):
        if not model or len(model) > MODEL_MAX or not _MODEL.fullmatch(model):
            raise bad(
                f"models[{i}] must be 1 to {MODEL_MAX} printable ASCII characters without spaces, "
                f"got {shown(model, 40)!r}",
                "models",
            )
    return models


def tags_of(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("tags")
    if value is not None and not isinstance(value, dict | str):
        raise bad('tags must be an object like {"project": "apollo"} (or "project=apollo,env=prod")', "tags")
    try:
        return check_tags(value)
    except ValueError as error:
        raise bad(str(error), "tags") from None


def expires_of(body: dict[str, Any]) -> float | None:
    value = body.get("expires")
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad('expires must be a duration string like "30d", "12h" or "2w" (null: never)', "expires")
    try:
        return parse_duration(value)
    except ValueError as error:
        raise bad(str(error), "expires") from None


def failure_response(request: Request, error: BaseException) -> Response:
    """An unexpected error in an admin route: logged once, answered in OpenAI's shape."""
    log.error("admin API: %s %s failed: %s", request.method, request.url.path, describe(error))
    named = infrastructure_failure(error)
    if named is not None:
        return error_response(named)
    return error_response(
        OpenAIError(
            500,
            "The gateway had an error while processing your request.",
            "server_error",
            None,
            "server_error",
        )
    )
