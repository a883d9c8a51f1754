"""The lifecycle stage: calls to models and APIs that OpenAI is retiring are made visible, and once
a model's shutdown date has passed, sent as asked, refused or sent to its successor.

OpenAI retires models on announced dates (its deprecations page, and ``shutdown_date`` in
``GET /v1/models``); a caller finds out when its calls start failing. This stage tells it before,
on every reply, in the standard headers a client library or a proxy can act on, and tells the
operator through a metric and a log line. The dates come from :func:`ferryman.catalogue.lifecycle`
(the upstream's own dates, cached in the store by ``ferryman models --refresh``, win over the
shipped table; they are read when the pipeline is built and again once an hour).

For a model with a shutdown date (the model as the caller named it, exactly: OpenAI's model ids
are case-sensitive, so ``GPT-4O-MINI`` or ``" gpt-4o-mini"`` is another model, one no upstream
serves; a name of ``routing.aliases`` is the operator's and is not checked, even one named after a
retired model, ``gpt-4o-mini = ["gpt-6-luna"]``, the way to move callers off it), and for a
retiring API (:func:`ferryman.catalogue.api_retirement`, e.g. ``/v1/assistants``):

- **headers** (``lifecycle.headers``), on every reply, success or error, plain or streamed:
  ``Deprecation: @<unix seconds>`` (RFC 9745, a structured-field date), ``Sunset: <HTTP-date>``
  (RFC 8594), and ``Link: <…/deprecations>; rel="deprecation"`` plus, for a model with a successor,
  ``<…/models/SUCCESSOR>; rel="successor-version"`` (RFC 5829). OpenAI publishes the shutdown
  date, not the day it announced one, so the Deprecation date is the shutdown date as well: a
  client is told "deprecated by then, gone then", never earlier than it can be shown. When a call
  concerns both a retiring model and a retiring API, the dates are the earlier shutdown's. One of
  each: ours replace an upstream's own ``Deprecation`` and ``Sunset`` (they are the dates this
  stage acts on, the upstream's listed ones included); an upstream's ``Link`` is kept, ours added
  after it unless it carries them already (a Ferryman upstream). The successor's name is quoted
  into its URL, so nothing in it can end the URL or the header. The stages inside this one (the
  budget's 429, a cache hit) get the headers too; a refusal before it (a key, the intake, bounds)
  or a call that ends without a reply (no upstream answered: the front door's 502) does not.
- **a metric**: ``ferryman_retiring_model_calls_total{model,shutdown_date}`` and
  ``ferryman_retiring_api_calls_total{api,shutdown_date}`` (in the telemetry registry, when
  ``telemetry.prometheus`` is on; ``model`` is labelled as the telemetry stage labels it);
- **a log line**: one WARNING on ``ferryman.lifecycle`` per model (per API) per hour.

After a model's shutdown date (``lifecycle.today``, else today in UTC), ``lifecycle.on_retired``
(a retiring API's calls always go on; only models are refused or rerouted):

- ``pass``: the call goes as it is (the upstream answers it, OpenAI with a 404);
- ``refuse``: a 404 ``model_not_found`` on ``model``, OpenAI's own answer to a retired model, whose
  message names the shutdown date and the successor; made by Ferryman (never retried, never held
  against a deployment) and never sent upstream;
- ``successor``: the body's ``model`` becomes the successor (before limits, budgets and the cache,
  so the successor's price and cache key apply), with the parameters the successor rejects
  translated as below. A model without a successor, one whose successor is retired too or not a
  model Ferryman knows, a fine-tuned model (its successor is not a fine-tune), a successor the
  caller may not use (a virtual key's allowed models, :meth:`ferryman.exchange.Principal.allows`,
  hold for the model the call would go to as for the one it names: else a key limited to
  ``gpt-4o-mini`` would reach ``gpt-6-luna``) and a body that is not JSON are refused as with
  ``refuse``, the message naming both models and saying why.

What the stage does not see: the lines of a Batch API input file (``POST /v1/batches`` names a
file, not a model; the file was uploaded earlier, perhaps before the shutdown date), which go as
written and fail line by line upstream; and the targets of an alias (the route stage picks them:
a retired model listed there reaches the upstream).

``lifecycle.translate_params`` translates, for any call, the parameters a reasoning model rejects
with a 400 (:func:`ferryman.catalogue.rejected_params`): ``max_tokens`` becomes
``max_completion_tokens`` on chat completions, a ``temperature`` or ``top_p`` other than the
default is dropped. Routing to a successor always does this for the successor.

What the stage did is kept in ``exchange.notes["lifecycle"]`` and in the call's audit record, as
tags of Ferryman's own (:data:`ferryman.exchange.AUDIT_TAGS`): ``@lifecycle`` (``refused`` |
``successor`` | ``translated``), ``@routed_from`` (the model asked for; the record's ``model`` is
the one sent), ``@shutdown_date``, ``@translated`` (``max_tokens->max_completion_tokens``,
``temperature dropped``) and, on a refusal with ``successor``, ``@successor`` (the model the call
was not sent to).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import format_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter

from ferryman import catalogue, lifecycle_store, redact
from ferryman.catalogue import ApiRetirement, Lifecycle, UpstreamDate
from ferryman.errors import model_retired
from ferryman.exchange import AUDIT_TAGS, Exchange, Reply
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.guard import refusal_reply
from ferryman.pipeline.labels import configured_models, model_label
from ferryman.pipeline.telemetry import REGISTRY
from ferryman.store import Store

log = logging.getLogger("ferryman.lifecycle")

DEPRECATIONS_URL = "https://developers.openai.com/api/docs/deprecations"
MODEL_URL = "https://developers.openai.com/api/docs/models/"
LOG_EVERY_S = 3600.0  # one log line per model (or API) per hour
REFRESH_EVERY_S = 3600.0  # the upstream's dates are read from the store again this often
NOTE = "lifecycle"

RETIRING_MODEL_CALLS = Counter(
    "ferryman_retiring_model_calls", "Calls to a model with a shutdown date (retired ones included).",
    ("model", "shutdown_date"), registry=REGISTRY,
)  # fmt: skip
RETIRING_API_CALLS = Counter(
    "ferryman_retiring_api_calls", "Calls to an API with a shutdown date (retired ones included).",
    ("api", "shutdown_date"), registry=REGISTRY,
)  # fmt: skip

Clock = Callable[[], float]  # wall-clock seconds (time.time): today's date and the hourly log
_KNOWN_MAX = 4096  # models remembered (with or without a shutdown date); model names are the callers'
_NAME_MAX = 256  # a longer model name is looked up each time, never remembered
# The first path segments of the retiring APIs: any other path is no retiring API's, at a glance.
_API_ROOTS = frozenset(
    entry.rpartition(" ")[2].split("/")[2] for api in catalogue.api_retirements() for entry in api.paths
)


def _api_of(method: str, path: str) -> ApiRetirement | None:
    parts = path.split("/", 2)
    if len(parts) < 2 or parts[1] not in _API_ROOTS:
        return None
    return catalogue.api_retirement(method, "/v1" + path)


@lru_cache(maxsize=256)  # one entry per (shutdown date, successor): bounded by the table
def deprecation_headers(shutdown: dt.date, successor: str | None = None) -> dict[str, str]:
    """``deprecation``, ``sunset`` and ``link`` for a resource that shuts down on ``shutdown``
    (midnight UTC): see the module's docstring."""
    moment = dt.datetime.combine(shutdown, dt.time(), dt.UTC)
    links = [f'<{DEPRECATIONS_URL}>; rel="deprecation"; type="text/html"']
    if successor:  # a name from the tables, quoted all the same: nothing in it can end the URL or the header
        links.append(f'<{MODEL_URL}{quote(successor, safe="")}>; rel="successor-version"')
    return {
        "deprecation": f"@{int(moment.timestamp())}",
        "sunset": format_datetime(moment, usegmt=True),
        "link": ", ".join(links),
    }


