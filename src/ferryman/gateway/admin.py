"""The admin HTTP API (``/admin/…``): keys, teams, usage, budgets, recent requests.

Every route needs ``Authorization: Bearer <admin key>`` (``gateway.admin_key``, by default the
``FERRYMAN_ADMIN_KEY`` variable), compared in constant time; with no admin key set, the API
answers 403 to everyone. Errors are in OpenAI's shape. Nothing here ever returns a key's
secret except the one reply that creates or rotates it.

- ``POST /admin/keys`` ``{name, team?, rpm?, tpm?, budget?: "50/month", models?: [...], expires?: "30d"}``
- ``GET /admin/keys``, ``GET /admin/keys/{id}`` (with usage), ``PATCH /admin/keys/{id}``
- ``POST /admin/keys/{id}/rotate``, ``POST /admin/keys/{id}/revoke`` (also ``DELETE /admin/keys/{id}``)
- ``GET /admin/teams``, ``PUT /admin/teams/{name}`` ``{rpm?, tpm?, budget?}``, ``DELETE /admin/teams/{name}``
- ``GET /admin/usage?days=30``: spend and calls by day, model and key
- ``GET /admin/budgets``: each key's and team's budget, spent and reserved in the current window
- ``GET /admin/requests?limit=50``: recent calls (no bodies, no secrets)
- ``GET /admin/stats?hours=24``: calls, error and 429 rates

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
- ``expires``: a duration string, a whole number and one of ``s m h d w`` (``30d``, ``12h``),
  from 1 second to 3650 days; ``null`` is never (on PATCH: remove the expiry)
- ``days`` 1 to 366, ``limit`` 1 to 1000, ``hours`` 1 to 8784: whole numbers

An unexpected failure answers in the same shape: 503 ``store_unavailable`` when the database (or
Redis) cannot be reached or used, 500 ``server_error`` otherwise, logged once without a traceback
or a secret.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, case, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferryman.errors import OpenAIError, invalid_url
from ferryman.gateway.auth import admin_matches, presented_key
from ferryman.gateway.keys import (
    LIMIT_MAX,
    KeyError_,
    check_limit,
    check_name,
    parse_budget,
    parse_duration,
)
from ferryman.pipeline.budget import Budget, window_of
from ferryman.redact import secrets
from ferryman.store.tables import audit

if TYPE_CHECKING:
    from ferryman.gateway.app import Gateway

Handler = Callable[[Request], Awaitable[Response]]


log = logging.getLogger("ferryman.gateway.admin")

MAX_BODY = 64 * 1024
MAX_MODELS = 100
MODEL_MAX = 128
_MODEL = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_WHOLE = re.compile(r"-?[0-9]{1,12}")
NO_FIELDS: frozenset[str] = frozenset()
KEY_FIELDS = frozenset({"name", "team", "rpm", "tpm", "budget", "models", "expires"})
KEY_UPDATE_FIELDS = frozenset({"rpm", "tpm", "budget", "models", "expires"})
TEAM_FIELDS = frozenset({"rpm", "tpm", "budget"})
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value, default=str), status, media_type="application/json")


def error_response(error: OpenAIError) -> Response:
    response = json_response(error.body(), error.status)
    response.headers.update(error.headers)
    return response


def _bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, None)


def _shown(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit else name[:limit] + "…"


def _check_query(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        listed = ", ".join(repr(_shown(u)) for u in unknown)
        raise _bad(f"unknown query argument(s) {listed}: this route takes {takes}", _shown(unknown[0]))


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw.strip()):
        raise _bad(f"{name} must be a whole number from {low} to {high}", name)
    value = int(raw)
    if not low <= value <= high:
        raise _bad(f"{name} must be a whole number from {low} to {high}, got {value}", name)
    return value


async def _read(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> OpenAIError:
    return OpenAIError(
        413, f"The request body is larger than {MAX_BODY} bytes.", "invalid_request_error", None, "request_too_large"
    )


async def _body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object a route takes: no other fields than ``allowed``."""
    raw = await _read(request)
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise _bad("The request body must be a JSON object.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        listed = ", ".join(repr(_shown(u)) for u in unknown)
        if allowed:
            message = f"unknown field(s) {listed}: this route takes {', '.join(sorted(allowed))}"
        else:
            message = f"unknown field(s) {listed}: this route takes no fields"
        raise _bad(message, _shown(unknown[0]))
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} must be a string", what)
    try:
        return check_name(value, what)
    except ValueError as error:
        raise _bad(str(error), what) from None


