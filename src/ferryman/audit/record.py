"""What goes into one audit record: bodies rendered and redacted, streams reassembled, usage found.

Bodies are kept per ``audit.bodies``: ``none`` (null), ``redacted`` (keys, bearer tokens and
personal data removed) or ``full`` (keys and bearer tokens still removed). A streamed reply is
stored reassembled, as one JSON object (the chat message built from its deltas, or the Responses
API's final ``response`` object), because personal data split over many token-sized deltas
would slip past redaction of the raw events. Every stored body is capped at
:data:`MAX_BODY_CHARS` characters, with a note saying so.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ferryman import redact
from ferryman.sse import TERMINAL_EVENTS, SSEEvent

MAX_BODY_CHARS = 64 * 1024
MAX_PARSE_BYTES = 1 << 20  # larger JSON bodies are redacted as text, from their first bytes
MAX_ERROR_CHARS = 1000


def clip(value: str, limit: int = MAX_BODY_CHARS) -> str:
    value = value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[truncated: {len(value)} characters in all]"


def render_json(value: Any, mode: str) -> str | None:
    if mode == "none" or value is None:
        return None
    return clip(orjson.dumps(redact.json_value(value, pii=mode == "redacted")).decode())


def render_body(body: bytes, content_type: str, mode: str) -> str | None:
    """A request or reply body as stored: redacted JSON, redacted text, or a note for binary data."""
    if mode == "none" or not body:
        return None
    pii = mode == "redacted"
    kind = content_type.split(";")[0].strip().lower()
    if (not kind or "json" in kind) and len(body) <= MAX_PARSE_BYTES:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return render_json(value, mode)
    head = body[: MAX_BODY_CHARS * 4 + 4096]
    decoded = head.decode("utf-8", errors="replace")
    if "\x00" in decoded or decoded.count("\ufffd") > max(4, len(decoded) // 100):
        return f"[{len(body)} bytes of {kind or 'binary data'}]"
    kept = clip(redact.text(decoded, pii))
    if len(head) < len(body) and "…[truncated" not in kept[-80:]:
        kept += f"…[truncated: {len(body)} bytes in all]"
    return kept


def error_text(message: str, mode: str = "redacted") -> str:
    return clip(redact.text(message, pii=mode != "full"), MAX_ERROR_CHARS)


def reply_error(status: int, value: Any, mode: str) -> str | None:
    """``"429 rate_limit_exceeded: ..."`` from an OpenAI error body (or just the status)."""
    if status < 400:
        return None
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or "error"
        return error_text(f"{status} {code}: {error.get('message') or ''}".rstrip(), mode)
    return f"{status}"


def usage_in(value: Any) -> dict[str, Any] | None:
    """The usage object in a reply body or stream event (chat or Responses shape), if any."""
    if not isinstance(value, dict):
        return None
    usage = value.get("usage")
    if isinstance(usage, dict):
        return usage
    response = value.get("response")
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        return response["usage"]
    return None


class StreamRecorder:
    """Watches a stream's events: first-event time, usage, errors, and the reassembled reply."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.keep_body = mode != "none"
        self.first_at: float | None = None
        self.events = 0
        self.finished = False  # saw the end: chat's [DONE], or the Responses API's final event
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.kept_chars = 0
        self.truncated = False
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._response: dict[str, Any] | None = None
        self._text: list[str] = []  # Responses output_text deltas, or raw data of unknown events

    def on_event(self, event: SSEEvent) -> bytes:
        if not event.data:
            return event.raw
        if event.is_done:
            self.finished = True
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.events += 1
        value = event.json()
        if isinstance(value, dict):
            self._feed(value)
        elif self.keep_body and not event.is_done:
            self._keep(self._text, event.data)
        return event.raw

    def _feed(self, value: dict[str, Any]) -> None:
        self.usage = usage_in(value) or self.usage
        error = value.get("error") if isinstance(value.get("error"), dict) else None
        if value.get("type") == "error":
            error = value
        if error is not None:
            code = error.get("code") or error.get("type")
            self.error = error_text(f"stream error {code}: {error.get('message')}", self.mode)
        kind = value.get("type")
        if kind in TERMINAL_EVENTS:
            self.finished = True
        if not self.keep_body:
            return
        if isinstance(value.get("choices"), list):
            self._chat(value)
        elif isinstance(kind, str) and kind.startswith("response."):
            if isinstance(value.get("response"), dict):
                self._response = value["response"]
            if kind == "response.output_text.delta" and isinstance(value.get("delta"), str):
                self._keep(self._text, value["delta"])
        elif error is None:
            self._keep(self._text, orjson.dumps(value).decode())

    def _chat(self, chunk: dict[str, Any]) -> None:
        for name in ("id", "object", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self._meta.setdefault(name, chunk[name])
        self._meta["object"] = "chat.completion"  # reassembled from chat.completion.chunk events
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            into = self._choices.setdefault(index, {"index": index, "content": [], "refusal": [], "tools": {}})
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
            if isinstance(choice.get("text"), str):  # legacy completions
                self._keep(into["content"], choice["text"])
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("role"):
                into["role"] = delta["role"]
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str):
                    self._keep(into[name], delta[name])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._tool_call(into["tools"], call)

    def _tool_call(self, tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        slot = tools.setdefault(call.get("index", len(tools)), {"id": None, "type": "function", "name": "", "args": []})
        slot["id"] = call.get("id") or slot["id"]
        function = call.get("function") or {}
        if isinstance(function.get("name"), str):
            slot["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            self._keep(slot["args"], function["arguments"])

    def _keep(self, into: list[str], piece: str) -> None:
        if self.kept_chars + len(piece) > MAX_BODY_CHARS:
            self.truncated = True
            return
        self.kept_chars += len(piece)
        into.append(piece)

    def body(self, completed: bool) -> Any:
        """The stream as one JSON value (before redaction), or None when nothing was kept."""
        note = {"events": self.events, "completed": completed, "truncated": self.truncated}
        if self._choices:
            choices = []
            for index in sorted(self._choices):
                c = self._choices[index]
                message: dict[str, Any] = {"role": c.get("role", "assistant"), "content": "".join(c["content"])}
                if c["refusal"]:
                    message["refusal"] = "".join(c["refusal"])
                if c["tools"]:
                    message["tool_calls"] = [
                        {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": "".join(args)}}
                        for _, t in sorted(c["tools"].items())
                        for args in [t["args"]]
                    ]
                choices.append({"index": index, "message": message, "finish_reason": c.get("finish_reason")})
            return {**self._meta, "choices": choices, "usage": self.usage, "stream": note}
        if self._response is not None:
            return {"response": self._response, "output_text": "".join(self._text), "stream": note}
        if self._text:
            return {"data": self._text, "stream": note}
        return {"stream": note} if self.events else None
