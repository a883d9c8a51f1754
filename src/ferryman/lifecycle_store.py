"""The upstreams' own shutdown dates, fetched from ``GET /v1/models`` and cached in the store.

OpenAI sends no ``Sunset`` or ``Deprecation`` header; the one machine-readable signal of a model's
retirement is ``shutdown_date`` on ``GET /v1/models``. The shipped table (``ferryman.catalogue``)
is dated and goes stale; this module asks each configured upstream, keeps what it said in the
``model_lifecycle`` table with the time it was fetched, and hands it to
:func:`ferryman.catalogue.lifecycle` as the ``upstream`` overrides.

A date an upstream gives wins over the shipped one. A ``null`` does not erase a shipped date:
OpenAI-compatible servers (and Azure) send ``null`` for every model, which says nothing. Where
several upstreams date one model differently, the earliest date counts: that is when the first
of them stops serving it.

A listing is the upstream's word, taken as it is, within bounds: at most :data:`MAX_LISTING_BYTES`
read (a larger one is that upstream's error, and its earlier rows stay), at most
:data:`MAX_MODELS` models; an id that is not a plain model id (not a string, longer than 256
characters, spaces, control or non-ASCII characters, or shaped like a secret) is skipped rather
than cut or cleaned, since it becomes a metric label and a log field; a date before OpenAI's API
existed (:data:`EARLIEST`: ``1970-01-01``, ``0001-01-01`` are placeholders, not dates) says
nothing, like a ``null``. A plausible date is believed even when it is in the past for a model the
upstream still serves: OpenAI lists a model after its shutdown too, so Ferryman cannot tell, and
with ``lifecycle.on_retired = "refuse"`` such a listing refuses those calls. ``ferryman models``
shows each date's source (``upstream <day fetched>``); a later refresh without the date takes it
back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from ferryman import redact
from ferryman.catalogue import UpstreamDate, parse_date
from ferryman.config import Settings
from ferryman.exchange import Exchange
from ferryman.store import Store
from ferryman.store.tables import model_lifecycle
from ferryman.upstream import Deployment, Upstream

log = logging.getLogger("ferryman.lifecycle")

MAX_MODELS = 10_000  # per upstream: a listing is the upstream's word, but the table stays bounded
MAX_LISTING_BYTES = 16 * 1024 * 1024  # OpenAI's listing is tens of KiB; a compatible server's, a few MiB
EARLIEST = dt.date(2020, 1, 1)  # no OpenAI model shut down before its API opened (June 2020)
_MODEL_ID = re.compile(r"[!-~]{1,256}")  # printable ASCII, no spaces: what a model id is everywhere


class ListingTooLarge(Exception):
    pass


@dataclass
class Fetched:
    """What one upstream answered: its models' shutdown dates, or why there are none."""

    upstream: str
    dates: dict[str, str | None]  # model id -> YYYY-MM-DD or None
    error: str | None = None


