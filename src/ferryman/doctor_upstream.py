"""Doctor's upstream checks: each deployment answers with each of its keys, every model the
settings name is served and not retiring, and (``--probe``) the rate limits the upstream reports.

A deployment is asked ``GET /models`` once per key, with a short timeout, through ``httpx2``
(not the pipeline's client: doctor wants a named cause, ``connection refused`` or ``401 invalid
key``, not a retried call), and a key that does not resolve is reported without any call: no key,
no request to anyone. Azure has no key-wide model listing, so its deployments are reached only by
``--probe``. The models checked are the concrete names in the settings: deployments' ``models``
entries that are not globs, Azure's mapped models, and every alias target (``routing.aliases``),
on each deployment whose globs serve it. Their retirement comes from
:func:`ferryman.catalogue.lifecycle`, with the dates the upstream's own listing gave on top (a
``null`` there says nothing: see :mod:`ferryman.lifecycle_store`).

OpenAI sends ``x-ratelimit-*`` only on inference calls, so the rate-limit check needs a real call:
with ``probe`` it makes one per model (:mod:`ferryman.doctor_limits`); without, it says so.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2

from ferryman import catalogue
from ferryman.config import DeploymentSettings, Settings
from ferryman.doctor import FAIL, OK, SKIP, WARN, Check, Status
from ferryman.secrets import Secret, SecretError, resolve_optional

RETIRING_DAYS = 90  # a model retiring sooner than this is a warning


@dataclass
class Failure:
    status: Status
    cause: str
    hint: str


@dataclass
class Reached:
    """What doctor learnt of one deployment: its listing (None: not fetched, ``why_not`` says
    why), and a key that works, for the probe (None and ``callable``: it takes no key)."""

    listing: dict[str, str | None] | None = None
    why_not: str = ""
    key: Secret | None = None
    callable: bool = False
    errors: list[str] = field(default_factory=list)


def _concrete(pattern: str) -> bool:
    return not any(ch in pattern for ch in "*?[")


def configured_models(settings: Settings) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The concrete models each deployment is set to serve, and the alias targets no deployment
    serves (model → the aliases naming it)."""
    served: dict[str, list[str]] = {d.name: [] for d in settings.deployments}

    def add(name: str, model: str) -> None:
        if model not in served[name]:
            served[name].append(model)

    for d in settings.deployments:
        for pattern in d.models:
            if _concrete(pattern):
                add(d.name, pattern)
        if d.kind == "azure":
            for model in d.azure_deployments:
                add(d.name, model)
    unserved: dict[str, list[str]] = {}
    for alias, targets in settings.routing.aliases.items():
        for model in targets:
            serving = [d for d in settings.deployments if any(fnmatch.fnmatchcase(model, p) for p in d.models)]
            if not serving:
                unserved.setdefault(model, []).append(alias)
            for d in serving:
                add(d.name, model)
    return served, unserved


def check_upstreams(
    settings: Settings,
    *,
    today: dt.date,
    probe: bool = False,
    offline: bool = False,
    timeout: float = 5.0,
    transport: httpx2.BaseTransport | None = None,
) -> list[Check]:
    """The upstream checks, in order: each deployment, each configured model, the rate limits
    (:mod:`ferryman.doctor_limits`)."""
    served, unserved = configured_models(settings)
    upstreams: list[Check] = []
    reached: dict[str, Reached] = {}
    with httpx2.Client(timeout=httpx2.Timeout(timeout), transport=transport, follow_redirects=False) as client:
        for d in settings.deployments:
            check, reached[d.name] = _upstream(client, d, offline, timeout, settings.deployments_configured)
            upstreams.append(check)
        models = [check_model(d, m, reached[d.name], today) for d in settings.deployments for m in served[d.name]]
        for model, aliases in unserved.items():
            models += [
                Check(
                    f"alias:{alias}",
                    FAIL,
                    f"routing.aliases.{alias} names {model}, which no deployment serves (their models globs)",
                    f"add {model} to a deployment's models, or take it out of the alias",
                    {"alias": alias, "model": model},
                )
                for alias in aliases
            ]
        if not models:
            models.append(
                Check("models", SKIP, "no model named in settings (deployments' models are globs, no aliases)")
            )
        failed = {c.check for c in models if c.status == FAIL}
        limits: list[Check] = []
        if probe and not offline:
            from ferryman.doctor_limits import probes

            limits = probes(client, settings, served, reached, failed, timeout)
    if not limits:
        why = "--offline" if offline else "use --probe; costs one small call per model"
        if probe and not offline:
            why = "no model named in settings, or none answered"
        limits = [Check("rate-limits", SKIP, f"not probed ({why})")]
    return upstreams + models + limits


# -- reaching a deployment --------------------------------------------------------------------


