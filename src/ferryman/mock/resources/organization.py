"""``/v1/organization/usage/*`` and ``/v1/organization/costs``: OpenAI's Usage and Costs API, from the mock's traffic.

Why: a gateway that meters tokens and dollars needs something to reconcile against (issue 14). These
endpoints answer from the mock's usage ledger (``ferryman.mock.usage``), which holds exactly what the
mock served: chat completions, responses and legacy completions (``completions``), embeddings,
moderations, and the batch lines its Batch API ran (``batch: true``, at batch prices). The other
kinds in the spec (images, audio, vector stores, code interpreter, file and web search) see no
traffic in the mock and answer empty buckets of the right shape.

Admin keys only (``Endpoint.admin``: a key starting ``sk-admin-``, as OpenAI's do; with
``MockSettings.keys`` set it must also be one of them). Parameters are read and checked as the spec
declares them (types, enums, ``start_time`` required; ``name`` or the SDK's ``name[]``); wrong ones
are a 400 naming ``param``. Buckets are aligned to their width in UTC (a minute, an hour, a day): the
first holds ``start_time``, the last ``end_time - 1`` (default: now), oldest first, ``limit`` a page
with a ``next_page`` cursor. The mock has one project (:data:`PROJECT_ID`) and no users
(``user_id`` is null; a ``user_ids`` filter matches nothing). A cost's ``line_item`` is
``"<model>, input"`` (plain, cached and cache-write input) or ``"<model>, output"``; with
``group_by=line_item`` its ``quantity`` is the tokens, in ``tokens``.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock import spec
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.usage import Cell, CellKey

PROJECT_ID = "proj_ferryman_mock"
WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, max) buckets a page holds, per bucket width; the Costs API has its own.
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = (7, 180)
SERVED = ("completions", "embeddings", "moderations")
EMPTY_KINDS = (
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "vector_stores",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
)
# Per kind: the group fields each result carries (null unless grouped by).
GROUP_FIELDS = {
    "completions": ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier"),
    "embeddings": ("project_id", "user_id", "api_key_id", "model"),
    "moderations": ("project_id", "user_id", "api_key_id", "model"),
}
_INT = re.compile(r"^-?\d{1,18}$")
_CURSOR_PREFIX = "page_"


# -- parameters ----------------------------------------------------------------------------------------------


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "…"


def _scalar(name: str, schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        if not _INT.match(text):
            raise invalid_request(
                f"Invalid '{name}': expected an integer, but got '{_shown(text)}' instead.", name, "invalid_type"
            )
        return int(text)
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise invalid_request(
                f"Invalid '{name}': expected a boolean (true or false), but got '{_shown(text)}' instead.",
                name,
                "invalid_type",
            )
        return text.lower() == "true"
    allowed = schema.get("enum")
    if allowed is not None and text not in allowed:
        raise invalid_request(
            f"Invalid value for '{name}': '{_shown(text)}'. Supported values are: "
            + ", ".join(f"'{v}'" for v in allowed)
            + ".",
            name,
            "invalid_value",
        )
    return text


def read_params(route: str, query: Any) -> dict[str, Any]:
    """The query parameters the spec declares for ``GET route``, typed and checked; defaults filled in."""
    operation = spec.document()["paths"][route.removeprefix("/v1")]["get"]
    out: dict[str, Any] = {}
    for declared in operation.get("parameters", []):
        if declared.get("in") != "query":
            continue
        name: str = declared["name"]
        schema: dict[str, Any] = declared.get("schema", {})
        raw = [*query.getlist(name), *query.getlist(name + "[]")]
        if not raw:
            if declared.get("required"):
                raise invalid_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
            out[name] = schema.get("default")
        elif schema.get("type") == "array":
            out[name] = [_scalar(name, schema.get("items", {}), text) for text in raw]
        elif len(raw) > 1:
            raise invalid_request(f"Invalid '{name}': expected one value, but got {len(raw)}.", name, "invalid_value")
        else:
            out[name] = _scalar(name, schema, raw[0])
    return out


def _cursor(start: int) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(struct.pack(">q", start)).decode()


def _from_cursor(page: str) -> int:
    try:
        if not page.startswith(_CURSOR_PREFIX):
            raise ValueError(page)
        (start,) = struct.unpack(">q", base64.urlsafe_b64decode(page.removeprefix(_CURSOR_PREFIX)))
    except (ValueError, binascii.Error, struct.error):
        raise invalid_request(f"Invalid page cursor: '{_shown(page)}'.", "page", "invalid_value") from None
    return int(start)


def _out_of_range(name: str, value: int, low: int, high: int) -> OpenAIError:
    return invalid_request(
        f"Invalid '{name}': integer {value} is out of range. Expected a value between {low} and {high}.",
        name,
        "integer_out_of_range",
    )


def window(params: dict[str, Any], limits: tuple[int, int], now: float) -> tuple[list[int], int, str | None]:
    """The page's bucket starts, the bucket width, and the next page's cursor (None on the last page)."""
    width = WIDTHS[params["bucket_width"] or "1d"]
    start: int = params["start_time"]
    end: int | None = params.get("end_time")
    if start < 0:
        raise _out_of_range("start_time", start, 0, 2**62)
    if end is not None and end <= start:
        raise invalid_request(
            f"Invalid 'end_time': {end} is not after 'start_time' ({start}).", "end_time", "invalid_value"
        )
    stop_at = end if end is not None else max(int(now) + 1, start + 1)
    first = start // width * width
    stop = -(-stop_at // width) * width
    default, most = limits
    limit = params.get("limit")
    limit = default if limit is None else limit
    if not 1 <= limit <= most:
        raise _out_of_range("limit", limit, 1, most)
    page_start = first
    if params.get("page"):
        page_start = _from_cursor(params["page"])
        if not first <= page_start < stop or (page_start - first) % width:
            raise invalid_request(
                f"Invalid page cursor: '{_shown(params['page'])}' is not a page of this query.", "page", "invalid_value"
            )
    page_stop = min(stop, page_start + limit * width)
    more = page_stop < stop
    return list(range(page_start, page_stop, width)), width, _cursor(page_stop) if more else None


# -- filtering and grouping ----------------------------------------------------------------------------------


def _field(key: CellKey, name: str) -> Any:
    if name == "project_id":
        return PROJECT_ID
    if name == "user_id":
        return None
    return getattr(key, name)


def _wanted(key: CellKey, params: dict[str, Any]) -> bool:
    """Whether a cell passes the query's filters (those the operation declares)."""
    for name, field in (("project_ids", "project_id"), ("api_key_ids", "api_key_id"), ("models", "model")):
        chosen = params.get(name)
        if chosen and _field(key, field) not in chosen:
            return False
    if params.get("user_ids"):
        return False  # the mock's keys belong to no user
    return params.get("batch") is None or key.batch is params["batch"]


