"""``GET /admin/report``: the report ``ferryman report --format json`` prints, from the gateway.

The same builder over the same store (:func:`ferryman.report.build.build`), so the dashboard's
"Top advice" and a script calling this route read exactly what the command line prints, in the
same versioned JSON contract. Query arguments mirror the command's options:

- ``days`` (1 to 366, default 30): the period, ending now;
- ``by`` (repeatable): ``model``, ``endpoint``, ``key``, ``team``, ``tag:NAME``, ``day``, ``hour``;
- ``model``, ``key`` (an id or a name), ``tag`` (``NAME=VALUE``, repeatable): filters.

Anything else is a 400 naming the argument, in OpenAI's error shape, before any query runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from ferryman.gateway.admin_input import bad, check_query, int_arg, json_response
from ferryman.pricing import PriceTable
from ferryman.report.build import build
from ferryman.report.model import Report
from ferryman.report.query import Filters, dimension

if TYPE_CHECKING:
    from ferryman.gateway.app import Gateway

ARGUMENTS = frozenset({"days", "by", "model", "key", "tag"})
MAX_BY = 3  # groupings at once: each multiplies the groups


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad(f"{name} may be given once", name)
    return values[0] if values else None


def _tags(request: Request) -> tuple[tuple[str, str], ...]:
    tags = []
    for raw in request.query_params.getlist("tag"):
        name, sep, value = raw.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise bad(f"tag must be NAME=VALUE, not {raw[:64]!r}", "tag")
        tags.append((name.strip().lower(), value.strip()))
    return tuple(tags)


async def report(gateway: Gateway, request: Request) -> Response:
    check_query(request, ARGUMENTS)
    days = int_arg(request, "days", 30, 1, 366)
    by = request.query_params.getlist("by")
    if len(by) > MAX_BY:
        raise bad(f"by may be given at most {MAX_BY} times", "by")
    for name in by:
        try:
            dimension(name)
        except ValueError as error:
            raise bad(str(error), "by") from None
    now = time.time()
    filters = Filters(now - days * 86_400, now, _one(request, "model"), _one(request, "key"), _tags(request))
    table = PriceTable.for_settings(gateway.settings)

    def read(conn: Connection) -> Report:
        return build(conn, filters, by, now=now, table=table)

    made = await gateway.store.read(read)
    return json_response(made.as_json())
