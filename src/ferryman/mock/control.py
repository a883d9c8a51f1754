"""The mock's control API under ``/_ferryman/``: what tests use to steer and observe it.

    GET    /_ferryman/health                 liveness
    GET    /_ferryman/requests?since=SEQ     requests received (key ids, never keys)
    DELETE /_ferryman/requests               forget them
    GET    /_ferryman/settings               current limits, faults, timings
    PATCH  /_ferryman/settings               {"rpm", "tpm", "quota_usd", "latency_ms",
                                              "batch_seconds", "finetune_seconds",
                                              "today": "YYYY-MM-DD" | null (the real date)}
    PUT    /_ferryman/faults                 {"rules": ["status=500;p=0.1", ...]}
    PUT    /_ferryman/fixtures               {"rules": [{...}, ...]}
    PUT    /_ferryman/shutdown_dates         {"dates": {"gpt-4o": "2027-01-01", ...}}: announced
                                              dates over the shipped table's (GET /v1/models, refusals)
    POST   /_ferryman/reset                  everything back to the start settings

Faults and fixtures sent here are validated like the CLI's; a bad one is a 400 in OpenAI's
error format and changes nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ferryman.errors import OpenAIError, invalid_request, invalid_url
from ferryman.mock.call import json_response
from ferryman.mock.faults import parse_rule
from ferryman.mock.fixtures import Fixtures
from ferryman.mock.settings import parse_today

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

_NUMBERS = ("rpm", "tpm", "quota_usd", "latency_ms", "batch_seconds", "finetune_seconds")
_SETTABLE = (*_NUMBERS, "today")


async def _json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        raise invalid_request("Control body is not valid JSON.") from None


def settings_view(app: MockApp) -> dict[str, Any]:
    s = app.settings
    return {
        "rpm": app.limiter.rpm,
        "tpm": app.limiter.tpm,
        "quota_usd": float(app.quota.quota) if app.quota.quota is not None else None,
        "latency_ms": s.latency_ms,
        "batch_seconds": s.batch_seconds,
        "finetune_seconds": s.finetune_seconds,
        "faults": [r.spec for r in s.faults],
        "fixtures": app.fixtures.source,
        "today": s.today.isoformat() if s.today else None,
        "shutdown_dates": {m: d.isoformat() if d else None for m, d in s.shutdown_dates.items()},
    }


def _today(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise invalid_request("today must be a date (YYYY-MM-DD) or null.", "today")
    try:
        return parse_today(value, "today") if value is not None else None
    except ValueError as error:
        raise invalid_request(str(error), "today") from None


def _shutdown_dates(body: Any) -> dict[str, Any]:
    """``{"dates": {"gpt-4o": "2027-01-01", "o3": null}}`` → model → date or None (no date)."""
    dates = body.get("dates") if isinstance(body, dict) else None
    if not isinstance(dates, dict) or len(dates) > 10_000:
        raise invalid_request('Send {"dates": {"MODEL": "YYYY-MM-DD" or null, ...}}.', "dates")
    out: dict[str, Any] = {}
    for model, value in dates.items():
        if value is not None and not isinstance(value, str):
            raise invalid_request(f"The date for {model[:100]!r} must be YYYY-MM-DD or null.", "dates")
        try:
            out[model] = parse_today(value, f"dates.{model[:100]}") if value is not None else None
        except ValueError as error:
            raise invalid_request(str(error), "dates") from None
    return out


async def _dispatch(app: MockApp, request: Request) -> Any:
    route = (request.method, request.url.path.removeprefix("/_ferryman"))
    if route == ("GET", "/health"):
        return {"status": "ok"}
    if route == ("GET", "/requests"):
        since = request.query_params.get("since", "0")
        return {"data": app.requests.since(int(since) if since.isdigit() else 0)}
    if route == ("DELETE", "/requests"):
        app.requests.clear()
        return {"deleted": True}
    if route == ("GET", "/settings"):
        return settings_view(app)
    if route == ("PATCH", "/settings"):
        body = await _json(request)
        if not isinstance(body, dict) or set(body) - set(_SETTABLE):
            raise invalid_request(f"Settings take only {', '.join(_SETTABLE)}.")
        today = _today(body.get("today"))
        for name, value in body.items():
            if name == "today":
                continue
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise invalid_request(f"{name} must be a non-negative number or null.", name)
        if "rpm" in body or "tpm" in body:
            app.limiter.set_limits(body.get("rpm", app.settings.rpm), body.get("tpm", app.settings.tpm))
            app.settings.rpm, app.settings.tpm = body.get("rpm", app.settings.rpm), body.get("tpm", app.settings.tpm)
        if "quota_usd" in body:
            quota = body["quota_usd"]
            app.quota.quota = Decimal(str(quota)) if quota is not None else None
            app.quota.spent.clear()
        for name in ("latency_ms", "batch_seconds", "finetune_seconds"):
            if name in body and body[name] is not None:
                setattr(app.settings, name, float(body[name]))
        if "today" in body:
            app.settings.today = today
        return settings_view(app)
    if route == ("PUT", "/faults"):
        body = await _json(request)
        rules = body.get("rules") if isinstance(body, dict) else None
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise invalid_request('Send {"rules": ["key=value;...", ...]}.', "rules")
        app.settings.faults = [parse_rule(r) for r in rules]
        return settings_view(app)
    if route == ("PUT", "/fixtures"):
        app.fixtures = Fixtures.parse(await _json(request))
        return settings_view(app)
    if route == ("PUT", "/shutdown_dates"):
        app.settings.shutdown_dates = _shutdown_dates(await _json(request))
        return settings_view(app)
    if route == ("POST", "/reset"):
        app.reset()
        return settings_view(app)
    raise invalid_url(request.method, request.url.path)


async def handle(app: MockApp, request: Request, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        response = json_response(await _dispatch(app, request))
    except OpenAIError as error:
        response = json_response(error.body(), error.status)
    await response(scope, receive, send)
