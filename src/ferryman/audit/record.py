"""What goes into one audit record: bodies rendered and redacted, streams reassembled, usage found.

Bodies are kept per ``audit.bodies``: ``none`` (null), ``redacted`` (keys, bearer tokens and
personal data removed) or ``full`` (keys and bearer tokens still removed). A streamed reply is
stored reassembled, as one JSON object (the chat message built from its deltas, or the Responses
API's final ``response`` object), because personal data split over many token-sized deltas
would slip past redaction of the raw events. Every stored body is capped at
:data:`MAX_BODY_CHARS` characters, with a note saying so.

The stream recorder also counts what a stream delivered (events carrying output, their
characters, the reply's model and tier) whatever ``audit.bodies`` says: a stream cut by a crash
is recorded from those counts (:mod:`ferryman.audit.inflight`), since no body was kept for it.
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
    """Watches a stream's events: first-event time, usage, errors, what was delivered (counted),
    and the reassembled reply."""

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
        # What was delivered, counted (an estimate's inputs when no usage comes): events carrying
        # output (text, refusals, tool arguments), its characters, the data of events of no shape
        # known here; and the model and service tier the reply names.
        self.content_events = 0
        self.content_chars = 0
        self.other_chars = 0
        self.model: str | None = None
        self.service_tier: str | None = None
        self._meta: dict[str, Any] = {}
        self._meta_missing = ["id", "object", "created", "model", "system_fingerprint", "service_tier"]
        self._choices: dict[int, dict[str, Any]] = {}
        self._response: dict[str, Any] | None = None
        self._text: list[str] = []  # Responses output_text deltas, or raw data of unknown events

    def on_event(self, event: SSEEvent) -> bytes:
        data = event.data
        if not data:
            return event.raw
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.events += 1
        if data == "[DONE]":
            self.finished = True
            return event.raw
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            before = self.content_chars
            self._feed(value, len(data))
            if self.content_chars > before:
                self.content_events += 1
        else:
            self.other_chars += len(data)
            if self.keep_body:
                self._keep(self._text, data)
        return event.raw

    def _feed(self, value: dict[str, Any], size: int) -> None:
        get = value.get
        usage = get("usage")
        response = get("response")
        if isinstance(usage, dict):
            self.usage = usage
        elif response is not None:
            self.usage = usage_in(value) or self.usage
        if self.model is None:
            self._names(response if isinstance(response, dict) else value)
        kind = get("type")
        error = get("error")
        if kind == "error":
            error = value
        elif not isinstance(error, dict):
            error = None
        if error is not None:
            code = error.get("code") or error.get("type")
            self.error = error_text(f"stream error {code}: {error.get('message')}", self.mode)
        if kind in TERMINAL_EVENTS:
            self.finished = True
        choices = get("choices")
        if isinstance(choices, list):
            self._chat(value, choices)
        elif isinstance(kind, str) and kind.startswith("response."):
            if self.keep_body and isinstance(response, dict):
                self._response = response
            delta = get("delta")
            if kind.endswith(".delta") and isinstance(delta, str):  # output text, refusal, arguments…
                self._content(delta, self._text if kind == "response.output_text.delta" else None)
        elif error is None:
            self.other_chars += size
            if self.keep_body:
                self._keep(self._text, orjson.dumps(value).decode())

    def _names(self, value: dict[str, Any]) -> None:
        model, tier = value.get("model"), value.get("service_tier")
        if isinstance(model, str):
            self.model = model
        if isinstance(tier, str):
            self.service_tier = tier

    def _chat(self, chunk: dict[str, Any], choices: list[Any]) -> None:
        keep = self.keep_body
        if keep:
            meta = self._meta
            if self._meta_missing:
                for name in list(self._meta_missing):
                    if chunk.get(name) is not None:
                        meta[name] = chunk[name]
                        self._meta_missing.remove(name)
            meta["object"] = "chat.completion"  # reassembled from chat.completion.chunk events
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            get = choice.get
            into: dict[str, Any] | None = None
            if keep:
                index = get("index", 0)
                into = self._choices.get(index)
                if into is None:
                    into = self._choices[index] = {"index": index, "content": [], "refusal": [], "tools": {}}
                finish = get("finish_reason")
                if finish:
                    into["finish_reason"] = finish
            text = get("text")
            if isinstance(text, str):  # legacy completions
                self._content(text, into["content"] if into is not None else None)
            delta = get("delta")
            if not isinstance(delta, dict):
                continue
            if into is not None and delta.get("role"):
                into["role"] = delta["role"]
            content = delta.get("content")
            if isinstance(content, str):
                self._content(content, into["content"] if into is not None else None)
            refusal = delta.get("refusal")
            if isinstance(refusal, str):
                self._content(refusal, into["refusal"] if into is not None else None)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_call(into["tools"] if into is not None else None, call)

    def _tool_call(self, tools: dict[int, dict[str, Any]] | None, call: dict[str, Any]) -> None:
        function = call.get("function") or {}
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if tools is None:  # counted only
            if isinstance(arguments, str):
                self._content(arguments, None)
            return
        slot = tools.setdefault(call.get("index", len(tools)), {"id": None, "type": "function", "name": "", "args": []})
        slot["id"] = call.get("id") or slot["id"]
        if isinstance(function.get("name"), str):
            slot["name"] += function["name"]
        if isinstance(arguments, str):
            self._content(arguments, slot["args"])

    def _content(self, piece: str, into: list[str] | None) -> None:
        """Output delivered: counted, and kept in ``into`` (when bodies are kept)."""
        self.content_chars += len(piece)
        if into is not None and self.keep_body:
            self._keep(into, piece)

    def progress(self) -> dict[str, Any]:
        """What the stream has delivered so far, counted (for its write-ahead record)."""
        return {
            "content_events": self.content_events,
            "content_chars": self.content_chars,
            "other_chars": self.other_chars,
            "usage": self.usage,
            "model": self.model,
            "service_tier": self.service_tier,
        }

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