def load_upstream_dates(store: Store | None) -> dict[str, UpstreamDate]:
    """The upstream's shutdown dates cached in the store (:mod:`ferryman.lifecycle_store`), read
    while the pipeline is built (blocking, once); none when there is no store or they cannot be
    read (the shipped table still applies)."""
    if store is None:
        return {}
    try:
        with store.engine.connect() as conn:
            return lifecycle_store.read(conn)
    except Exception as exc:  # the shipped dates still apply: say so, do not fail the pipeline
        log.warning("lifecycle: the upstream's shutdown dates could not be read from the store: %s", _brief(exc))
        return {}


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact.secrets(f"{type(exc).__name__}: {text}")[:300]


class ModelLifecycle:
    def __init__(
        self,
        *,
        on_retired: str = "pass",
        translate_params: bool = False,
        headers: bool = True,
        today: dt.date | None = None,
        metrics: bool = True,
        upstream: Mapping[str, UpstreamDate] | None = None,
        labels: frozenset[str] = frozenset(),
        aliases: frozenset[str] = frozenset(),
        store: Store | None = None,
        clock: Clock = time.time,
    ) -> None:
        """``today``: act as on this date (None: the clock's date, UTC); ``upstream``: the upstream's
        own shutdown dates; ``labels``: model names that may be metric labels besides the price
        table's; ``aliases``: the names of ``routing.aliases``, never checked (an operator who names
        an alias after a retired model, ``gpt-4o-mini = ["gpt-6-luna"]``, has chosen where it goes);
        ``store``: where the upstream's dates are read again once an hour."""
        self.on_retired = on_retired
        self.translate_params = translate_params
        self.headers = headers
        self.fixed_today = today
        self.metrics = metrics
        self.upstream: dict[str, UpstreamDate] = dict(upstream or {})
        self.labels = labels | frozenset(catalogue.lifecycle_table()["shutdowns"]) | frozenset(self.upstream)
        self.aliases = aliases
        self.store = store
        self.clock = clock
        self._logged: dict[str, float] = {}  # model or API label -> when its line was last logged
        self._known: dict[str, Lifecycle | None] = {}  # model -> lifecycle_of(model), until a refresh
        self._counters: dict[tuple[int, str, str], Any] = {}  # metric children by labels (labels() is slow-ish)
        self._loaded_at = clock()
        self._refreshing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> ModelLifecycle:
        life = settings.lifecycle
        store = parts.get("store")
        return cls(
            on_retired=life.on_retired,
            translate_params=life.translate_params,
            headers=life.headers,
            today=life.today,
            metrics=settings.telemetry.prometheus,
            upstream=load_upstream_dates(store),
            labels=configured_models(settings),
            aliases=frozenset(settings.routing.aliases),
            store=store,
        )

    def today(self) -> dt.date:
        return self.fixed_today or dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    def lifecycle_of(self, model: str) -> Lifecycle | None:
        """The model's lifecycle when it has a shutdown date, else None."""
        if model in self._known:
            return self._known[model]
        life = catalogue.lifecycle(model, self.upstream)
        found = life if life is not None and life.shutdown_date is not None else None
        if len(model) <= _NAME_MAX and len(self._known) < _KNOWN_MAX:
            self._known[model] = found
        return found

    # -- the stage -----------------------------------------------------------------------------

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        self._refresh_if_due()
        model = exchange.model if isinstance(exchange.json, dict) else None
        life = self.lifecycle_of(model) if model and model not in self.aliases else None
        api = _api_of(exchange.method, exchange.path)
        if life is None and api is None and not self.translate_params:
            return await call_next(exchange)
        today = self.today()
        if life is not None:
            self._notice_model(life, today)
        if api is not None:
            self._notice_api(api, today)
        if life is not None and life.retired(today) and self.on_retired != "pass":
            if self.on_retired == "refuse":
                reply = self._refuse(exchange, life, "")
            else:
                reply = await self._to_successor(exchange, life, today, call_next)
        else:
            if self.translate_params and model:
                self._translate(exchange, model)
            reply = await call_next(exchange)
        if self.headers:
            _add_headers(reply, life, api)
        return reply

    # -- what happens to the call --------------------------------------------------------------

    def _refuse(self, exchange: Exchange, life: Lifecycle, why: str, successor: str | None = None) -> Reply:
        """A 404 ``model_not_found`` made here; ``why`` says why the successor was not used, and
        ``successor`` (the model the call was not sent to) goes into the record as ``@successor``."""
        assert life.shutdown_date is not None
        instead = f"; use `{life.successor}` instead" if life.successor and not why else ""
        message = (
            f"The model `{_shown(life.model)}` was shut down on {life.shutdown_date.isoformat()}{instead}{why}. "
            f'Ferryman refused the call (lifecycle.on_retired = "{self.on_retired}"); '
            f"learn more here: {DEPRECATIONS_URL}"
        )
        tags = {"@lifecycle": "refused", "@shutdown_date": life.shutdown_date.isoformat()}
        if successor:
            tags["@successor"] = successor
        _record(exchange, tags)
        exchange.notes[NOTE] = {"action": "refused", "model": life.model, "shutdown_date": life.shutdown_date}
        error = model_retired(_shown(life.model), message)
        return refusal_reply(exchange, error.status, error.body(), dict(error.headers))

    async def _to_successor(self, exchange: Exchange, life: Lifecycle, today: dt.date, call_next: Handler) -> Reply:
        assert life.shutdown_date is not None
        successor = life.successor
        if not successor:
            return self._refuse(exchange, life, ", and it has no successor to send the call to")
        why = self._not_to(exchange, life, successor, today)
        if why:
            return self._refuse(exchange, life, why, successor)
        body = {**exchange.json, "model": successor}
        translated = _translations(successor, exchange.path, body)
        exchange.set_json(body)
        exchange.model = successor
        tags = {"@lifecycle": "successor", "@routed_from": life.model, "@shutdown_date": life.shutdown_date.isoformat()}
        if translated:
            tags["@translated"] = ",".join(translated)
        _record(exchange, tags)
        exchange.notes[NOTE] = {
            "action": "successor",
            "routed_from": life.model,
            "model": successor,
            "shutdown_date": life.shutdown_date,
            "translated": translated,
        }
        return await call_next(exchange)

    def _not_to(self, exchange: Exchange, life: Lifecycle, successor: str, today: dt.date) -> str:
        """Why the call cannot go to ``successor`` (in words, for the refusal), or ``""``."""
        if life.model.startswith("ft:"):
            return f"; a fine-tuned model is not sent to its base model's successor `{successor}`"
        if catalogue.lookup(successor) is None and successor not in self.upstream:
            return f"; its successor `{successor}` is not a model Ferryman knows"
        after = catalogue.lifecycle(successor, self.upstream)
        if after is not None and after.retired(today):
            assert after.shutdown_date is not None
            return f"; its successor `{successor}` was shut down too, on {after.shutdown_date.isoformat()}"
        if not exchange.principal.allows(successor):  # the key's allowlist holds for the successor too
            return f"; its successor `{successor}` is not a model this API key may use"
        if exchange.upload is not None or "json" not in exchange.headers.get("content-type", "json"):
            return f"; the request is not JSON, so Ferryman cannot send it to `{successor}` instead"
        return ""

    def _translate(self, exchange: Exchange, model: str) -> None:
        if exchange.upload is not None or not isinstance(exchange.json, dict):
            return
        body = dict(exchange.json)
        translated = _translations(model, exchange.path, body)
        if not translated:
            return
        exchange.set_json(body)
        _record(exchange, {"@lifecycle": "translated", "@translated": ",".join(translated)})
        exchange.notes[NOTE] = {"action": "translated", "model": model, "translated": translated}

    # -- telling the operator ------------------------------------------------------------------

    def _notice_model(self, life: Lifecycle, today: dt.date) -> None:
        assert life.shutdown_date is not None
        label = model_label(life.model, self.labels)
        shutdown = life.shutdown_date.isoformat()
        if self.metrics:
            self._count(RETIRING_MODEL_CALLS, label, shutdown)
        if not self._due(f"model:{label}"):
            return
        days = life.days_left(today) or 0
        successor = f"; its successor is {life.successor}" if life.successor else ""
        fields = {"model": label, "shutdown_date": shutdown, "successor": life.successor, "days_left": days}
        if days > 0:
            log.warning(
                "model %s shuts down on %s (in %d days)%s; see %s",
                label, shutdown, days, successor, DEPRECATIONS_URL, extra=fields,
            )  # fmt: skip
        else:
            log.warning(
                'model %s was shut down on %s (%d days ago)%s; lifecycle.on_retired = "%s"; see %s',
                label, shutdown, -days, successor, self.on_retired, DEPRECATIONS_URL, extra=fields,
            )  # fmt: skip

    def _notice_api(self, api: ApiRetirement, today: dt.date) -> None:
        shutdown = api.shutdown_date.isoformat()
        if self.metrics:
            self._count(RETIRING_API_CALLS, api.name, shutdown)
        if not self._due(f"api:{api.name}"):
            return
        days = (api.shutdown_date - today).days
        successor = f"; its successor is {api.successor}" if api.successor else ""
        when = f"shuts down on {shutdown} (in {days} days)" if days > 0 else f"was shut down on {shutdown}"
        log.warning("the %s %s%s; see %s", api.name, when, successor, DEPRECATIONS_URL, extra={"api": api.name})

    def _count(self, metric: Counter, name: str, shutdown: str) -> None:
        key = (id(metric), name, shutdown)
        child = self._counters.get(key)
        if child is None:
            child = metric.labels(name, shutdown)
            if len(self._counters) < _KNOWN_MAX:  # labels are bounded; so is this, whatever they are
                self._counters[key] = child
        child.inc()

    def _due(self, key: str) -> bool:
        """True at most once an hour per key (a clock set back counts as due)."""
        now = self.clock()
        last = self._logged.get(key)
        if last is not None and 0 <= now - last < LOG_EVERY_S:
            return False
        self._logged[key] = now
        return True

    # -- the upstream's dates ------------------------------------------------------------------

    def _refresh_if_due(self) -> None:
        if self.store is None or self._refreshing is not None or self.clock() - self._loaded_at < REFRESH_EVERY_S:
            return
        self._loaded_at = self.clock()
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    def use_upstream_dates(self, dates: Mapping[str, UpstreamDate]) -> None:
        """Act on these upstream dates from the next call on (the gateway's refresher calls this
        right after it caches a fresh ``GET /v1/models``, so nobody waits for the hourly read)."""
        self.upstream = dict(dates)
        self.labels = self.labels | frozenset(self.upstream)
        self._known = {}

    async def _refresh(self) -> None:
        assert self.store is not None
        try:
            self.use_upstream_dates(await lifecycle_store.load(self.store))
        except Exception as exc:  # the dates known so far still apply
            log.warning("lifecycle: the upstream's shutdown dates could not be read again: %s", _brief(exc))
        finally:
            self._refreshing = None


