"""What the upstream billed: OpenAI's organisation Usage and Costs API, read for ``report --reconcile``.

Why through the official SDK (``openai.OpenAI(admin_api_key=…).admin.organization.usage``): it
is the client the project already trusts for OpenAI's shapes, it sends the admin key the way
OpenAI expects it, and the mock (``ferryman.mock.resources.organization``) answers the same
calls, so the tests go through exactly the path a user's report does.

What is read, for the whole UTC days ``[start, end)``, in daily buckets, every page followed
(``next_page``) until ``has_more`` is false:

- ``usage/completions`` grouped by ``model`` and ``batch``, ``usage/embeddings`` and
  ``usage/moderations`` grouped by ``model``: requests (``num_model_requests``) and tokens
  (input, of which cached; output);
- ``costs`` grouped by ``line_item``: dollars per day and line item. OpenAI names a line item
  ``"<model>, <part>"`` (``"gpt-4o-mini, input"``, ``"…, cached input"``, ``"…, output"``), so
  the model is the text before the first ``", "``. Amounts arrive as JSON numbers; they are read
  as ``Decimal(repr(float))``, the shortest text that round-trips, not the float's binary value.

Errors become :class:`UpstreamError` with one line naming the cause (the key refused, the host
unreachable, a reply that is not the API's); the admin key is never in it (it is a
:class:`ferryman.secrets.Secret`, remembered for redaction, and messages pass
:func:`ferryman.redact.secrets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai

from ferryman import redact
from ferryman.secrets import Secret

KINDS = ("completions", "embeddings", "moderations")
MAX_PAGES = 1_000  # a cursor that never ends is the upstream's bug, not a reason to loop forever
DAY = 86_400


class UpstreamError(Exception):
    """The upstream's Usage or Costs API could not be read: the message is one line, with the cause."""


@dataclass(frozen=True)
class Usage:
    """One daily bucket's usage of one kind, model and batch flag, as the Usage API reports it."""

    day: int  # the bucket's start, unix seconds (a UTC midnight)
    kind: str
    model: str
    batch: bool
    requests: int
    input_tokens: int  # all input, cached included
    cached_input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Cost:
    """One daily bucket's dollars for one line item."""

    day: int
    line_item: str
    amount_usd: Decimal

    @property
    def model(self) -> str:
        return self.line_item.split(", ", 1)[0].strip()


@dataclass(frozen=True)
class Billed:
    usage: list[Usage]
    costs: list[Cost] | None  # None: the Costs API refused (dollars are then priced from tokens)
    costs_error: str | None = None


def _pages(fetch: Callable[..., Any], what: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every bucket of every page of one endpoint, oldest first."""
    page: str | None = None
    for _ in range(MAX_PAGES):
        reply = fetch(**params, **({"page": page} if page else {})).model_dump()
        yield from reply.get("data") or []
        page = reply.get("next_page")
        if not reply.get("has_more") or not page:
            return
    raise UpstreamError(f"{what}: the upstream kept answering has_more after {MAX_PAGES} pages")


def _int(value: Any) -> int:
    return int(value or 0)


def _usage(kind: str, bucket: dict[str, Any]) -> Iterator[Usage]:
    for result in bucket.get("results") or []:
        yield Usage(
            day=int(bucket["start_time"]),
            kind=kind,
            model=str(result.get("model") or ""),
            batch=bool(result.get("batch")),
            requests=_int(result.get("num_model_requests")),
            input_tokens=_int(result.get("input_tokens")),
            cached_input_tokens=_int(result.get("input_cached_tokens")),
            output_tokens=_int(result.get("output_tokens")),
        )


def _costs(bucket: dict[str, Any]) -> Iterator[Cost]:
    for result in bucket.get("results") or []:
        amount = (result.get("amount") or {}).get("value")
        if amount is None:
            continue
        yield Cost(int(bucket["start_time"]), str(result.get("line_item") or ""), Decimal(repr(float(amount))))


def _cause(error: Exception, base_url: str) -> str:
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        detail = f": {type(cause).__name__}" if cause is not None else ""
        return f"cannot reach the upstream at {base_url}{detail}"
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return (
            f"the upstream at {base_url} refused the admin key ({error.status_code}): the Usage and Costs API "
            "needs an organisation admin key (sk-admin-…)"
        )
    if isinstance(error, openai.APIStatusError):
        return f"the upstream at {base_url} answered {error.status_code}: {error.message}"
    return f"the upstream at {base_url} sent a reply that is not the Usage API's: {type(error).__name__}"


def fetch(base_url: str, admin_key: Secret, start: int, end: int, *, timeout: float = 30.0) -> Billed:
    """The usage of :data:`KINDS` and the costs for ``[start, end)`` (whole UTC days), from ``base_url``."""
    client = openai.OpenAI(
        base_url=base_url,
        api_key="unused-by-admin-endpoints",
        admin_api_key=admin_key.reveal(),
        max_retries=1,
        timeout=timeout,
    )
    span = {"start_time": start, "end_time": end, "bucket_width": "1d"}
    usage: list[Usage] = []
    try:
        api = client.admin.organization.usage
        for kind in KINDS:
            group_by = ["model", "batch"] if kind == "completions" else ["model"]
            for bucket in _pages(getattr(api, kind), f"usage/{kind}", **span, group_by=group_by, limit=31):
                usage.extend(_usage(kind, bucket))
        try:
            pages = _pages(api.costs, "costs", **span, group_by=["line_item"], limit=180)
            costs = [cost for bucket in pages for cost in _costs(bucket)]
            costs_error = None
        except openai.APIStatusError as error:  # usage readable, costs not: price the tokens instead
            if error.status_code in (401, 403):
                raise
            costs, costs_error = None, f"costs: {error.status_code} {error.message}"
    except UpstreamError:
        raise
    except (openai.OpenAIError, KeyError, TypeError, ValueError) as error:
        raise UpstreamError(redact.secrets(_cause(error, base_url))) from None
    finally:
        client.close()
    return Billed(usage, costs, redact.secrets(costs_error) if costs_error else None)
