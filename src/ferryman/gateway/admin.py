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
"""

from __future__ import annotations

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

from ferryman.errors import OpenAIError
from ferryman.gateway.auth import admin_matches, presented_key
from ferryman.gateway.keys import KeyError_, parse_budget, parse_duration
from ferryman.pipeline.budget import Budget, window_of
from ferryman.store.tables import audit

if TYPE_CHECKING:
    from ferryman.gateway.app import Gateway

Handler = Callable[[Request], Awaitable[Response]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value, default=str), status, media_type="application/json")


def error_response(error: OpenAIError) -> Response:
    return json_response(error.body(), error.status)


def _bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, None)


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad(f"{name} must be a whole number", name) from None
    if not low <= value <= high:
        raise _bad(f"{name} must be between {low} and {high}", name)
    return value


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise _bad("The request body must be a JSON object.")
    return value


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _bad(f"{name} must be a positive whole number", name)
    return value


def _budget(body: dict[str, Any]) -> tuple[Decimal, str] | None:
    value = body.get("budget")
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise _bad('budget must be like "50/month" or "5/day"', "budget")
    try:
        return parse_budget(str(value))
    except ValueError as error:
        raise _bad(str(error), "budget") from None


def _models(body: dict[str, Any]) -> list[str] | None:
    value = body.get("models")
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise _bad("models must be a list of model names or globs", "models")
    return [m.strip() for m in value if m.strip()]


class AdminAPI:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def guarded(self, handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            secret = self.gateway.admin_secret()
            if secret is None:
                return error_response(
                    OpenAIError(
                        403,
                        "The admin API is off: set FERRYMAN_ADMIN_KEY on the gateway.",
                        "invalid_request_error",
                        None,
                        "admin_disabled",
                    )
                )
            if not admin_matches(presented_key({k.lower(): v for k, v in request.headers.items()}), secret):
                return error_response(
                    OpenAIError(
                        401,
                        "The admin API needs the gateway's admin key (Authorization: Bearer …).",
                        "invalid_request_error",
                        None,
                        "invalid_admin_key",
                    )
                )
            try:
                return await handler(request)
            except OpenAIError as error:
                return error_response(error)
            except KeyError_ as error:
                return error_response(
                    OpenAIError(
                        404, f"No key with id {error.args[0]!r}.", "invalid_request_error", "id", "key_not_found"
                    )
                )

        return run

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
        ]

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        body = await _body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _bad("a key needs a name", "name")
        team = body.get("team")
        if team is not None and not isinstance(team, str):
            raise _bad("team must be a string", "team")
        expires = body.get("expires")
        expires_in = None
        if expires is not None:
            try:
                expires_in = parse_duration(str(expires))
            except ValueError as error:
                raise _bad(str(error), "expires") from None
        secret, record = await self.gateway.keys.create(
            name,
            team=team,
            rpm=_positive_int(body, "rpm"),
            tpm=_positive_int(body, "tpm"),
            budget=_budget(body),
            models=_models(body),
            expires_in_s=expires_in,
        )
        return json_response({"key": secret, **record.public()}, 201)

    async def list_keys(self, request: Request) -> Response:
        keys = await self.gateway.keys.all()
        usage = await self.gateway.keys.usage()
        data = [{**k.public(), "usage": usage.get(k.id)} for k in keys]
        return json_response({"object": "list", "data": data})

    async def show_key(self, request: Request) -> Response:
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
        body = await _body(request)
        values: dict[str, Any] = {}
        for name in ("rpm", "tpm"):
            if name in body:
                values[name] = _positive_int(body, name)
        if "budget" in body:
            budget = _budget(body)
            values["budget_usd"], values["budget_period"] = budget if budget else (None, None)
        if "models" in body:
            values["models"] = _models(body)
        if "expires" in body:
            values["expires"] = time.time() + parse_duration(str(body["expires"])) if body["expires"] else None
        record = await self.gateway.keys.set_limits(request.path_params["id"], **values)
        self.gateway.key_cache.forget()
        return json_response(record.public())

    async def rotate_key(self, request: Request) -> Response:
        secret, record = await self.gateway.keys.rotate(request.path_params["id"])
        self.gateway.key_cache.forget()
        return json_response({"key": secret, **record.public()})

    async def revoke_key(self, request: Request) -> Response:
        record = await self.gateway.keys.revoke(request.path_params["id"])
        self.gateway.key_cache.forget()
        return json_response(record.public())

    # -- teams --------------------------------------------------------------------------------

    async def list_teams(self, request: Request) -> Response:
        teams = await self.gateway.keys.teams()
        return json_response({"object": "list", "data": [t.public() for t in teams]})

    async def put_team(self, request: Request) -> Response:
        body = await _body(request)
        team = await self.gateway.keys.set_team(
            request.path_params["name"],
            rpm=_positive_int(body, "rpm"),
            tpm=_positive_int(body, "tpm"),
            budget=_budget(body),
        )
        self.gateway.key_cache.forget()
        return json_response(team.public())

    async def delete_team(self, request: Request) -> Response:
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
