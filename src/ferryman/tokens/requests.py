"""Prompt-token and output-cap estimates for whole API request bodies."""

from __future__ import annotations

import functools
import urllib.parse
from typing import Any

from .chat import _Counter, _counter, count_chat_messages, count_responses_input, count_tools

__all__ = ["COMPLETIONS_DEFAULT_MAX_TOKENS", "count_request_prompt_tokens", "max_output_tokens"]

#: What ``/v1/completions`` generates per choice when ``max_tokens`` is not given.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_CHAT, _RESPONSES, _EMBEDDINGS = "/chat/completions", "/responses", "/embeddings"
_COMPLETIONS, _MODERATIONS = "/completions", "/moderations"
_ROUTES = (_CHAT, _RESPONSES, _EMBEDDINGS, _COMPLETIONS, _MODERATIONS)  # chat before completions


def endpoint_route(endpoint: Any) -> str | None:
    """The known endpoint a path or URL names ("/v1/chat/completions", "chat/completions",
    "https://host/v1/chat/completions?x=1" -> "/chat/completions"), or None."""
    if not isinstance(endpoint, str):
        return None
    return _route_of(endpoint) if len(endpoint) <= 256 else _route_of.__wrapped__(endpoint)


@functools.lru_cache(maxsize=512)  # a process sees few distinct paths
def _route_of(endpoint: str) -> str | None:
    try:
        path = urllib.parse.urlsplit(endpoint.strip()).path.rstrip("/")
    except ValueError:  # e.g. an unbalanced "[" in the host part
        return None
    path = "/" + path.lstrip("/")
    return next((route for route in _ROUTES if path.endswith(route)), None)


def count_request_prompt_tokens(endpoint: Any, body: Any) -> int:
    """Prompt tokens of a request body for ``endpoint``; 0 for unknown endpoints.

    - chat completions: ``messages`` + ``tools`` (and legacy ``functions``);
    - responses: ``instructions`` + ``input`` + ``tools``;
    - embeddings / completions: ``input`` / ``prompt`` as a string, list of strings, token
      array or list of token arrays (a token array counts its length; no framing; a
      completions ``suffix`` is added);
    - moderations: the text of ``input`` (image parts are not counted).
    """
    route = endpoint_route(endpoint)
    if route is None or not isinstance(body, dict):
        return 0
    model = body.get("model")
    if route == _CHAT:
        tools, choice = body.get("tools"), body.get("tool_choice")
        return count_chat_messages(body.get("messages"), model, tools, choice) + count_tools(
            body.get("functions"), model
        )
    if route == _RESPONSES:
        return count_responses_input(
            body.get("input"), body.get("instructions"), model, body.get("tools")
        )
    counter = _counter(model)
    if route == _COMPLETIONS:
        return _inputs(counter, body.get("prompt")) + counter.text(body.get("suffix"))
    if route == _EMBEDDINGS:
        return _inputs(counter, body.get("input"))
    return _moderation_input(counter, body.get("input"))


def _inputs(counter: _Counter, value: Any) -> int:
    """A string, a token array, or a list of strings and/or token arrays."""
    if isinstance(value, list):
        return sum(_inputs_item(counter, item) for item in value)
    return counter.text(value) if isinstance(value, str) else 0


def _inputs_item(counter: _Counter, item: Any) -> int:
    if _is_token(item):
        return 1
    if isinstance(item, list):
        return sum(1 for token in item if _is_token(token))
    return counter.text(item) if isinstance(item, str) else 0


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _moderation_input(counter: _Counter, value: Any) -> int:
    if isinstance(value, str):
        return counter.text(value)
    total = 0
    for item in value if isinstance(value, list) else ():
        if isinstance(item, str):
            total += counter.text(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            total += counter.text(item.get("text"))
    return total


def max_output_tokens(endpoint: Any, body: Any, default: int | None = None) -> int | None:
    """The most output tokens a request asks for; 0 for embeddings and moderations.

    - chat completions: ``max_completion_tokens`` (else ``max_tokens``, else ``default``)
      times ``n``;
    - completions: ``max_tokens`` (else the API's default of 16) times ``max(n, best_of)``
      times the number of prompts;
    - responses: ``max_output_tokens``, else ``default``;
    - unknown endpoints: ``default``.

    Values that are not non-negative integers are ignored (treated as absent).
    """
    route = endpoint_route(endpoint)
    if route in (_EMBEDDINGS, _MODERATIONS):
        return 0
    if route is None or not isinstance(body, dict):
        return default
    if route == _RESPONSES:
        cap = _count(body.get("max_output_tokens"))
        return default if cap is None else cap
    choices = max(_count(body.get("n")) or 1, 1)
    if route == _CHAT:
        cap = _count(body.get("max_completion_tokens"))
        cap = _count(body.get("max_tokens")) if cap is None else cap
        cap = default if cap is None else cap
        return None if cap is None else cap * choices
    cap = _count(body.get("max_tokens"))
    cap = COMPLETIONS_DEFAULT_MAX_TOKENS if cap is None else cap
    choices = max(choices, _count(body.get("best_of")) or 1)
    return cap * choices * _prompt_count(body.get("prompt"))


def _count(value: Any) -> int | None:
    return value if _is_token(value) and value >= 0 else None


def _prompt_count(prompt: Any) -> int:
    """How many prompts a completions ``prompt`` holds (a token array is one prompt)."""
    if isinstance(prompt, list) and prompt and not any(_is_token(item) for item in prompt):
        return len(prompt)
    return 1