def _keys(d: DeploymentSettings) -> tuple[list[tuple[str, Secret]], list[str]]:
    """The deployment's keys that resolve (reference, secret), and why the others do not."""
    keys: list[tuple[str, Secret]] = []
    problems: list[str] = []
    for reference in d.api_keys:
        try:
            secret = resolve_optional(reference)
        except SecretError as error:
            problems.append(f"{reference}: {error}")
            continue
        if secret is None:
            problems.append(f"{reference} is not set")
        else:
            keys.append((reference, secret))
    return keys, problems


def _upstream(
    client: httpx2.Client, d: DeploymentSettings, offline: bool, timeout: float, configured: bool
) -> tuple[Check, Reached]:
    name = f"upstream:{d.name}"
    details: dict[str, Any] = {"base_url": d.base_url, "kind": d.kind, "keys": list(d.api_keys)}
    keys, problems = _keys(d)
    if d.api_keys and not keys:
        hint = "set the variable, or fix the reference (env:NAME, file:/path, keyring:SERVICE/NAME)"
        if not configured:
            hint = "set OPENAI_API_KEY, or configure [[deployments]] (ferryman serve alone uses its embedded mock)"
        return Check(name, FAIL, "no usable key: " + "; ".join(problems), hint, details), Reached(
            why_not="no usable key"
        )
    key = keys[0][1] if keys else None
    if offline:
        return Check(name, SKIP, "not checked (--offline)", "", details), Reached(why_not="--offline")
    if d.kind == "azure":
        message = "not checked for Azure: it has no key-wide model listing (--probe calls each deployment)"
        return Check(name, SKIP, message, "", details), Reached(why_not="Azure", key=key, callable=True)
    attempts: list[tuple[str, Secret | None]] = [*keys] or [("(no key)", None)]
    outcomes: list[tuple[str, dict[str, str | None] | None, Failure | None]] = []
    working: Secret | None = None
    started = time.perf_counter()
    for reference, secret in attempts:
        listing, failure = _list_models(client, d, secret, timeout)
        outcomes.append((reference, listing, failure))
        if failure is None and working is None:
            working = secret
    elapsed_ms = round((time.perf_counter() - started) * 1000 / len(attempts))
    listing = next((found for _, found, _ in outcomes if found is not None), None)
    failures = [(ref, f) for ref, _, f in outcomes if f is not None]
    reached = Reached(listing, "" if listing is not None else "the upstream did not answer", working)
    reached.callable = listing is not None
    details.update(ms=elapsed_ms, models=len(listing) if listing is not None else None)
    details["results"] = [{"key": ref, "ok": f is None, "cause": f.cause if f else None} for ref, _, f in outcomes]
    if failures:
        many = len(outcomes) > 1
        text = "; ".join(f"key {ref}: {f.cause}" if many else f.cause for ref, f in failures)
        worst = FAIL if any(f.status == FAIL for _, f in failures) else WARN
        return Check(name, worst, text, failures[0][1].hint, details), reached
    if problems:
        unused = "; ".join(problems)
        message = f"answers ({len(listing or {})} models listed), but a key is not used: {unused}"
        return Check(name, WARN, message, "set it, or take the reference out of api_keys", details), reached
    each = f", each of {len(keys)} keys accepted" if len(keys) > 1 else ""
    message = f"answers in {elapsed_ms} ms: {len(listing or {})} models listed{each}"
    return Check(name, OK, message, "", details), reached


def headers_for(d: DeploymentSettings, key: Secret | None) -> dict[str, str]:
    headers = {"accept": "application/json"}
    if key is not None:
        if d.kind == "azure":
            headers["api-key"] = key.reveal()
        else:
            headers["authorization"] = f"Bearer {key.reveal()}"
    return headers


