"""Checking what the mock sends against OpenAI's spec, reply by reply.

A :class:`ConformanceRecorder` set as ``MockApp.observer`` sees every JSON body and every
stream event the mock sends, finds the schema the spec gives for that operation and status
(``ErrorResponse`` for errors; the stream schemas for events) and records each violation. The
project's own test suite runs the mock this way, so every body any test makes it produce is
validated against the spec.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from ferryman.mock import spec

STREAM_SCHEMAS = {
    "/chat/completions": "CreateChatCompletionStreamResponse",
    "/completions": "CreateCompletionResponse",
    "/responses": "ResponseStreamEvent",
}

# Where OpenAI's real replies break its own spec, the mock follows the API, and these
# violations are expected:
KNOWN_SPEC_GAPS = [
    # encoding_format=base64: `embedding` is a base64 string; the spec types it as an array only.
    re.compile(r"^POST /v1/embeddings 200 \(CreateEmbeddingResponse\): data\[\d+\]\.embedding: \"[A-Za-z0-9+/=]"),
    # Legacy completion stream chunks carry finish_reason null until the last, and usage null
    # with include_usage; the spec reuses the non-streamed schema, which allows neither.
    re.compile(r"^stream /v1/completions \(CreateCompletionResponse\): choices\[0\]\.finish_reason: null "),
    re.compile(r"^stream /v1/completions \(CreateCompletionResponse\): usage: null "),
    # echo + logprobs: the first prompt token has no logprob (null), the spec allows numbers only.
    re.compile(r"\(CreateCompletionResponse\): choices\[\d+\]\.logprobs: \{.*\"token_logprobs\":\[null[,\]]"),
]


def _expected(violation: str) -> bool:
    return any(gap.search(violation) for gap in KNOWN_SPEC_GAPS)


@cache
def response_schema(method: str, route: str, status: int) -> str | None:
    """The schema name the spec gives for a JSON reply, or None when it gives none."""
    if status >= 400:
        return "ErrorResponse"
    path = route.removeprefix("/v1").replace(":path}", "}")
    operation = spec.document()["paths"].get(path, {}).get(method.lower(), {})
    for code in (str(status), "200", "201"):
        content = operation.get("responses", {}).get(code, {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            name: str = ref.rsplit("/", 1)[1]
            return name
    return None


@dataclass
class ConformanceRecorder:
    """Collects spec violations in what the mock sends (thread-safe)."""

    violations: list[str] = field(default_factory=list)
    checked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _record(self, where: str, problems: list[str]) -> None:
        with self._lock:
            self.checked += 1
            found = (f"{where}: {p}" for p in problems)
            self.violations.extend(v for v in found if not _expected(v))

    def reply(self, method: str, route: str, status: int, body: bytes) -> None:
        schema = response_schema(method, route, status)
        if schema is None:
            return
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._record(f"{method} {route} {status}", ["body is not JSON"])
            return
        self._record(f"{method} {route} {status} ({schema})", spec.response_errors(schema, value))

    def event(self, route: str, event: dict[str, Any]) -> None:
        path = route.removeprefix("/v1")
        schema = STREAM_SCHEMAS.get(path)
        if schema is None:
            return
        if "error" in event and path != "/responses":
            schema = "ErrorResponse"
        self._record(f"stream {route} ({schema})", spec.response_errors(schema, event))

    def take(self) -> list[str]:
        with self._lock:
            found, self.violations = self.violations, []
            return found
