"""Deciding what the assistant says: shared by chat completions, responses and completions.

A reply is a :class:`Draft`: text, tool calls or a refusal, with its finish reason, after
fixtures, tool choice, structured-output formats, ``max_tokens`` and ``stop`` had their say.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from ferryman.catalogue import is_reasoning
from ferryman.errors import invalid_request
from ferryman.mock import generate
from ferryman.mock.fixtures import Fixtures
from ferryman.mock.state import new_id
from ferryman.tokens import count_text, get_encoding
from ferryman.tokens import encoding_name_for_model as _encoding_name

_EFFORT_TOKENS = {"none": 0, "minimal": 0, "low": 32, "medium": 96, "high": 256, "xhigh": 512}


@dataclass(frozen=True)
class Function:
    name: str
    parameters: dict[str, Any]


@dataclass
class ToolCall:
    name: str
    arguments: str
    id: str = field(default_factory=lambda: new_id("call_"))


@dataclass
class Draft:
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    refusal: str | None = None
    finish_reason: str = "stop"  # stop | length | tool_calls

    def output_text(self) -> str:
        if self.tool_calls:
            return "".join(c.name + c.arguments for c in self.tool_calls)
        return self.content or self.refusal or ""


@dataclass
class Ask:
    """What the caller asked for, in one shape for every endpoint."""

    model: str
    last_user: str = ""
    after_tool_result: bool = False
    functions: list[Function] = field(default_factory=list)
    tool_choice: Any = "auto"  # "auto" | "none" | "required" | a function name
    parallel_tool_calls: bool = True
    json_mode: str | None = None  # None | "object" | "schema"
    json_schema: dict[str, Any] | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


def text_of(content: Any) -> str:
    """The text in a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return ""


def truncate_tokens(text: str, limit: int, model: str) -> str:
    encoding = get_encoding(_encoding_name(model))
    ids = encoding.encode(text, disallowed_special=())
    return encoding.decode(ids[: max(0, limit)])


def reasoning_tokens(model: str, effort: Any) -> int:
    """What a reasoning model (the catalogue's families: :func:`ferryman.catalogue.is_reasoning`)
    spends on reasoning at ``effort``; 0 for a model that does not reason."""
    if not is_reasoning(model):
        return 0
    return _EFFORT_TOKENS.get(effort if isinstance(effort, str) else "medium", 96)


def _pick_function(ask: Ask) -> Function | None:
    if not ask.functions or ask.tool_choice == "none":
        return None
    if isinstance(ask.tool_choice, str) and ask.tool_choice not in ("auto", "required"):
        for fn in ask.functions:
            if fn.name == ask.tool_choice:
                return fn
        raise invalid_request(
            f"Invalid value for 'tool_choice': no function named '{ask.tool_choice}' in 'tools'.",
            "tool_choice",
        )
    if ask.tool_choice == "auto" and ask.after_tool_result:
        return None
    return ask.functions[0]


def draft(ask: Ask, fixtures: Fixtures, rng: random.Random) -> Draft:
    fixture = fixtures.find(ask.model, ask.last_user)
    result: Draft
    if fixture is not None and fixture.tool_calls:
        result = Draft(
            tool_calls=[
                ToolCall(c.name, c.arguments if isinstance(c.arguments, str) else orjson.dumps(c.arguments).decode())
                for c in fixture.tool_calls
            ],
            finish_reason="tool_calls",
        )
        return result
    if fixture is not None and fixture.refusal is not None:
        return Draft(refusal=fixture.refusal)
    function = None if fixture is not None else _pick_function(ask)
    if function is not None:
        args = generate.instance(function.parameters or {"type": "object"}, rng)
        return Draft(tool_calls=[ToolCall(function.name, orjson.dumps(args).decode())], finish_reason="tool_calls")
    if fixture is not None and fixture.content is not None:
        content = fixture.content
    elif ask.json_mode == "schema":
        content = orjson.dumps(generate.instance(ask.json_schema or {}, rng)).decode()
    elif ask.json_mode == "object":
        content = orjson.dumps({"answer": generate.text(rng, 3, 12)}).decode()
    else:
        content = generate.text(rng)
    result = Draft(content=content)
    for stop in ask.stop:
        if stop and stop in content:
            result.content = content[: content.index(stop)]
    if ask.max_tokens is not None and count_text(result.content or "", ask.model) > ask.max_tokens:
        result.content = truncate_tokens(result.content or "", ask.max_tokens, ask.model)
        result.finish_reason = "length"
    return result


def pieces(text: str, model: str) -> list[str]:
    """Split text into stream deltas of about one token each, never splitting a character."""
    encoding = get_encoding(_encoding_name(model))
    pieces: list[str] = []
    pending = b""
    for token_id in encoding.encode(text, disallowed_special=()):
        pending += encoding.decode_single_token_bytes(token_id)
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def text_or_token_items(value: Any) -> list[Any]:
    """A prompt or input as a list of items: a string, a token array, or a list of either.

    A flat list of ints is one token array; anything else that is not a list gives no items.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(is_token_id(v) for v in value):
        return [value]
    return list(value) if isinstance(value, list) else []