def _list_models(
    client: httpx2.Client, d: DeploymentSettings, key: Secret | None, timeout: float
) -> tuple[dict[str, str | None] | None, Failure | None]:
    from ferryman.lifecycle_store import from_listing

    url = f"{d.base_url}/models"
    try:
        response = client.get(url, headers=headers_for(d, key))
    except httpx2.HTTPError as error:
        return None, transport_failure(error, timeout, d.base_url)
    if response.status_code != 200:
        return None, http_failure(response.status_code, response.content, url)
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return None, Failure(
            FAIL,
            "answered 200, but not with a model list",
            "is base_url an OpenAI-compatible API? It usually ends in /v1",
        )
    return from_listing(payload), None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def transport_failure(error: BaseException, timeout: float, base_url: str) -> Failure:
    """A failed request as its named cause (refused, timeout, TLS, host not found...)."""
    chain = _chain(error)
    text = (str(error).strip().splitlines() or [""])[0][:200]
    if isinstance(error, httpx2.ConnectTimeout):
        return Failure(FAIL, f"timeout: no connection within {timeout:g} s", _slow(base_url))
    if isinstance(error, httpx2.TimeoutException):
        return Failure(FAIL, f"timeout: no answer within {timeout:g} s", _slow(base_url))
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return Failure(
            FAIL,
            f"TLS failed: {str(reason)[:200]}",
            "the certificate is not trusted here: SSL_CERT_FILE can name a CA bundle that has it",
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text.lower():
        return Failure(
            FAIL, "connection refused", f"nothing listens at {base_url}: is the upstream up, and base_url right?"
        )
    if any(isinstance(e, socket.gaierror) for e in chain):
        return Failure(FAIL, f"host name not found ({text})", "check the host in base_url, and DNS on this machine")
    if isinstance(error, httpx2.ProxyError):
        return Failure(FAIL, f"proxy failed: {text}", "check HTTPS_PROXY / HTTP_PROXY / NO_PROXY")
    if isinstance(error, httpx2.RemoteProtocolError):
        return Failure(FAIL, "the server closed the connection without answering", "is base_url an HTTP(S) API?")
    return Failure(FAIL, f"{type(error).__name__}: {text}" if text else type(error).__name__, "")


def _slow(base_url: str) -> str:
    return (
        f"{base_url} does not answer: a firewall, a proxy (HTTPS_PROXY), or a server down; "
        "if it is only slow, raise --timeout"
    )


def _error_fields(body: bytes) -> tuple[str, str]:
    """OpenAI's error ``code`` (or ``type``) and ``message``, from an error body."""
    import orjson

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode("utf-8", "replace").strip()
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", ""
    code = error.get("code") or error.get("type") or ""
    return str(code), str(error.get("message") or "")[:200]


def http_failure(status: int, body: bytes, url: str) -> Failure:
    """An error answer as its named cause, and what to do about it."""
    code, message = _error_fields(body)
    said = f": {message}" if message else ""
    if status == 401:
        return Failure(
            FAIL,
            f"401 invalid key{f' ({code})' if code else ''}{said}",
            "the upstream refused the key: check or renew it",
        )
    if status == 403:
        return Failure(
            FAIL, f"403 forbidden{said}", "the key has no access here (its project, an IP allowlist, the region)"
        )
    if status == 404 and code in ("model_not_found", "DeploymentNotFound"):
        return Failure(
            FAIL, f"404 {code}{said}", "the upstream does not serve this model (retired, or not to this key)"
        )
    if status == 404 and "/openai/deployments/" in url:
        return Failure(
            FAIL, f"404 at {url}{said}", "check base_url (https://NAME.openai.azure.com) and azure_deployments"
        )
    if status == 404:
        return Failure(FAIL, f"404 at {url}{said}", "base_url is likely wrong: an OpenAI-compatible one ends in /v1")
    if status == 429 and code in ("insufficient_quota", "billing_hard_limit_reached", "access_terminated"):
        return Failure(FAIL, f"429 {code}{said}", "the account has no quota left: add credit or raise the budget")
    if status == 429:
        return Failure(WARN, f"429 rate limited{said}", "the key is at its limit right now; run doctor again later")
    if status >= 500:
        return Failure(
            FAIL, f"{status} upstream error{said}", "the upstream is failing: try again, see its status page"
        )
    return Failure(FAIL, f"HTTP {status}{f' {code}' if code else ''}{said}", "")


# -- models -----------------------------------------------------------------------------------


def check_model(d: DeploymentSettings, model: str, reached: Reached, today: dt.date) -> Check:
    """One configured model on one deployment: listed there, and not retired or retiring soon."""
    name = f"model:{d.name}:{model}"
    listing = reached.listing
    dates = {
        m: catalogue.UpstreamDate(catalogue.parse_date(date), today) for m, date in (listing or {}).items() if date
    }
    life = catalogue.lifecycle(model, upstream=dates)
    details: dict[str, Any] = {"deployment": d.name, "model": model, "listed": None}
    if life is not None:
        details.update(life.as_json(today))
    listed = listing is not None and model in listing
    if listing is not None:
        details["listed"] = listed
    date = life.shutdown_date.isoformat() if life and life.shutdown_date else None
    successor = f" (successor: {life.successor})" if life and life.successor else ""
    move = f"move to {life.successor}" if life and life.successor else "move to a current model"
    move += " (a routing alias switches callers without a code change)"
    if listing is not None and not listed:
        if life is not None and life.retired(today):
            return Check(
                name, FAIL, f"{model} retired on {date}{successor}; {d.name} no longer lists it", move, details
            )
        return Check(
            name,
            FAIL,
            f"{d.name} does not list {model} (GET /models): calls to it would fail with model_not_found",
            "check the name, and that the key's project may use it",
            details,
        )
    note = "" if listing is not None else f"; not checked against {d.name} ({reached.why_not})"
    where = f"listed by {d.name}" if listed else "in Ferryman's catalogue"
    if life is not None and life.retired(today):
        return Check(name, FAIL, f"{model} retired on {date}{successor}{note}", move, details)
    days = life.days_left(today) if life else None
    if days is not None and days <= RETIRING_DAYS:
        return Check(name, WARN, f"{model} retires on {date}, in {days} days{successor}{note}", move, details)
    status: Status = OK if listed else SKIP
    when = f"retires on {date} ({days} days)" if days is not None else "no shutdown date known"
    return Check(name, status, f"{model}: {where}; {when}{note}", "", details)
