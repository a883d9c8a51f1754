"""Scripted replies for users' own tests.

A fixtures file is YAML or JSON: a list of rules (or ``{"rules": [...]}``). The first rule
whose ``model`` glob and ``match`` regex (searched in the last user message) fit the request
decides the reply::

    - model: "gpt-4o*"              # optional, glob
      match: "(?i)weather in (\\w+)" # optional, regex on the last user message
      content: "It is sunny."       # the assistant's text, or
      tool_calls:                   # calls to make instead
        - name: get_weather
          arguments: {city: Paris}
      refusal: "I can't help with that."  # or a refusal
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ferryman.errors import invalid_request


@dataclass(frozen=True)
class ToolCallScript:
    name: str
    arguments: dict[str, Any] | str


@dataclass(frozen=True)
class Fixture:
    model: str | None = None
    match: re.Pattern[str] | None = None
    content: str | None = None
    tool_calls: tuple[ToolCallScript, ...] = ()
    refusal: str | None = None

    def fits(self, model: str | None, last_user: str) -> bool:
        if self.model and not (model and fnmatch.fnmatchcase(model, self.model)):
            return False
        return not (self.match and not self.match.search(last_user))


def _parse_rule(raw: Any, index: int) -> Fixture:
    if not isinstance(raw, dict):
        raise invalid_request(f"Fixture rule {index} must be a mapping.", f"rules[{index}]")
    try:
        pattern = re.compile(raw["match"]) if raw.get("match") else None
    except re.error as exc:
        raise invalid_request(f"Fixture rule {index}: bad regex: {exc}.", f"rules[{index}].match") from None
    calls = []
    for call in raw.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise invalid_request(f"Fixture rule {index}: each tool call needs a name.", f"rules[{index}].tool_calls")
        calls.append(ToolCallScript(call["name"], call.get("arguments", {})))
    for name in ("content", "refusal", "model"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise invalid_request(f"Fixture rule {index}: {name} must be a string.", f"rules[{index}].{name}")
    return Fixture(raw.get("model"), pattern, raw.get("content"), tuple(calls), raw.get("refusal"))


@dataclass
class Fixtures:
    rules: list[Fixture] = field(default_factory=list)
    source: list[Any] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: Any) -> Fixtures:
        if isinstance(raw, dict):
            raw = raw.get("rules", [])
        if not isinstance(raw, list):
            raise invalid_request("Fixtures must be a list of rules.", "rules")
        return cls([_parse_rule(r, i) for i, r in enumerate(raw)], raw)

    @classmethod
    def from_path(cls, path: Path | None) -> Fixtures:
        if path is None:
            return cls()
        text = Path(path).read_text()
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.parse(raw or [])

    def find(self, model: str | None, last_user: str) -> Fixture | None:
        for rule in self.rules:
            if rule.fits(model, last_user):
                return rule
        return None