def from_listing(payload: Any) -> dict[str, str | None]:
    """``{"data": [{"id", "shutdown_date"}, …]}`` → ``{id: "YYYY-MM-DD" | None}``; entries that are
    not objects with a plain model id are skipped, dates that are not (plausible) dates are None;
    the first :data:`MAX_MODELS` models (see the module's docstring)."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    out: dict[str, str | None] = {}
    for entry in data if isinstance(data, list) else []:
        if len(out) >= MAX_MODELS:
            break
        model = entry.get("id") if isinstance(entry, Mapping) else None
        if not isinstance(model, str) or not _MODEL_ID.fullmatch(model) or redact.secrets(model) != model:
            continue
        date = parse_date(entry.get("shutdown_date"))
        out[model] = date.isoformat() if date and date >= EARLIEST else None
    return out


async def _listing(deployment: Deployment, exchange: Exchange) -> tuple[int, Any]:
    """The status and parsed body of ``GET /models``, read up to :data:`MAX_LISTING_BYTES`
    (decoded: a compressed bomb is cut as soon as it grows past it)."""
    answer = await deployment.sender.send(exchange, deployment)
    body = bytearray()
    try:
        async for chunk in answer.chunks():
            body.extend(chunk)
            if len(body) > MAX_LISTING_BYTES:
                raise ListingTooLarge(f"the listing is larger than {MAX_LISTING_BYTES // (1024 * 1024)} MiB")
    finally:
        await answer.aclose()
    try:
        return answer.status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return answer.status, None


async def fetch(settings: Settings, transport: Any = None) -> list[Fetched]:
    """Ask every OpenAI-kind deployment for ``GET /models`` with its own key. Azure deployments
    list no shutdown dates and are reported as skipped."""
    upstream = Upstream.from_settings(settings, transport)
    results: list[Fetched] = []
    try:
        for deployment in upstream.deployments:
            if deployment.settings.kind != "openai":
                results.append(Fetched(deployment.name, {}, "skipped: Azure lists no shutdown dates"))
                continue
            exchange = Exchange.build("GET", "/models", {"accept": "application/json"}, b"")
            exchange.deployment = deployment
            try:
                status, body = await _listing(deployment, exchange)
            except Exception as error:  # any transport failure is this upstream's answer, not ours
                results.append(Fetched(deployment.name, {}, redact.secrets(f"{type(error).__name__}: {error}")[:300]))
                continue
            if status != 200:
                error_body = body.get("error") if isinstance(body, dict) else None
                message = error_body.get("message") if isinstance(error_body, dict) else None
                shown = redact.secrets(str(message or "no message"))
                results.append(Fetched(deployment.name, {}, f"HTTP {status}: {shown}"[:300]))
                continue
            results.append(Fetched(deployment.name, from_listing(body)))
    finally:
        await upstream.aclose()
    return results


def save(conn: Connection, fetched: Fetched, now: float | None = None) -> int:
    """Replace what ``fetched.upstream`` said before with what it says now; returns the rows."""
    if fetched.error is not None:
        return 0
    now = time.time() if now is None else now
    conn.execute(delete(model_lifecycle).where(model_lifecycle.c.upstream == fetched.upstream))
    rows = [
        {"upstream": fetched.upstream, "model": model, "shutdown_date": date, "fetched": now}
        for model, date in fetched.dates.items()
    ]
    if rows:
        conn.execute(insert(model_lifecycle), rows)
    return len(rows)


def read(conn: Connection) -> dict[str, UpstreamDate]:
    """The dated models any upstream reported, earliest date first (see the module docstring)."""
    out: dict[str, UpstreamDate] = {}
    query = select(model_lifecycle.c.model, model_lifecycle.c.shutdown_date, model_lifecycle.c.fetched).where(
        model_lifecycle.c.shutdown_date.is_not(None)
    )
    for model, date_text, fetched in conn.execute(query):
        date = parse_date(date_text)
        if date is None:
            continue
        seen = out.get(model)
        if seen is None or (seen.shutdown_date is not None and date < seen.shutdown_date):
            out[model] = UpstreamDate(date, dt.datetime.fromtimestamp(fetched, dt.UTC).date())
    return out


async def load(store: Store) -> dict[str, UpstreamDate]:
    """:func:`read` on the store's threads (for the pipeline, which never blocks its loop)."""
    return await store.read(read)


async def refresh(settings: Settings, store: Store, transport: Any = None, now: float | None = None) -> list[Fetched]:
    """Fetch from every upstream and cache what answered (as fetched at ``now``, default the
    time); an upstream that failed keeps its earlier rows (a dead upstream erases nothing)."""
    results = await fetch(settings, transport)
    for fetched in results:
        await store.write(functools.partial(save, fetched=fetched, now=now))
    return results


def last_fetched(conn: Connection) -> float | None:
    """When any upstream's listing was last cached (unix seconds), or None if never."""
    value = conn.execute(select(func.max(model_lifecycle.c.fetched))).scalar()
    return float(value) if value is not None else None


async def keep_fresh(
    settings: Settings,
    store: Store,
    every_s: float,
    then: Callable[[dict[str, UpstreamDate]], None],
    transport: Any = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """The gateway's refresher, until cancelled: refresh when the cache is older than ``every_s``
    (at once on a first start), hand the dates to ``then`` (the lifecycle stage), sleep until the
    next is due. A failed round is logged, by upstream and cause, and tried again in a tenth of
    the period (at least a minute): what was known stays in force meanwhile."""
    while True:
        wait = every_s
        try:
            fetched = await store.read(last_fetched)
            age = clock() - fetched if fetched is not None else None
            if age is None or age >= every_s:
                for result in await refresh(settings, store, transport, now=clock()):
                    if result.error and not result.error.startswith("skipped"):
                        log.warning("lifecycle: %s's GET /models failed: %s", result.upstream, result.error)
                        wait = max(60.0, every_s / 10)
                then(await load(store))
            else:
                wait = every_s - age
        except Exception as error:  # the store down: the refresher waits, the gateway goes on
            cause = redact.secrets(f"{type(error).__name__}: {error}")
            log.warning("lifecycle: shutdown dates not refreshed: %s", cause)
            wait = max(60.0, every_s / 10)
        await sleep(wait)
