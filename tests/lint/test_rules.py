"""Rule codes are stable, each is documented, and selection works as ruff's does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferryman.lint.rules import RULES, SelectorError, enabled

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lint-rules.md"
DEFAULT = {r.code for r in RULES if r.default}


def test_the_codes_are_the_published_ones():
    # Codes are a public interface (noqa comments, configs, SARIF uploads): never renumber or reuse one.
    assert [r.code for r in RULES] == [
        "FM101", "FM102", "FM201", "FM202", "FM203", "FM301", "FM302", "FM303", "FM401", "FM501", "FM502",
        "FM601", "FM701", "FM801",
    ]  # fmt: skip
    assert len({r.name for r in RULES}) == len(RULES)


def test_every_rule_has_a_docs_section_its_url_points_at():
    headings = re.findall(r"^## (FM\d{3}) ([a-z-]+)$", DOCS.read_text(), flags=re.MULTILINE)
    assert headings == [(r.code, r.name) for r in RULES]
    for rule in RULES:
        assert rule.url.endswith(f"docs/lint-rules.md#{rule.code.lower()}-{rule.name}")
        assert rule.summary and rule.hint and rule.level in ("error", "warning")


def test_selection():
    assert enabled(None) == DEFAULT and "FM801" not in DEFAULT
    assert enabled(["ALL"]) == {r.code for r in RULES}
    assert enabled(["FM"]) == {r.code for r in RULES}
    assert enabled(["FM1"]) == {"FM101", "FM102"}
    assert enabled(["FM1"], ignore=["FM101"]) == {"FM102"}
    assert enabled(["FM101"], ignore=["FM1"]) == {"FM101"}  # the more specific selector wins
    assert enabled(["FM2"], ignore=["FM2"]) == set()  # a tie: ignore wins
    assert enabled(None, ["FM801"], ["FM5"]) == (DEFAULT | {"FM801"}) - {"FM501", "FM502"}
    assert enabled(["fm201"]) == {"FM201"}


@pytest.mark.parametrize("selector", ["FM999", "E501", "F"])
def test_an_unknown_selector_is_an_error(selector):
    with pytest.raises(SelectorError):
        enabled([selector])
