"""Prompt tokens of chat messages, Responses input items and tool definitions.

Message framing follows the openai-cookbook notebook "How to count tokens with tiktoken":
every message costs 3 tokens (4 on gpt-3.5-turbo-0301) plus the tokens of its role, name
(+1, or -1 on 0301) and content, and every reply is primed with
``<|start|>assistant<|message|>`` (+3). That is exact for plain text messages; the notebook's
example yields OpenAI's reported 129 (cl100k) / 124 (o200k) prompt tokens.

Everything else is an estimate: multi-part content is counted part by part; images use
:mod:`.images`; audio is ~10 tokens per second of sound; files count only their filename
(their extracted text and page images are unknowable offline); tool calls count their name
and arguments; Responses ``reasoning`` items and hosted-tool items count 0.

The input is user-supplied JSON, so wrong types are skipped or coerced, never raised on.
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import struct
from typing import Any

import tiktoken

from .encodings import as_text, encoding_for_model, encoding_name_for_model, normalize_model
from .images import image_url_tokens

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "REPLY_PRIMING",
    "audio_tokens",
    "count_chat_messages",
    "count_responses_input",
    "count_tools",
]

REPLY_PRIMING = 3
#: Estimated audio input tokens per second of sound (OpenAI: ~1 token per 100 ms).
AUDIO_TOKENS_PER_SECOND = 10
_ASSUMED_BITRATE = 128_000  # bits/s, for compressed audio whose duration we cannot read

# Tool-definition overheads of the cookbook's num_tokens_for_tools().
_FUNC_INIT = {"o200k_base": 7, "cl100k_base": 10}
_PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 3, 3, -3, 3, 12
_MAX_SCHEMA_DEPTH = 16


def _counter(model: Any) -> _Counter:
    """The counter for ``model``: one per model name, built once (finding the encoding and the
    message framing of a name costs more than counting a short message)."""
    if isinstance(model, str) and len(model) <= 256:
        return _counter_of(model)
    return _Counter(model)


class _Counter:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.encoding: tiktoken.Encoding = encoding_for_model(model)
        legacy = normalize_model(model).startswith("gpt-3.5-turbo-0301")
        self.per_message, self.per_name = (4, -1) if legacy else (3, 1)

    def text(self, value: Any) -> int:
        text = as_text(value)
        # Special tokens in user text count as plain text, as encode(disallowed_special=()) does.
        return len(self.encoding.encode_ordinary(text)) if text else 0

    def message(self, message: Any) -> int:
        if not isinstance(message, dict):
            return 0
        total = self.per_message + self.text(message.get("role"))
        name = message.get("name")
        if isinstance(name, str):
            total += self.text(name) + self.per_name
        total += self.content(message.get("content")) + self.text(message.get("refusal"))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                fn = call.get("function") or call.get("custom")
                if isinstance(fn, dict):
                    total += self.call(fn.get("name"), fn.get("arguments", fn.get("input")))
        legacy_call = message.get("function_call")
        if isinstance(legacy_call, dict):
            total += self.call(legacy_call.get("name"), legacy_call.get("arguments"))
        return total

    def call(self, name: Any, arguments: Any) -> int:
        if isinstance(arguments, dict | list):
            arguments = _json(arguments)
        return self.text(name) + self.text(arguments)

    def content(self, content: Any) -> int:
        if isinstance(content, list):
            return sum(self.part(part) for part in content)
        if isinstance(content, dict):
            return self.part(content)
        return self.text(content)

    def part(self, part: Any) -> int:
        if not isinstance(part, dict):
            return self.text(part)
        kind = part.get("type")
        if kind == "refusal":
            return self.text(part.get("refusal"))
        if kind in ("image_url", "input_image"):
            image, detail = part.get("image_url"), part.get("detail")
            if isinstance(image, dict):  # chat: {"url": ..., "detail": ...}
                return image_url_tokens(image.get("url"), image.get("detail"), self.model)
            return image_url_tokens(image, detail, self.model)  # responses: url string
        if kind == "input_audio":
            nested = part.get("input_audio")
            audio: dict[str, Any] = nested if isinstance(nested, dict) else part
            return audio_tokens(audio.get("data"), audio.get("format"))
        if kind in ("file", "input_file"):
            file = part.get("file")
            return self.text((file if isinstance(file, dict) else part).get("filename"))
        return self.text(part.get("text"))  # text / input_text / output_text / unknown


_counter_of = functools.lru_cache(maxsize=256)(_Counter)  # model names come from callers: bounded


def count_chat_messages(
    messages: Any, model: Any = "gpt-4o", tools: Any = None, tool_choice: Any = None
) -> int:
    """Prompt tokens of a Chat Completions ``messages`` list (plus ``tools``, if given).

    Non-dict messages and unknown fields are skipped. ``tool_choice`` is accepted for
    symmetry with the API but does not change the estimate: OpenAI still renders the tool
    definitions, and the cost of forcing one function is unpublished.
    """
    del tool_choice
    counter = _counter(model)
    items = messages if isinstance(messages, list) else []
    return sum(counter.message(m) for m in items) + REPLY_PRIMING + count_tools(tools, model)


def count_responses_input(
    input: Any, instructions: Any = None, model: Any = "gpt-4o", tools: Any = None
) -> int:
    """Prompt tokens of a Responses API request's ``instructions`` + ``input`` (+ ``tools``).

    A string ``input`` is one user message and ``instructions`` one developer message, both
    framed like chat messages. ``function_call`` items count as assistant tool calls and
    ``function_call_output`` items as tool messages; context from ``previous_response_id``
    is unknown here and not counted.
    """
    c = _counter(model)
    total = REPLY_PRIMING + count_tools(tools, model)
    if isinstance(instructions, str) and instructions:
        total += c.message({"role": "developer", "content": instructions})
    if isinstance(input, str):
        return total + c.message({"role": "user", "content": input})
    for item in input if isinstance(input, list) else ():
        if isinstance(item, str):
            total += c.message({"role": "user", "content": item})
        elif not isinstance(item, dict):
            continue
        elif "role" in item or item.get("type") == "message":
            total += c.message(item)
        elif item.get("type") in ("function_call", "custom_tool_call"):
            arguments = item.get("arguments", item.get("input"))
            total += c.per_message + c.text("assistant") + c.call(item.get("name"), arguments)
        elif item.get("type") in ("function_call_output", "custom_tool_call_output"):
            total += c.per_message + c.text("tool") + c.content(item.get("output"))
    return total


def count_tools(tools: Any, model: Any = "gpt-4o") -> int:
    """Estimated prompt tokens of function-tool definitions (accurate to a few tokens).

    OpenAI renders tools into an unpublished TypeScript-like namespace, so exact counts are
    not public. This is the cookbook's ``num_tokens_for_tools`` algorithm (per function
    ``name:description``, per property ``key:type:description`` and enum items, with fixed
    overheads), extended to count nested object/array properties the same way instead of
    ignoring them. Accepts Chat (``{"type": "function", "function": {...}}``), Responses
    (flat ``{"type": "function", "name": ...}``) and legacy ``functions`` entries; hosted
    tools (web search, file search, ...) are not counted.
    """
    functions = [fn for fn in map(_function_def, tools if isinstance(tools, list) else ()) if fn]
    if not functions:
        return 0
    c = _counter(model)
    func_init = _FUNC_INIT.get(encoding_name_for_model(model), 7)
    total = _FUNC_END
    for fn in functions:
        description = as_text(fn.get("description")).removesuffix(".")
        total += func_init + c.text(f"{as_text(fn.get('name'))}:{description}")
        total += _properties_tokens(c, fn.get("parameters"), 0)
    return total


def _function_def(tool: Any) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        return None
    if isinstance(tool.get("function"), dict):
        return tool["function"]
    if tool.get("type", "function") in ("function", "custom") and "name" in tool:
        return tool
    return None


def _properties_tokens(c: _Counter, schema: Any, depth: int) -> int:
    if depth > _MAX_SCHEMA_DEPTH or not isinstance(schema, dict):
        return 0
    if schema.get("type") == "array" or "items" in schema:
        return _properties_tokens(c, schema.get("items"), depth + 1)
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return 0
    total = _PROP_INIT
    for key, prop in properties.items():
        prop = prop if isinstance(prop, dict) else {}
        total += _PROP_KEY
        enum = prop.get("enum")
        if isinstance(enum, list):
            total += _ENUM_INIT + sum(_ENUM_ITEM + c.text(item) for item in enum)
        kind = prop.get("type")
        kind = " | ".join(map(as_text, kind)) if isinstance(kind, list) else as_text(kind)
        description = as_text(prop.get("description")).removesuffix(".")
        total += c.text(f"{key}:{kind}:{description}")
        total += _properties_tokens(c, prop, depth + 1)
    return total


def audio_tokens(data: Any, fmt: Any = None) -> int:
    """Estimated tokens of base64 audio: its duration (WAV header, else 128 kbit/s assumed)
    times :data:`AUDIO_TOKENS_PER_SECOND`."""
    if not isinstance(data, str) or not data:
        return 0
    size = len(data) * 3 // 4 - data[-2:].count("=")
    head = _b64_prefix(data, 65536)
    seconds = _wav_seconds(head, size) if head[:4] == b"RIFF" else None
    if seconds is None:
        seconds = size * 8 / _ASSUMED_BITRATE
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def _b64_prefix(data: str, chars: int) -> bytes:
    chunk = "".join(data[:chars].split())
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        return binascii.a2b_base64(chunk)
    except (ValueError, binascii.Error):
        return b""


def _wav_seconds(head: bytes, size: int) -> float | None:
    """Duration of a RIFF/WAVE file from its header (``head``: its first bytes)."""
    i, byte_rate = 12, 0
    try:
        while i + 8 <= len(head):
            chunk_id = head[i : i + 4]
            (length,) = struct.unpack("<I", head[i + 4 : i + 8])
            if chunk_id == b"fmt ":
                (byte_rate,) = struct.unpack("<I", head[i + 16 : i + 20])
            elif chunk_id == b"data":
                if byte_rate <= 0:
                    return None
                return min(length, max(0, size - i - 8)) / byte_rate
            i += 8 + length + (length & 1)
    except struct.error:
        return None
    return None


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return ""
