"""The API's operations, from OpenAI's spec: which path template a request path is, and what
kind of body it takes (``data/endpoints.json``, made by ``scripts/vendor_endpoints.py``).

A request path is canonical here (:mod:`ferryman.apipath`): segments compared one by one, a
template's ``{param}`` standing for any one segment, the most literal template winning
(``/responses/input_tokens`` before ``/responses/{response_id}``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

_Index = dict[tuple[str, int, str], list[tuple[tuple[str, ...], str, str]]]


@functools.cache
def _index() -> _Index:
    data = json.loads(resources.files("ferryman.data").joinpath("endpoints.json").read_text())
    index: _Index = {}
    for method, template, kind in data["operations"]:
        parts = tuple(template.strip("/").split("/"))
        index.setdefault((method, len(parts), parts[0]), []).append((parts, template, kind))
    for candidates in index.values():  # most literal first
        candidates.sort(key=lambda c: sum(p.startswith("{") for p in c[0]))
    return index


def operation(method: str, path: str) -> tuple[str, str] | None:
    """``("/files/{file_id}/content", "none")`` for ``GET /files/file-1/content``; None when the
    spec has no such operation."""
    parts = path.strip("/").split("/")
    for template_parts, template, kind in _index().get((method.upper(), len(parts), parts[0]), ()):
        if all(t.startswith("{") or t == p for t, p in zip(template_parts, parts, strict=True)):
            return template, kind
    return None


def body_kind(method: str, path: str) -> str | None:
    """``json``, ``multipart``, ``either`` or ``none`` for a known operation; None otherwise."""
    found = operation(method, path)
    return found[1] if found is not None else None


def template(method: str, path: str) -> str | None:
    found = operation(method, path)
    return found[0] if found is not None else None


__all__ = ["body_kind", "operation", "template"]
