"""Who is calling the gateway: a virtual key → :class:`~ferryman.exchange.Principal`, or a refusal.

The key comes as ``Authorization: Bearer fm-…`` (what every OpenAI SDK sends) or ``api-key:
fm-…`` (Azure-style clients). Refusals are OpenAI's 401s, and never echo the key: a wrong key,
a revoked one and an expired one each say what happened, nothing more. Authentication is a
pipeline stage (:class:`Authenticate`), so refusals are audited like calls. A key's allowed
models (globs) travel on its principal (:meth:`~ferryman.exchange.Principal.allows`); the intake
stage checks the model asked for (403), the lifecycle stage a successor it would send the call to.
"""

from __future__ import annotations

import hmac
import time

from ferryman.errors import OpenAIError, missing_key
from ferryman.exchange import Cap, Exchange, Principal, Rate, Reply
from ferryman.gateway.keys import PREFIX, KeyCache, KeyRecord, TeamRecord, billing_tags
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.guard import refusal_reply


def presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    api_key = headers.get("api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def _refused(message: str, code: str) -> OpenAIError:
    return OpenAIError(401, message, "invalid_request_error", None, code)


def principal_of(key: KeyRecord, team: TeamRecord | None) -> Principal:
    caps: list[Cap] = []
    rates: list[Rate] = []
    if key.budget_usd is not None:
        caps.append(Cap(f"key:{key.id}", key.budget_period or "month", key.budget_usd))
    if key.rpm or key.tpm:
        rates.append(Rate(f"key:{key.id}", key.rpm, key.tpm))
    if team is not None:
        if team.budget_usd is not None:
            caps.append(Cap(f"team:{team.name}", team.budget_period or "month", team.budget_usd))
        if team.rpm or team.tpm:
            rates.append(Rate(f"team:{team.name}", team.rpm, team.tpm))
    return Principal(
        id=key.id,
        team=key.team,
        user=key.name,
        caps=tuple(caps),
        rates=tuple(rates),
        models=key.models,
        billing_tags=billing_tags(key, team),
    )


# ``Exchange.notes`` key under which the proxy hands over the key the caller presented (taken
# off at once by the stage: it is never recorded).
CREDENTIAL_NOTE = "gateway_credential"


class Authenticate:
    """The gateway's first stage after the guard: the caller's virtual key → its
    :class:`~ferryman.exchange.Principal`, or a 401 that audit and telemetry record under
    ``anonymous``."""

    def __init__(self, cache: KeyCache) -> None:
        self.cache = cache

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        secret = exchange.notes.pop(CREDENTIAL_NOTE, None)
        try:
            exchange.principal = principal = await self.principal(secret)
        except OpenAIError as error:
            return refusal_reply(exchange, error.status, error.body(), dict(error.headers))
        # The key's own tags win over the caller's: a header reports, it never bills.
        exchange.tags = {**exchange.tags, **dict(principal.billing_tags or ())}
        return await call_next(exchange)

    async def principal(self, secret: str | None) -> Principal:
        """The caller, or an :class:`OpenAIError` (401)."""
        if secret is None:
            raise missing_key()
        if not secret.startswith(PREFIX) or len(secret) > 256:
            raise _refused(
                "Incorrect API key provided. Use a Ferryman virtual key (fm-…) issued by this gateway.",
                "invalid_api_key",
            )
        found = await self.cache.lookup(secret)
        if found is None:
            raise _refused("Incorrect API key provided. The key is not known to this gateway.", "invalid_api_key")
        key, team = found
        state = key.state(time.time())
        if state == "revoked":
            raise _refused("This API key has been revoked.", "key_revoked")
        if state == "expired":
            raise _refused("This API key has expired.", "key_expired")
        return principal_of(key, team)


def model_allowed(principal: Principal, model: str | None) -> bool:
    """The key's allowed models (:meth:`Principal.allows`, where the rule lives so that the
    pipeline's stages, which never import the gateway, apply the same one)."""
    return principal.allows(model)


def model_refused(model: str) -> OpenAIError:
    return OpenAIError(
        403,
        f"This API key is not allowed to use the model `{model}`.",
        "invalid_request_error",
        "model",
        "model_not_allowed",
    )


def admin_matches(presented: str | None, admin_key: str | None) -> bool:
    """Constant-time check of the admin key (no admin key set: nobody is admin)."""
    if not admin_key or not presented:
        return False
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), admin_key.encode("utf-8", "surrogateescape")
    )