def _limit(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be a whole number from 1 to {LIMIT_MAX[name]:,} (a JSON integer)", name)
    try:
        check_limit(name, value)
    except ValueError as error:
        raise _bad(str(error), name) from None
    return value


def _budget(body: dict[str, Any]) -> tuple[Decimal, str] | None:
    value = body.get("budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad('budget must be a string like "50/month" or "5/day" (or a number: USD per month)', "budget")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad("a budget must be from $0.000001 to $1,000,000 per month (a finite amount)", "budget")
    try:
        return parse_budget(value if isinstance(value, str) else str(value))
    except ValueError as error:
        raise _bad(str(error), "budget") from None


def _models(body: dict[str, Any]) -> list[str] | None:
    value = body.get("models")
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise _bad("models must be a list of model names or globs (strings)", "models")
    if not 1 <= len(value) <= MAX_MODELS:
        raise _bad(
            f"models must list from 1 to {MAX_MODELS} model names or globs, got {len(value)} (null: every model)",
            "models",
        )
    models = [m.strip() for m in value]
    for i, model in enumerate(models):
        if not model or len(model) > MODEL_MAX or not _MODEL.fullmatch(model):
            raise _bad(
                f"models[{i}] must be 1 to {MODEL_MAX} printable ASCII characters without spaces, "
                f"got {_shown(model, 40)!r}",
                "models",
            )
    return models


def _expires(body: dict[str, Any]) -> float | None:
    value = body.get("expires")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad('expires must be a duration string like "30d", "12h" or "2w" (null: never)', "expires")
    try:
        return parse_duration(value)
    except ValueError as error:
        raise _bad(str(error), "expires") from None


def _store_down(error: BaseException) -> bool:
    """The database (or Redis) could not be reached or used, here or in what caused this."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        redis_down: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
    except ImportError:  # pragma: no cover - redis is a dependency
        redis_down = ()
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OperationalError) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
            return True
        if redis_down and isinstance(seen, redis_down):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(error: BaseException) -> str:
    """One line about ``error`` for the log: the driver's message, never the SQL or its parameters."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    name = type(error).__name__
    if type(cause).__name__ != name:
        name = f"{name} ({type(cause).__name__})"
    return secrets(f"{name}: {text}" if text else name)


def failure_response(request: Request, error: BaseException) -> Response:
    """An unexpected error in an admin route: logged once, answered in OpenAI's shape."""
    log.error("admin API: %s %s failed: %s", request.method, request.url.path, _describe(error))
    if _store_down(error):
        return error_response(
            OpenAIError(
                503,
                "The gateway's database is unavailable; please try again.",
                "server_error",
                None,
                "store_unavailable",
            )
        )
    return error_response(
        OpenAIError(
            500,
            "The gateway had an error while processing your request.",
            "server_error",
            None,
            "server_error",
        )
    )


class AdminAPI:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def guarded(self, handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                refused = self._refuse(request)
                if refused is not None:
                    return error_response(refused)
                return await handler(request)
            except OpenAIError as error:
                return error_response(error)
            except KeyError_ as error:
                return error_response(
                    OpenAIError(
                        404,
                        f"No key with id {_shown(str(error.args[0]))!r}.",
                        "invalid_request_error",
                        "id",
                        "key_not_found",
                    )
                )
            except Exception as error:  # the database is down, a bug: JSON, logged once, no traceback
                return failure_response(request, error)

        return run

    def _refuse(self, request: Request) -> OpenAIError | None:
        """403 with no admin key set, 401 without the right one; None when the caller may go on."""
        secret = self.gateway.admin_secret()
        if secret is None:
            return OpenAIError(
                403,
                "The admin API is off: set FERRYMAN_ADMIN_KEY on the gateway.",
                "invalid_request_error",
                None,
                "admin_disabled",
            )
        if not admin_matches(presented_key({k.lower(): v for k, v in request.headers.items()}), secret):
            return OpenAIError(
                401,
                "The admin API needs the gateway's admin key (Authorization: Bearer …).",
                "invalid_request_error",
                None,
                "invalid_admin_key",
            )
        return None

    def routes(self) -> list[Route]:
        g = self.guarded
        return [
            Route("/admin/keys", g(self.create_key), methods=["POST"]),
            Route("/admin/keys", g(self.list_keys), methods=["GET"]),
            Route("/admin/keys/{id}", g(self.show_key), methods=["GET"]),
            Route("/admin/keys/{id}", g(self.update_key), methods=["PATCH"]),
            Route("/admin/keys/{id}", g(self.revoke_key), methods=["DELETE"]),
            Route("/admin/keys/{id}/rotate", g(self.rotate_key), methods=["POST"]),
            Route("/admin/keys/{id}/revoke", g(self.revoke_key), methods=["POST"]),
            Route("/admin/teams", g(self.list_teams), methods=["GET"]),
            Route("/admin/teams/{name}", g(self.put_team), methods=["PUT"]),
            Route("/admin/teams/{name}", g(self.delete_team), methods=["DELETE"]),
            Route("/admin/usage", g(self.usage), methods=["GET"]),
            Route("/admin/budgets", g(self.budgets), methods=["GET"]),
            Route("/admin/requests", g(self.requests), methods=["GET"]),
            Route("/admin/stats", g(self.stats), methods=["GET"]),
            # last: any other path or method under /admin answers in OpenAI's shape too
            Route("/admin", g(self.elsewhere), methods=ANY_METHOD),
            Route("/admin/{rest:path}", g(self.elsewhere), methods=ANY_METHOD),
        ]

    async def elsewhere(self, request: Request) -> Response:
        """404 for a path the admin API does not have, 405 for a method one of its paths does not take."""
        method, path = request.method, request.url.path
        allowed = sorted(
            {
                m
                for route in self.routes()[:-2]
                if route.path_regex.match(path) and route.methods
                for m in route.methods
                if m != "HEAD" or method == "HEAD"
            }
        )
        if not allowed:
            raise invalid_url(method, path)
        raise OpenAIError(
            405,
            f"{method} is not allowed on {path}: use {', '.join(allowed)}",
            "invalid_request_error",
            None,
            "method_not_allowed",
            {"allow": ", ".join(allowed)},
        )

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        body = await _body(request, KEY_FIELDS)
        if body.get("name") is None:
            raise _bad("a key needs a name", "name")
        name = _name(body["name"], "name")
        team = _name(body["team"], "team") if body.get("team") is not None else None
        rpm, tpm = _limit(body, "rpm"), _limit(body, "tpm")
        budget, models, expires_in = _budget(body), _models(body), _expires(body)
        secret, record = await self.gateway.keys.create(
            name, team=team, rpm=rpm, tpm=tpm, budget=budget, models=models, expires_in_s=expires_in
        )
        return json_response({"key": secret, **record.public()}, 201)

    async def list_keys(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        keys = await self.gateway.keys.all()
        usage = await self.gateway.keys.usage()
        data = [{**k.public(), "usage": usage.get(k.id)} for k in keys]
        return json_response({"object": "list", "data": data})

    async def show_key(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        record = await self.gateway.keys.get(request.path_params["id"])
        usage = (await self.gateway.keys.usage()).get(record.id)
        return json_response(
            {
                **record.public(),
                "usage": usage,
                "budget": await self._budget_of(record.id, record.budget_usd, record.budget_period),
            }
        )

    async def update_key(self, request: Request) -> Response:
        """Only the fields given change; ``null`` removes a limit, the budget or the expiry.
        Every field is checked before anything is written."""
        _check_query(request, NO_FIELDS)
        body = await _body(request, KEY_UPDATE_FIELDS)
        values: dict[str, Any] = {}
        for name in ("rpm", "tpm"):
            if name in body:
                values[name] = _limit(body, name)
        if "budget" in body:
            budget = _budget(body)
            values["budget_usd"], values["budget_period"] = budget if budget else (None, None)
        if "models" in body:
            values["models"] = _models(body)
        if "expires" in body:
            expires_in = _expires(body)
            values["expires"] = time.time() + expires_in if expires_in is not None else None
        record = await self.gateway.keys.set_limits(request.path_params["id"], **values)
        self.gateway.key_cache.forget()
        return json_response(record.public())

    async def rotate_key(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        await _body(request, NO_FIELDS)
        secret, record = await self.gateway.keys.rotate(request.path_params["id"])
        self.gateway.key_cache.forget()
        return json_response({"key": secret, **record.public()})

    async def revoke_key(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        await _body(request, NO_FIELDS)
        record = await self.gateway.keys.revoke(request.path_params["id"])
        self.gateway.key_cache.forget()
        return json_response(record.public())

    # -- teams --------------------------------------------------------------------------------

    async def list_teams(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        teams = await self.gateway.keys.teams()
        return json_response({"object": "list", "data": [t.public() for t in teams]})

    async def put_team(self, request: Request) -> Response:
        """Sets all of a team's limits at once: a field left out (or ``null``) is no limit."""
        _check_query(request, NO_FIELDS)
        name = _name(request.path_params["name"], "name")
        body = await _body(request, TEAM_FIELDS)
        rpm, tpm, budget = _limit(body, "rpm"), _limit(body, "tpm"), _budget(body)
        team = await self.gateway.keys.set_team(name, rpm=rpm, tpm=tpm, budget=budget)
        self.gateway.key_cache.forget()
        return json_response(team.public())

    async def delete_team(self, request: Request) -> Response:
        # any name: a team made before names were checked can still be deleted
        _check_query(request, NO_FIELDS)
        await _body(request, NO_FIELDS)
        found = await self.gateway.keys.delete_team(request.path_params["name"])
        self.gateway.key_cache.forget()
        return json_response({"deleted": found, "name": request.path_params["name"]})

    # -- reports ------------------------------------------------------------------------------

    async def _budget_of(
        self, key_id: str, usd: Decimal | None, period: str | None, scope_kind: str = "key"
    ) -> dict[str, Any] | None:
        if usd is None:
            return None
        stage = self.gateway.pipeline.stage(Budget)
        scope = f"{scope_kind}:{key_id}"
        spent = reserved = Decimal(0)
        if isinstance(stage, Budget):
            spent, reserved = await stage.snapshot(scope, period or "month")
        window = window_of(period or "month", time.time())[0]
        return {
            "scope": scope,
            "period": period or "month",
            "window": window,
            "usd": str(usd),
            "spent_usd": str(spent),
            "reserved_usd": str(reserved),
            "used_fraction": float((spent + reserved) / usd) if usd else 0.0,
        }

    async def budgets(self, request: Request) -> Response:
        _check_query(request, NO_FIELDS)
        out = []
        for key in await self.gateway.keys.all(include_revoked=False):
            budget = await self._budget_of(key.id, key.budget_usd, key.budget_period)
            if budget is not None:
                out.append({"kind": "key", "id": key.id, "name": key.name, **budget})
        for team in await self.gateway.keys.teams():
            budget = await self._budget_of(team.name, team.budget_usd, team.budget_period, "team")
            if budget is not None:
                out.append({"kind": "team", "id": team.name, "name": team.name, **budget})
        return json_response({"object": "list", "data": out})

    async def usage(self, request: Request) -> Response:
        _check_query(request, frozenset({"days"}))
        days = _int_arg(request, "days", 30, 1, 366)
        since = time.time() - days * 86400
        names = {k.id: k.name for k in await self.gateway.keys.all()}

        def read(c: Connection) -> dict[str, list[Any]]:
            def grouped(column: Any) -> list[Any]:
                cost = func.coalesce(func.sum(audit.c.cost_usd), 0).label("cost")
                tokens = func.coalesce(func.sum(audit.c.input_tokens + audit.c.output_tokens), 0).label("tokens")
                query = select(column.label("g"), func.count().label("calls"), cost, tokens)
                query = query.where(audit.c.ts >= since).group_by(column)
                return list(c.execute(query).all())

            rows = c.execute(select(audit.c.ts, audit.c.cost_usd).where(audit.c.ts >= since)).all()
            return {"model": grouped(audit.c.model), "key": grouped(audit.c.principal), "ts": list(rows)}

        found = await self.gateway.store.read(read)
        by_day: dict[str, list[Any]] = {}
        for ts, cost in found["ts"]:
            day = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
            entry = by_day.setdefault(day, [0, Decimal(0)])
            entry[0] += 1
            entry[1] += Decimal(cost or 0)

        def rows(items: list[Any], label: Callable[[Any], str]) -> list[dict[str, Any]]:
            out = [
                {
                    "name": label(r.g),
                    "calls": int(r.calls),
                    "cost_usd": str(Decimal(r.cost).quantize(Decimal("1e-6"))),
                    "tokens": int(r.tokens),
                }
                for r in items
            ]
            return sorted(out, key=lambda r: Decimal(r["cost_usd"]), reverse=True)

        return json_response(
            {
                "days": days,
                "by_day": [
                    {"day": day, "calls": calls, "cost_usd": str(cost.quantize(Decimal("1e-6")))}
                    for day, (calls, cost) in sorted(by_day.items())
                ],
                "by_model": rows(found["model"], lambda g: g or "(none)"),
                "by_key": [
                    {**r, "key_id": r["name"], "name": names.get(r["name"], r["name"])} for r in rows(found["key"], str)
                ],
            }
        )

    async def requests(self, request: Request) -> Response:
        _check_query(request, frozenset({"limit"}))
        limit = _int_arg(request, "limit", 50, 1, 1000)
        names = {k.id: k.name for k in await self.gateway.keys.all()}
        names_of = (
            "seq",
            "ts",
            "principal",
            "model",
            "endpoint",
            "status",
            "latency_ms",
            "input_tokens",
            "output_tokens",
        )
        columns = [audit.c[n] for n in (*names_of, "cost_usd", "cache", "error")]

        def read(c: Connection) -> list[Any]:
            return list(c.execute(select(*columns).order_by(audit.c.seq.desc()).limit(limit)).all())

        rows = await self.gateway.store.read(read)
        data = []
        for r in rows:
            # plain str keys: SQLAlchemy's are quoted_name (a str subclass), which orjson refuses
            item = {str(k): v for k, v in r._mapping.items()}
            item["cost_usd"] = str(Decimal(item["cost_usd"] or 0))
            item["key_name"] = names.get(item["principal"], item["principal"])
            data.append(item)
        return json_response({"object": "list", "data": data})

    async def stats(self, request: Request) -> Response:
        _check_query(request, frozenset({"hours"}))
        hours = _int_arg(request, "hours", 24, 1, 24 * 366)
        since = time.time() - hours * 3600

        def read(c: Connection) -> Any:
            query = select(
                func.count().label("calls"),
                func.coalesce(func.sum(case((audit.c.status >= 400, 1), else_=0)), 0).label("errors"),
                func.coalesce(func.sum(case((audit.c.status == 429, 1), else_=0)), 0).label("rate_limited"),
                func.coalesce(func.sum(audit.c.cost_usd), 0).label("cost"),
            ).where(audit.c.ts >= since)
            return c.execute(query).one()

        row = await self.gateway.store.read(read)
        calls = int(row.calls)
        return json_response(
            {
                "hours": hours,
                "calls": calls,
                "errors": int(row.errors),
                "rate_limited": int(row.rate_limited),
                "error_rate": (int(row.errors) / calls) if calls else 0.0,
                "rate_limited_rate": (int(row.rate_limited) / calls) if calls else 0.0,
                "cost_usd": str(Decimal(row.cost).quantize(Decimal("1e-6"))),
                "open_streams": self.gateway.proxy.open_streams,
            }
        )