def _in_buckets(
    cells: Iterable[tuple[CellKey, Cell]], starts: list[int], width: int
) -> dict[int, list[tuple[CellKey, Cell]]]:
    found: dict[int, list[tuple[CellKey, Cell]]] = {s: [] for s in starts}
    for key, cell in cells:
        bucket = key.minute // width * width
        if bucket in found:
            found[bucket].append((key, cell))
    return found


def _order(group: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if v is None else str(v) for v in group)


def _usage_result(kind: str, cell: Cell, fields: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": f"organization.usage.{kind}.result",
        "input_tokens": cell.input_tokens,
    }
    if kind == "completions":
        uncached = cell.input_tokens - cell.input_cached_tokens - cell.input_cache_write_tokens
        result.update(
            input_cached_tokens=cell.input_cached_tokens,
            input_cache_write_tokens=cell.input_cache_write_tokens,
            input_uncached_tokens=uncached,
            output_tokens=cell.output_tokens,
            input_text_tokens=uncached,
            output_text_tokens=cell.output_tokens,
            input_cached_text_tokens=cell.input_cached_tokens,
            input_audio_tokens=0,
            input_cached_audio_tokens=0,
            output_audio_tokens=0,
            input_image_tokens=0,
            input_cached_image_tokens=0,
            output_image_tokens=0,
        )
    result["num_model_requests"] = cell.num_model_requests
    result.update(fields)
    return result


