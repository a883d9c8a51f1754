"""Reading a job's input: one request per JSONL line.

Two line formats, freely mixed:

- OpenAI's Batch API format: ``{"custom_id": "...", "method": "POST", "url": "/v1/...", "body": {...}}``;
- a bare request body (``{"model": ..., "messages": [...]}``), whose endpoint is ``--endpoint``
  (default ``/v1/chat/completions``) and whose id is ``line-N`` (N: its 1-based line number).

``--model`` fills in bodies that name no model. A line that is not a JSON object, names an
endpoint the runner does not drive, repeats a ``custom_id`` or has no model is a :class:`BadLine`
with its line number and reason; the rest of the job runs. Blank lines are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/moderations")
DEFAULT_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line number in the input
    custom_id: str
    url: str  # /v1/chat/completions ...
    body: dict[str, Any]

    @property
    def path(self) -> str:
        """The API path below /v1 (what the pipeline calls it)."""
        return self.url[3:]

    def batch_line(self) -> bytes:
        """This request in the Batch API's input format."""
        line = {"custom_id": self.custom_id, "method": "POST", "url": self.url, "body": self.body}
        return orjson.dumps(line)


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str
    custom_id: str | None = None


def normalise_endpoint(endpoint: str) -> str | None:
    path = "/" + endpoint.strip().lstrip("/")
    if not path.startswith("/v1/"):
        path = "/v1" + path
    path = path.rstrip("/")
    return path if path in ENDPOINTS else None


def parse_line(number: int, raw: bytes, model: str | None, endpoint: str) -> Line | BadLine:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return BadLine(number, f"not valid JSON: {error}")
    if not isinstance(value, dict):
        return BadLine(number, "a line must be a JSON object (a request body, or a Batch API line)")
    if "body" in value and ("url" in value or "custom_id" in value):
        custom_id = value.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id.strip():
            return BadLine(number, "custom_id must be a non-empty string")
        if value.get("method", "POST") != "POST":
            return BadLine(number, f"method must be POST, got {value.get('method')!r}", custom_id)
        url = value.get("url", endpoint)
        path = normalise_endpoint(url) if isinstance(url, str) else None
        if path is None:
            return BadLine(number, f"url must be one of {', '.join(ENDPOINTS)}, got {url!r}", custom_id)
        body = value["body"]
        if not isinstance(body, dict):
            return BadLine(number, "body must be a JSON object", custom_id)
    else:
        custom_id, path, body = f"line-{number}", endpoint, value
    if "model" not in body:
        if model is None:
            return BadLine(number, "the request names no model (set one in the line or pass --model)", custom_id)
        body = {**body, "model": model}
    if not isinstance(body["model"], str) or not body["model"]:
        return BadLine(number, "model must be a non-empty string", custom_id)
    if body.get("stream") is True:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return Line(number, custom_id, path, body)


def read_lines(path: Path, model: str | None = None, endpoint: str = DEFAULT_ENDPOINT) -> Iterator[Line | BadLine]:
    """Every non-blank line of ``path``, parsed; a repeated ``custom_id`` is a bad line (the first
    one with that id runs)."""
    normalised = normalise_endpoint(endpoint)
    if normalised is None:
        raise ValueError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            parsed = parse_line(number, raw, model, normalised)
            if isinstance(parsed, Line):
                if parsed.custom_id in seen:
                    yield BadLine(number, f"custom_id {parsed.custom_id!r} repeats an earlier line", parsed.custom_id)
                    continue
                seen.add(parsed.custom_id)
            yield parsed


def fingerprint(path: Path) -> str:
    """sha256 of the input file: a journal belongs to one input."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
