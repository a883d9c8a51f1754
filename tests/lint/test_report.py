"""The text, JSON and SARIF outputs; SARIF is validated against the official 2.1.0 schema
(vendored beside this file, see SARIF_SCHEMA.md)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ferryman.lint.engine import lint_source
from ferryman.lint.report import Run, json_text, render, sarif, text
from ferryman.lint.result import ParseError
from ferryman.lint.rules import RULES
from tests.leak_guard import assert_no_secrets
from tests.lint.helpers import fake_key, options

SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.json").read_text())
SOURCE = f"""
from openai import OpenAI
client = OpenAI(api_key="{fake_key()}")
client.chat.completions.create(model="o3", max_tokens=5, messages=[])  # é
print("héllo"); client.chat.completions.create(model="o3", max_tokens=5, messages=[])
""".encode()


@pytest.fixture
def run() -> Run:
    result = lint_source(SOURCE, "pkg/app.py", options())
    broken = lint_source(b"def f(:\n", "pkg/broken.py", options())
    assert broken.error is not None
    return Run([result, broken], [broken.error, ParseError("missing.py", 1, 0, "no such file or directory")])


def test_text_is_one_line_a_finding_then_a_summary(run):
    lines = text(run).splitlines()
    assert lines[0] == "pkg/broken.py:1:7: error: could not parse: invalid syntax"
    assert lines[2].startswith("pkg/app.py:3:10: FM501 OpenAI() has no timeout")
    col = SOURCE.decode().splitlines()[3].index("max_tokens") + 1
    assert f"pkg/app.py:4:{col}: FM201 [*] max_tokens is rejected by reasoning model 'o3'" in "\n".join(lines)
    assert lines[-1].startswith("Found ") and "2 files not linted (error)" in lines[-1]
    assert "fixable with --fix" in lines[-1]


def test_columns_count_characters_not_bytes(run):
    [second] = [f for f in run.findings if f.code == "FM201" and f.line == 5]
    assert second.col == SOURCE.decode().splitlines()[4].index("max_tokens")


def test_json_shape(run):
    data = json.loads(json_text(run))
    assert set(data) == {"version", "tool", "findings", "errors", "summary"}
    first = data["findings"][0]
    assert set(first) == {"code", "name", "message", "path", "line", "column", "end_line", "end_column",
                          "severity", "url", "fix"}  # fmt: skip
    fm201 = next(f for f in data["findings"] if f["code"] == "FM201")
    assert fm201["fix"] == {"safety": "safe", "applies_with": "--fix",
                            "description": "rename max_tokens= to max_completion_tokens="}  # fmt: skip
    assert fm201["url"].endswith("#fm201-max-tokens-on-reasoning-model")
    error = {"path": "pkg/broken.py", "line": 1, "column": 7, "message": "could not parse: invalid syntax"}
    assert data["errors"][0] == error
    assert data["summary"] == {"files": 2, "findings": len(run.findings), "errors": 2, "fixed": 0}


def test_sarif_is_valid_against_the_official_schema(run):
    log = sarif(run)
    jsonschema.validators.validator_for(SCHEMA)(SCHEMA).validate(log)
    driver = log["runs"][0]["tool"]["driver"]
    assert [r["id"] for r in driver["rules"]] == [r.code for r in RULES]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "lint-rules.md").as_uri()
    assert all(r["helpUri"] == f"{docs}#{r['id'].lower()}-{r['name']}" for r in driver["rules"])
    result = log["runs"][0]["results"][0]
    location = result["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "pkg/app.py", "uriBaseId": "%SRCROOT%"}
    assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_sarif_of_a_clean_run_is_valid_too():
    log = sarif(Run([lint_source(b"x = 1\n", "/abs/clean.py", options())], []))
    jsonschema.validators.validator_for(SCHEMA)(SCHEMA).validate(log)
    assert log["runs"][0]["results"] == []


def test_no_output_repeats_a_key(run):
    for fmt in ("text", "json", "sarif"):
        out = render(run, fmt)
        assert_no_secrets(out, f"the {fmt} report")
        assert "'sk-…'" in out
