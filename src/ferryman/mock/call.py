"""One request as a handler sees it, and how resource modules declare their endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferryman.mock import spec
from ferryman.mock.faults import Fault

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

BodyKind = Literal["none", "json", "multipart"]


@dataclass
class Call:
    """A request on its way through the mock."""

    request: Request
    app: MockApp
    request_id: str
    key: str  # the caller's key id (a hash, ``key_…``): limits, quotas and objects hang on it
    body: Any = None
    fault: Fault = field(default_factory=Fault)
    model: str | None = None
    # Set by handlers: what the call used, so the app can charge quota and log it.
    usage: dict[str, Any] | None = None
    cost_usd: Decimal | None = None
    cost_tier: str = ""  # the pricing tier ``cost_usd`` was computed at (``ferryman.pricing``)
    internal: bool = False  # run by the mock itself (a batch line): no limits, no log
    prompt_tokens: int | None = None  # counted by the front door for the rate limit, when it did

    @property
    def path_params(self) -> dict[str, Any]:
        return self.request.path_params

    @property
    def query(self) -> Any:
        return self.request.query_params


Handler = Callable[[Call], Awaitable[Response | Any]]


@dataclass(frozen=True)
class Endpoint:
    """``method path`` served by ``handler``.

    ``schema`` names the request body's schema in OpenAI's spec (validated before the handler
    runs), or ``validate`` checks the body where the spec needs adjusting. ``inference`` marks
    endpoints that name a model that must exist, spend tokens against TPM and cost money.
    ``admin`` endpoints (the organisation's) answer admin keys only.
    """

    method: str
    path: str
    handler: Handler
    body: BodyKind = "none"
    schema: str | None = None
    validate: Callable[[Any], None] | None = None  # a body check of its own, instead of ``schema``
    inference: bool = False
    admin: bool = False

    def check_body(self, body: Any) -> None:
        """Raise an OpenAI-format 400 if ``body`` is not what this endpoint accepts."""
        if self.schema is not None:
            spec.check(self.schema, body)
        if self.validate is not None:
            self.validate(body)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)
