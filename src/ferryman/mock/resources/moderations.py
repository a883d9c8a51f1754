"""``POST /v1/moderations``: deterministic scores, and flags you can trigger on purpose.

Scores are a function of the input alone. A category is flagged when its input contains one
of a few obvious words for it (``"kill"`` → ``violence``), or an explicit marker
``[flag:<category>]`` (``"[flag:self-harm/intent]"``) for categories no test should need
real words for. A flagged subcategory flags its parent (``violence/graphic`` → ``violence``).
Image parts are scored from their URL (words in it count; a data URL never flags).
Moderation is free: no usage, no cost.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ferryman.catalogue import lookup
from ferryman.errors import invalid_request
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.state import new_id

DEFAULT_MODEL = "omni-moderation-latest"
THRESHOLD = 0.5

#: Every category the spec's ``CreateModerationResponse`` requires, with the input types
#: omni-moderation scores it on.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("text",),
    "harassment/threatening": ("text",),
    "hate": ("text",),
    "hate/threatening": ("text",),
    "illicit": ("text",),
    "illicit/violent": ("text",),
    "self-harm": ("text", "image"),
    "self-harm/intent": ("text", "image"),
    "self-harm/instructions": ("text", "image"),
    "sexual": ("text", "image"),
    "sexual/minors": ("text",),
    "violence": ("text", "image"),
    "violence/graphic": ("text", "image"),
}
_LEGACY_MISSING = ("illicit", "illicit/violent")  # text-moderation-* models have no score for these

_KEYWORDS: dict[str, tuple[str, ...]] = {
    "harassment": ("idiot", "moron", "loser", "pathetic"),
    "harassment/threatening": ("watch your back", "you will regret", "i will find you"),
    "hate": ("subhuman", "vermin"),
    "hate/threatening": ("wipe them out", "exterminate them"),
    "illicit": ("shoplift", "launder money", "counterfeit", "hack into"),
    "illicit/violent": ("build a bomb", "make a bomb", "untraceable gun"),
    "self-harm": ("self-harm", "hurt myself", "cut myself"),
    "self-harm/intent": ("i want to die", "kill myself", "end my life"),
    "self-harm/instructions": ("how to kill myself", "ways to die"),
    "sexual": ("porn", "nude", "explicit sex"),
    "violence": ("kill", "murder", "shoot", "stab", "attack"),
    "violence/graphic": ("gore", "dismember", "mutilat", "blood everywhere"),
}
_PATTERNS = {
    category: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")", re.IGNORECASE)
    for category, words in _KEYWORDS.items()
}
_MARKER = re.compile(r"\[flag:([a-z/-]+)\]", re.IGNORECASE)


def _fraction(text: str, category: str) -> float:
    digest = hashlib.blake2b(f"{category}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _matches(text: str) -> set[str]:
    found = {c for c, pattern in _PATTERNS.items() if pattern.search(text)}
    found |= {m.lower() for m in _MARKER.findall(text) if m.lower() in CATEGORIES}
    for category in list(found):
        if "/" in category:
            found.add(category.split("/")[0])
    return found


def _parts(value: Any) -> list[list[tuple[str, str]]]:
    """The inputs, each a list of ``(kind, text)``: a string is one text input; a list of
    multimodal parts is one input; a list of strings is one input per string."""
    if isinstance(value, str):
        return [[("text", value)]]
    if not isinstance(value, list):
        return []
    if all(isinstance(v, str) for v in value):
        return [[("text", v)] for v in value]
    one: list[tuple[str, str]] = []
    for part in value:
        if isinstance(part, dict) and part.get("type") == "text":
            one.append(("text", str(part.get("text", ""))))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            one.append(("image", "" if url.startswith("data:") else url))
    return [one]


def _result(parts: list[tuple[str, str]], legacy: bool) -> dict[str, Any]:
    kinds = {kind for kind, _ in parts}
    text = "\n".join(t for _, t in parts)
    hits = _matches(text)
    categories: dict[str, bool | None] = {}
    scores: dict[str, float] = {}
    applied: dict[str, list[str]] = {}
    for category, supported in CATEGORIES.items():
        h = _fraction(text, category)
        score = 0.6 + 0.39 * h if category in hits else 10 ** (-6 + 3 * h)
        scores[category] = round(score, 8)
        categories[category] = scores[category] >= THRESHOLD
        applied[category] = [k for k in supported if k in kinds]
        if legacy and category in _LEGACY_MISSING:
            categories[category], scores[category], applied[category] = None, 0.0, []
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    model = body.get("model") or DEFAULT_MODEL
    info = lookup(model)
    if info is None or info.mode != "moderation":
        raise invalid_request(
            f"Invalid value for 'model' = {model}. Please check the OpenAI documentation and try again.", "model"
        )
    legacy = model.startswith("text-moderation")
    inputs = _parts(body["input"])
    if legacy and any(kind == "image" for parts in inputs for kind, _ in parts):
        raise invalid_request(f"Model '{model}' does not support image inputs.", "input", "invalid_value")
    call.usage = None
    call.cost_usd = None
    return json_response(
        {
            "id": new_id("modr-", 32),
            "model": model,
            "results": [_result(parts, legacy) for parts in inputs],
        }
    )


ENDPOINTS = [
    Endpoint("POST", "/v1/moderations", create, body="json", schema="CreateModerationRequest", inference=True),
]
