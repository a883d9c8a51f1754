"""The bounds stage: the integers the pipeline computes with are checked for range before
caller limits, budgets and pacing see them.

Pacing and budgets multiply ``max_tokens`` by ``n`` to reserve a call's worst case; a caller
sending ``max_tokens: 9223372036854775808`` would otherwise be told to wait (a 429 from pacing)
or overflow a counter, when the request is simply invalid. Each field below, when it is a JSON
integer at the top of the body, must lie in its range (the spec's where it gives one, else a
generous one no real request reaches); outside it the call is a 400 ``invalid_value`` in OpenAI's
shape naming the field, recorded like any refusal and never sent upstream. Values of other types
are left to the upstream, which refuses them itself (the pipeline treats them as absent).

It runs after the front door's stages (the gateway parses the body in its intake stage) and
before everything that counts.
"""

from __future__ import annotations

from typing import Any

from ferryman.errors import invalid_request
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.guard import refusal_reply

TOKENS_MAX = 2**31 - 1  # no model's context comes near; well inside every counter

# field → (lowest, highest) accepted
BOUNDS: dict[str, tuple[int, int]] = {
    "max_tokens": (0, TOKENS_MAX),
    "max_completion_tokens": (0, TOKENS_MAX),
    "max_output_tokens": (0, TOKENS_MAX),
    "n": (1, 128),  # the spec's maximum for chat completions (images: 10, checked upstream)
    "best_of": (0, 20),  # the spec's
    "dimensions": (1, 65_536),
    "top_logprobs": (0, 20),  # the spec's
}


def out_of_bounds(body: Any) -> tuple[str, int, tuple[int, int]] | None:
    """The first field of ``body`` outside its range, with its value and range; None if none."""
    if not isinstance(body, dict):
        return None
    for name, (low, high) in BOUNDS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            return name, value, (low, high)
    return None


class Bounds:
    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Bounds:
        return cls()

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        found = out_of_bounds(exchange.json)
        if found is None:
            return await call_next(exchange)
        name, value, (low, high) = found
        shown = str(value) if len(str(value)) <= 24 else str(value)[:24] + "…"
        error = invalid_request(
            f"Invalid '{name}': integer out of range. Expected a value from {low:,} to {high:,}, but got {shown}.",
            name,
            "invalid_value",
        )
        return refusal_reply(exchange, error.status, error.body(), dict(error.headers))