def _translations(model: str, path: str, body: dict[str, Any]) -> list[str]:
    """Rewrite in ``body`` the parameters ``model`` rejects; what was done, in words."""
    done: list[str] = []
    for rejection in catalogue.rejected_params(model, "/v1" + path, body):
        value = body.pop(rejection.param)
        target = rejection.replacement
        if target and body.get(target) is None:
            body[target] = value
            done.append(f"{rejection.param}->{target}")
        else:
            done.append(f"{rejection.param} dropped")
    return done


def _shown(model: str) -> str:
    """A model name as a refusal repeats it: a fine-tuned name is the caller's, of any length."""
    return model if len(model) <= _NAME_MAX else model[:_NAME_MAX] + "…"


def _record(exchange: Exchange, tags: dict[str, str]) -> None:
    noted = exchange.notes.setdefault(AUDIT_TAGS, {})
    if isinstance(noted, dict):
        noted.update(tags)


def _add_headers(reply: Reply, life: Lifecycle | None, api: ApiRetirement | None) -> None:
    dates: list[tuple[dt.date, str | None]] = []
    if life is not None and life.shutdown_date is not None:
        dates.append((life.shutdown_date, life.successor))
    if api is not None:
        dates.append((api.shutdown_date, None))
    if not dates:
        return
    shutdown = min(date for date, _ in dates)
    successor = life.successor if life is not None else None
    headers = dict(deprecation_headers(shutdown, successor))
    link = reply.headers.get("link")
    if link:  # the upstream's links first, then those of ours it does not carry already (a Ferryman upstream)
        ours = [value for value in headers["link"].split(", ") if value not in link]
        headers["link"] = ", ".join([link, *ours])
    reply.headers.update(headers)  # one Deprecation and one Sunset: ours, the dates this stage acts on