def usage_results(kind: str, cells: list[tuple[CellKey, Cell]], group_by: list[str]) -> list[dict[str, Any]]:
    names = GROUP_FIELDS[kind]
    sums: dict[tuple[Any, ...], Cell] = {}
    for key, cell in cells:
        group = tuple(_field(key, n) if n in group_by else None for n in names)
        sums.setdefault(group, Cell()).add(cell)
    return [_usage_result(kind, sums[g], dict(zip(names, g, strict=True))) for g in sorted(sums, key=_order)]


def _line_items(key: CellKey, cell: Cell) -> list[tuple[str, Decimal, int]]:
    items = [(f"{key.model}, input", cell.input_cost, cell.input_tokens)]
    items.append((f"{key.model}, output", cell.output_cost, cell.output_tokens))
    return [item for item in items if item[1] or item[2]]


def cost_results(cells: list[tuple[CellKey, Cell]], group_by: list[str]) -> list[dict[str, Any]]:
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for key, cell in cells:
        if not cell.priced:
            continue
        for item, amount, tokens in _line_items(key, cell):
            group = (
                PROJECT_ID if "project_id" in group_by else None,
                item if "line_item" in group_by else None,
                key.api_key_id if "api_key_id" in group_by else None,
            )
            total = sums.setdefault(group, [Decimal(0), 0])
            total[0] += amount
            total[1] += tokens
    by_item = "line_item" in group_by
    return [
        {
            "object": "organization.costs.result",
            "amount": {"value": float(sums[g][0]), "currency": "usd"},
            "line_item": g[1],
            "project_id": g[0],
            "api_key_id": g[2],
            "quantity": sums[g][1] if by_item else None,
            "quantity_unit": "tokens" if by_item else None,
        }
        for g in sorted(sums, key=_order)
    ]


# -- the endpoints -------------------------------------------------------------------------------------------


def _page(
    call: Call,
    route: str,
    limits: Callable[[dict[str, Any]], tuple[int, int]],
    results: Callable[[list[tuple[CellKey, Cell]], list[str]], list[dict[str, Any]]],
    kind: str | None,
) -> Any:
    """One page of buckets for ``route``; ``kind`` picks the ledger's cells (None: all, "": none)."""
    params = read_params(route, call.query)
    starts, width, next_page = window(params, limits(params), call.app.clock())
    cells: list[tuple[CellKey, Cell]] = []
    if starts and kind != "":
        found = call.app.usage.cells(starts[0], starts[-1] + width, kind)
        cells = [(k, c) for k, c in found if _wanted(k, params)]
    group_by = params.get("group_by") or []
    buckets = _in_buckets(cells, starts, width)
    data = [
        {"object": "bucket", "start_time": s, "end_time": s + width, "results": results(buckets[s], group_by)}
        for s in starts
    ]
    return json_response({"object": "page", "data": data, "has_more": next_page is not None, "next_page": next_page})


def _usage_limits(params: dict[str, Any]) -> tuple[int, int]:
    return LIMITS[params["bucket_width"] or "1d"]


def _usage(kind: str) -> Callable[[Call], Awaitable[Any]]:
    route = f"/v1/organization/usage/{kind}"
    served = kind in SERVED

    async def handler(call: Call) -> Any:
        if not served:
            return _page(call, route, _usage_limits, lambda cells, group_by: [], "")
        return _page(call, route, _usage_limits, lambda cells, group_by: usage_results(kind, cells, group_by), kind)

    handler.__name__ = f"usage_{kind}"
    return handler


async def costs(call: Call) -> Any:
    return _page(call, "/v1/organization/costs", lambda params: COSTS_LIMITS, cost_results, None)


ENDPOINTS = [
    *(Endpoint("GET", f"/v1/organization/usage/{kind}", _usage(kind), admin=True) for kind in SERVED + EMPTY_KINDS),
    Endpoint("GET", "/v1/organization/costs", costs, admin=True),
]
