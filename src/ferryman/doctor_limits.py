"""Doctor's rate-limit check (``ferryman doctor --probe``): one tiny call per configured model,
and the limits the upstream reports in its ``x-ratelimit-*`` headers.

OpenAI sends those headers only on inference calls (not on ``GET /models``), so reading them costs
a call: the smallest the model's endpoint takes (one output token of chat, one embedding of "ok",
a free moderation), made only with ``--probe``, with a key the upstream check found working, and
never for a model whose own check failed. What the headers say is compared with the deployment's
``rpm``/``tpm`` (pacing seeds that should not exceed them) and with what is left this minute
(little left means something else spends the same key).
"""

from __future__ import annotations

from typing import Any

import httpx2

from ferryman import catalogue
from ferryman.config import DeploymentSettings, Settings
from ferryman.doctor import FAIL, OK, SKIP, WARN, Check
from ferryman.doctor_upstream import Reached, headers_for, http_failure, transport_failure
from ferryman.secrets import Secret

PROBE_TIMEOUT_S = 30.0  # at least: a reasoning model may think a while before its one token
LOW_REMAINING = 0.1  # a probe finding less than this share of a limit left warns

_LIMIT_HEADERS = (
    "limit-requests",
    "limit-tokens",
    "remaining-requests",
    "remaining-tokens",
    "reset-requests",
    "reset-tokens",
)


def probe_request(model: str) -> tuple[str, dict[str, Any]]:
    """The smallest call the model's endpoint takes: (path, body)."""
    info = catalogue.lookup(model)
    mode = info.mode if info else "chat"
    if mode == "embedding":
        return "/embeddings", {"model": model, "input": "ok"}
    if mode == "moderation":
        return "/moderations", {"model": model, "input": "ok"}
    if mode == "completion":
        return "/completions", {"model": model, "prompt": "Say OK.", "max_tokens": 1}
    if mode == "responses":
        return "/responses", {"model": model, "input": "Say OK.", "max_output_tokens": 16}
    tokens = 16 if catalogue.is_reasoning(model) else 1
    return "/chat/completions", {
        "model": model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_completion_tokens": tokens,
    }


def _probe_url(d: DeploymentSettings, model: str, path: str) -> str:
    if d.kind != "azure":
        return d.base_url + path
    from ferryman.exchange import Exchange
    from ferryman.upstream import Deployment

    # The pipeline's own Azure URL (deployment name, encoding, api-version); keys are not needed here.
    return Deployment(d.model_copy(update={"api_keys": []})).url(Exchange("POST", path, {}, model=model))


def probes(
    client: httpx2.Client,
    settings: Settings,
    served: dict[str, list[str]],
    reached: dict[str, Reached],
    failed: set[str],
    timeout: float,
) -> list[Check]:
    """One probe per configured model, but none to a deployment that did not answer, nor for a
    model its check found missing or retired (that call would only fail again, billed or not)."""
    found: list[Check] = []
    for d in settings.deployments:
        known = reached[d.name]
        for model in served[d.name]:
            name = f"rate-limits:{d.name}:{model}"
            if not known.callable:
                found.append(Check(name, SKIP, f"not probed: {known.why_not}"))
            elif f"model:{d.name}:{model}" in failed:
                found.append(Check(name, SKIP, f"not probed: the model check failed (model:{d.name}:{model})"))
            else:
                found.append(_probe(client, d, model, known.key, max(timeout, PROBE_TIMEOUT_S)))
    return found


def _probe(client: httpx2.Client, d: DeploymentSettings, model: str, key: Secret | None, timeout: float) -> Check:
    name = f"rate-limits:{d.name}:{model}"
    path, body = probe_request(model)
    details: dict[str, Any] = {"deployment": d.name, "model": model, "endpoint": path}
    try:
        url = _probe_url(d, model, path)
        response = client.post(url, json=body, headers=headers_for(d, key), timeout=timeout)
    except httpx2.HTTPError as error:
        failure = transport_failure(error, timeout, d.base_url)
        return Check(name, failure.status, f"probe failed: {failure.cause}", failure.hint, details)
    except Exception as error:  # a model name Azure cannot take as a deployment name
        return Check(name, FAIL, f"probe not sent: {getattr(error, 'message', None) or error}", "", details)
    headers = {k: response.headers.get(f"x-ratelimit-{k}") for k in _LIMIT_HEADERS}
    details.update(status=response.status_code, **{k.replace("-", "_"): v for k, v in headers.items()})
    if response.status_code >= 400:
        failure = http_failure(response.status_code, response.content, url)
        status = failure.status if failure.status == FAIL and response.status_code in (401, 403, 404, 429) else WARN
        return Check(name, status, f"probe failed: {failure.cause}", failure.hint, details)
    return _limits_check(name, d, headers, details)


def _number(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _limits_check(name: str, d: DeploymentSettings, headers: dict[str, str | None], details: dict[str, Any]) -> Check:
    limit_rq, limit_tk = _number(headers["limit-requests"]), _number(headers["limit-tokens"])
    left_rq, left_tk = _number(headers["remaining-requests"]), _number(headers["remaining-tokens"])
    if limit_rq is None and limit_tk is None and left_rq is None and left_tk is None:
        if d.rpm and d.tpm:
            return Check(name, OK, "no x-ratelimit-* headers; pacing uses the deployment's rpm and tpm", "", details)
        return Check(
            name,
            WARN,
            "no x-ratelimit-* headers in the reply: pacing cannot learn this upstream's limits",
            f"set rpm and tpm on deployment {d.name} to the limits you were given",
            details,
        )

    def part(limit: int | None, left: int | None, unit: str) -> str:
        if limit is None:
            return f"{left} {unit} left" if left is not None else f"{unit}: not reported"
        return f"{limit} {unit}/min ({left if left is not None else '?'} left)"

    message = f"{part(limit_rq, left_rq, 'requests')}, {part(limit_tk, left_tk, 'tokens')}"
    warnings: list[str] = []
    for limit, left, unit in ((limit_rq, left_rq, "requests"), (limit_tk, left_tk, "tokens")):
        if limit and left is not None and left < limit * LOW_REMAINING:
            warnings.append(f"only {left} of {limit} {unit} left this minute: something else is using this key")
    for configured, limit, setting in ((d.rpm, limit_rq, "rpm"), (d.tpm, limit_tk, "tpm")):
        if configured and limit and configured > limit:
            warnings.append(f"deployment {setting} = {configured} is above the upstream's {limit}")
    if warnings:
        hint = "lower the deployment's rpm/tpm to the upstream's limits" if any("above" in w for w in warnings) else ""
        return Check(name, WARN, f"{message}; " + "; ".join(warnings), hint, details)
    return Check(name, OK, message, "", details)
