"""The admin HTTP API (``/admin/…``): keys, teams, usage, budgets, recent requests.

Every route needs ``Authorization: Bearer <admin key>`` (``gateway.admin_key``, by default the
``FERRYMAN_ADMIN_KEY`` variable), compared in constant time; with no admin key set, the API
answers 403 to everyone. Errors are in OpenAI's shape. Nothing here ever returns a key's
secret except the one reply that creates or rotates it.

- ``POST /admin/keys`` ``{name, team?, rpm?, tpm?, budget?: "50/month", models?: [...], tags?: {...},
  expires?: "30d"}``; a name a live key has already is 409 ``name_taken`` (``param: "name"``), also
  when two creates of it race (the database's unique index decides)
- ``GET /admin/keys``, ``GET /admin/keys/{id}`` (with usage), ``PATCH /admin/keys/{id}``; ``{id}``
  here and below is the key's id, a unique id prefix (six or more hex digits, ``key_`` optional)
  or its name, resolved as the CLI does (:mod:`ferryman.gateway.key_lookup`): none is 404
  ``key_not_found``, several 400 ``key_ambiguous`` naming them
- ``POST /admin/keys/{id}/rotate``, ``POST /admin/keys/{id}/revoke`` (also ``DELETE /admin/keys/{id}``)
- ``GET /admin/teams``, ``PUT /admin/teams/{name}`` ``{rpm?, tpm?, budget?, tags?}``, ``DELETE /admin/teams/{name}``
- ``GET /admin/usage?days=30``: spend and calls by day, model and key
- ``GET /admin/budgets``: each key's and team's budget, spent and reserved in the current window
- ``GET /admin/requests?limit=50``: recent calls (no bodies, no secrets)
- ``GET /admin/stats?hours=24``: calls, error and 429 rates
- ``GET /admin/report?days=30&by=model``: the report of ``ferryman report --format json``
  (:mod:`ferryman.gateway.admin_report`)
- ``GET /admin/models/retiring?days=30&within=180``: the models called in the last ``days`` that
  retire within ``within`` days (or have), with calls, spend, shutdown date and successor, from
  the one lifecycle table (:mod:`ferryman.catalogue`, upstream dates first), on the date the
  lifecycle stage acts on; at most 1,000 rows, ``truncated: true`` when more were called

Input is checked strictly, before anything is written (the rules: :mod:`ferryman.gateway.admin_input`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferryman import catalogue, lifecycle_store
from ferryman.errors import OpenAIError, invalid_url
from ferryman.gateway import admin_report
from ferryman.gateway.admin_input import (
    KEY_FIELDS,
    KEY_UPDATE_FIELDS,
    NO_FIELDS,
    TEAM_FIELDS,
    ambiguous,
    bad,
    body_of,
    budget_of,
    check_query,
    error_response,
    expires_of,
    failure_response,
    int_arg,
    json_response,
    limit_of,
    models_of,
    name_of,
    name_taken,
    shown,
    tags_of,
)
from ferryman.gateway.auth import admin_matches, presented_key
from ferryman.gateway.key_lookup import KeyAmbiguous, NameTaken
from ferryman.gateway.keys import KeyError_, billing_tags
from ferryman.pipeline.budget import Budget, window_of
from ferryman.pipeline.lifecycle import ModelLifecycle
from ferryman.store.tables import audit

if TYPE_CHECKING:
    from ferryman.gateway.app import Gateway

Handler = Callable[[Request], Awaitable[Response]]

# GET /admin/models/retiring: rows listed at most, and fine-tuned models' rows read at most
# (their names are the callers': each invented one is audited, and would be a row).
RETIRING_MAX = 1000
RETIRING_SCAN = 5000

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


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
                        f"No key {shown(str(error.args[0]))!r} (by id, id prefix or name).",
                        "invalid_request_error",
                        "id",
                        "key_not_found",
                    )
                )
            except KeyAmbiguous as error:
                return error_response(ambiguous(error))
            except NameTaken as error:
                return error_response(name_taken(error))
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
            Route("/admin/models/retiring", g(self.retiring), methods=["GET"]),
            Route("/admin/report", g(self.report), methods=["GET"]),
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
        check_query(request, NO_FIELDS)
        body = await body_of(request, KEY_FIELDS)
        if body.get("name") is None:
            raise bad("a key needs a name", "name")
        name = name_of(body["name"], "name")
        team = name_of(body["team"], "team") if body.get("team") is not None else None
        rpm, tpm = limit_of(body, "rpm"), limit_of(body, "tpm")
        budget, models, tags, expires_in = budget_of(body), models_of(body), tags_of(body), expires_of(body)
        secret, record = await self.gateway.keys.create(
            name, team=team, rpm=rpm, tpm=tpm, budget=budget, models=models, tags=tags, expires_in_s=expires_in
        )
        return json_response({"key": secret, **record.public()}, 201)

    async def list_keys(self, request: Request) -> Response:
        check_query(request, NO_FIELDS)
        keys = await self.gateway.keys.all()
        usage = await self.gateway.keys.usage()
        data = [{**k.public(), "usage": usage.get(k.id)} for k in keys]
        return json_response({"object": "list", "data": data})

    async def show_key(self, request: Request) -> Response:
        check_query(request, NO_FIELDS)
        record = await self.gateway.keys.find(request.path_params["id"])
        usage = (await self.gateway.keys.usage()).get(record.id)
        team = await self.gateway.keys.team(record.team) if record.team else None
        return json_response(
            {
                **record.public(),
                "billing_tags": dict(billing_tags(record, team)),  # what tag: budget rules count
                "usage": usage,
                "budget": await self._budget_of(record.id, record.budget_usd, record.budget_period),
            }
        )

    async def update_key(self, request: Request) -> Response:
        """Only the fields given change; ``null`` removes a limit, the budget or the expiry.
        Every field is checked before anything is written."""
        check_query(request, NO_FIELDS)
        body = await body_of(request, KEY_UPDATE_FIELDS)
        values: dict[str, Any] = {}
        for name in ("rpm", "tpm"):
            if name in body:
                values[name] = limit_of(body, name)
        if "budget" in body:
            budget = budget_of(body)
            values["budget_usd"], values["budget_period"] = budget if budget else (None, None)
        if "models" in body:
            values["models"] = models_of(body)
        if "tags" in body:
            values["tags"] = tags_of(body)
        if "expires" in body:
            expires_in = expires_of(body)
            values["expires"] = time.time() + expires_in if expires_in is not None else None
        key = await self.gateway.keys.find(request.path_params["id"])  # after the body: a bad one is 400 first
        record = await self.gateway.keys.set_limits(key.id, **values)
        self.gateway.key_cache.forget()
        return json_response(record.public())

    async def rotate_key(self, request: Request) -> Response:
        check_query(request, NO_FIELDS)
        await body_of(request, NO_FIELDS)
        key = await self.gateway.keys.find(request.path_params["id"])
        secret, record = await self.gateway.keys.rotate(key.id)
        self.gateway.key_cache.forget()
        return json_response({"key": secret, **record.public()})

    async def revoke_key(self, request: Request) -> Response:
        check_query(request, NO_FIELDS)
        await body_of(request, NO_FIELDS)
        key = await self.gateway.keys.find(request.path_params["id"])
        record = await self.gateway.keys.revoke(key.id)
        self.gateway.key_cache.forget()
        return json_response(record.public())

    # -- teams --------------------------------------------------------------------------------

    async def list_teams(self, request: Request) -> Response:
        check_query(request, NO_FIELDS)
        teams = await self.gateway.keys.teams()
        return json_response({"object": "list", "data": [t.public() for t in teams]})

    async def put_team(self, request: Request) -> Response:
        """Sets all of a team's limits at once: a field left out (or ``null``) is no limit."""
        check_query(request, NO_FIELDS)
        name = name_of(request.path_params["name"], "name")
        body = await body_of(request, TEAM_FIELDS)
        rpm, tpm, budget, tags = limit_of(body, "rpm"), limit_of(body, "tpm"), budget_of(body), tags_of(body)
        team = await self.gateway.keys.set_team(name, rpm=rpm, tpm=tpm, budget=budget, tags=tags)
        self.gateway.key_cache.forget()
        return json_response(team.public())

    async def delete_team(self, request: Request) -> Response:
        # any name: a team made before names were checked can still be deleted
        check_query(request, NO_FIELDS)
        await body_of(request, NO_FIELDS)
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
        check_query(request, NO_FIELDS)
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
        check_query(request, frozenset({"days"}))
        days = int_arg(request, "days", 30, 1, 366)
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
        check_query(request, frozenset({"limit"}))
        limit = int_arg(request, "limit", 50, 1, 1000)
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
        check_query(request, frozenset({"hours"}))
        hours = int_arg(request, "hours", 24, 1, 24 * 366)
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

    async def report(self, request: Request) -> Response:
        return await admin_report.report(self.gateway, request)

    async def retiring(self, request: Request) -> Response:
        """Bounded however many model names callers invent (each is audited): only the models with
        a shutdown date are read, by name, and the fine-tuned ones (whose names are the callers')
        the :data:`RETIRING_SCAN` called most; at most :data:`RETIRING_MAX` rows, the most called,
        ``truncated`` saying when some were left out. Today is the one the lifecycle stage acts
        on (``lifecycle.today`` in a rehearsal)."""
        check_query(request, frozenset({"days", "within"}))
        days = int_arg(request, "days", 30, 1, 366)
        within = int_arg(request, "within", 180, 0, 3650)
        since = time.time() - days * 86400
        stage = self.gateway.pipeline.stage(ModelLifecycle)
        today = stage.today() if isinstance(stage, ModelLifecycle) else datetime.now(UTC).date()

        def read(c: Connection) -> tuple[list[Any], bool, dict[str, catalogue.UpstreamDate]]:
            upstream = lifecycle_store.read(c)
            names = sorted({life.model for life in catalogue.retiring(today, within, upstream)})
            cost = func.coalesce(func.sum(audit.c.cost_usd), 0).label("cost")
            columns = (audit.c.model, func.count().label("calls"), func.max(audit.c.ts).label("last"), cost)
            called = select(*columns).where(audit.c.ts >= since).group_by(audit.c.model)
            rows: list[Any] = []
            for at in range(0, len(names), 500):  # bound parameters per statement
                rows.extend(c.execute(called.where(audit.c.model.in_(names[at : at + 500]))).all())
            tuned = called.where(audit.c.model.like("ft:%"))
            tuned = tuned.order_by(func.count().desc(), audit.c.model).limit(RETIRING_SCAN + 1)
            found = list(c.execute(tuned).all())
            dated = set(names)  # an upstream may date a fine-tuned model itself: read above already
            rows.extend(row for row in found[:RETIRING_SCAN] if row.model not in dated)
            return rows, len(found) > RETIRING_SCAN, upstream

        rows, truncated, upstream = await self.gateway.store.read(read)
        data = []
        for row in rows:
            life = catalogue.lifecycle(row.model, upstream)
            left = life.days_left(today) if life else None
            if life is None or left is None or left > within:
                continue
            data.append(
                {
                    **life.as_json(today),
                    "calls": int(row.calls),
                    "last_used": datetime.fromtimestamp(row.last, UTC).isoformat(timespec="seconds"),
                    "cost_usd": str(Decimal(row.cost).quantize(Decimal("1e-6"))),
                }
            )
        if len(data) > RETIRING_MAX:
            truncated = True
            data = sorted(data, key=lambda m: (-m["calls"], m["model"]))[:RETIRING_MAX]
        data.sort(key=lambda m: (m["shutdown_date"], m["model"]))
        return json_response(
            {
                "object": "list",
                "days": days,
                "within": within,
                "today": today.isoformat(),
                "data": data,
                "truncated": truncated,
            }
        )
