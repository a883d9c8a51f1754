"""Who is calling the gateway: a virtual key → :class:`~ferryman.exchange.Principal`, or a refusal.

The key comes as ``Authorization: Bearer fm-…`` (what every OpenAI SDK sends) or ``api-key:
fm-…`` (Azure-style clients). Refusals are OpenAI's 401s, and never echo the key: a wrong key,
a revoked one and an expired one each say what happened, nothing more. A key's allowed models
(globs) are checked here too, against the requested model, with a 403.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
import time

from ferryman.errors import OpenAIError, missing_key
from ferryman.exchange import Cap, Principal, Rate
from ferryman.gateway.keys import PREFIX, KeyCache, KeyRecord, TeamRecord


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
    return Principal(id=key.id, team=key.team, user=key.name, caps=tuple(caps), rates=tuple(rates))


class Authenticator:
    def __init__(self, cache: KeyCache) -> None:
        self.cache = cache

    async def principal(self, headers: dict[str, str]) -> tuple[Principal, KeyRecord]:
        """The caller, or an :class:`OpenAIError` (401)."""
        secret = presented_key(headers)
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
        return principal_of(key, team), key


def model_allowed(key: KeyRecord, model: str | None) -> bool:
    if key.models is None or model is None:
        return True
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in key.models)


# A ``"model": "…"`` member in a JSONL upload (quotes inside JSON strings are escaped, so message
# text cannot fake one).
_MODEL_MEMBER = re.compile(rb'(?<!\\)"model"\s*:\s*"((?:[^"\\]|\\.){1,256})"')


def models_in_upload(body: bytes) -> set[str]:
    """The models a batch input file's lines name (read from the raw multipart upload)."""
    return {m.decode("utf-8", errors="replace") for m in _MODEL_MEMBER.findall(body)}


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
