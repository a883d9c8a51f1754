"""Content the mock makes up: text, JSON valid against a schema, tool-call arguments.

With a ``seed`` the same request gets the same reply (the generator is seeded from the seed
and the request); without one, replies vary from call to call, as OpenAI's do.
"""

from __future__ import annotations

import hashlib
import random
import string
from typing import Any

import orjson

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "you",
    "that",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "be",
    "at",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "ferry",
    "river",
    "harbour",
    "crossing",
    "model",
    "answer",
    "request",
    "token",
    "stream",
    "quick",
    "careful",
    "bright",
    "calm",
    "steady",
    "signal",
    "bridge",
]

_VOLATILE = {"stream", "stream_options", "user", "metadata", "store", "service_tier"}


_UNSEEDED = random.Random()  # one generator for every unseeded reply: seeding one costs more than the reply


def rng_for(body: Any, salt: str = "") -> random.Random:
    """Seeded from ``seed`` plus the request when a seed is given; fresh otherwise."""
    if isinstance(body, dict) and isinstance(body.get("seed"), int):
        stable = {k: v for k, v in body.items() if k not in _VOLATILE}
        digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS) + salt.encode())
        return random.Random(int.from_bytes(digest.digest()[:8], "big"))
    return _UNSEEDED


def sentence(rng: random.Random, words: int) -> str:
    picked = rng.choices(_WORDS, k=max(1, words))
    picked[0] = picked[0].capitalize()
    return " ".join(picked) + "."


def text(rng: random.Random, min_words: int = 8, max_words: int = 40) -> str:
    total = rng.randint(min_words, max_words)
    parts = []
    while total > 0:
        n = min(total, rng.randint(5, 14))
        parts.append(sentence(rng, n))
        total -= n
    return " ".join(parts)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 32:
        ref: str = node["$ref"]
        target: Any = root
        for part in ref.lstrip("#/").split("/"):
            if part:
                target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target if isinstance(target, dict) else {}
        seen += 1
    return node


def instance(schema: Any, rng: random.Random, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that validates against ``schema`` (the common JSON Schema keywords)."""
    if not isinstance(schema, dict):
        return {}
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if _resolve(o, root).get("type") != "null"] or schema[key]
            return instance(options[0] if depth > 4 else rng.choice(options), rng, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part, root)
            merged.setdefault("properties", {}).update(part.get("properties", {}))
            merged.setdefault("required", []).extend(part.get("required", []))
            merged.setdefault("type", part.get("type"))
        return instance(merged, rng, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0]
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", props.keys() if depth < 6 else []))
        out = {}
        for name, sub in props.items():
            if name in required or depth < 3:
                out[name] = instance(sub, rng, root, depth + 1)
        return out
    if kind == "array":
        low = int(schema.get("minItems", 1 if depth < 4 else 0))
        high = max(low, min(int(schema.get("maxItems", low + 2)), low + 2))
        items = schema.get("items", {})
        return [instance(items, rng, root, depth + 1) for _ in range(rng.randint(low, high))]
    if kind in ("integer", "number"):
        low_n = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high_n = schema.get("maximum", schema.get("exclusiveMaximum", low_n + 100))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low_n = low_n + 1 if kind == "integer" else low_n + 1e-6
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            high_n = high_n - 1 if kind == "integer" else high_n - 1e-6
        if kind == "integer":
            return rng.randint(int(low_n), max(int(low_n), int(high_n)))
        return round(rng.uniform(float(low_n), float(max(low_n, high_n))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-11-25T12:00:00Z"
    if fmt == "date":
        return "2026-11-25"
    if fmt == "email":
        return "someone@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/"
    if fmt == "uuid":
        return "123e4567-e89b-12d3-a456-426614174000"
    low = int(schema.get("minLength", 1))
    high = int(schema.get("maxLength", max(low, 24)))
    if schema.get("pattern"):
        return _from_pattern(schema["pattern"], rng, low, high)
    value = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
    while len(value) < low:
        value += " " + rng.choice(_WORDS)
    return value[:high]


def _from_pattern(pattern: str, rng: random.Random, low: int, high: int) -> str:
    """A best effort for simple patterns; falls back to letters."""
    try:
        import re

        candidates = ["".join(rng.choice(string.ascii_lowercase) for _ in range(max(low, 3)))]
        candidates += ["abc", "ABC", "123", "a1", "2026-11-25"]
        for value in candidates:
            if re.fullmatch(pattern, value) or re.search(pattern, value):
                return value
    except Exception:
        pass
    return "x" * max(low, 1)
