"""The three output formats: text (one line a finding, like ruff), JSON, and SARIF 2.1.0.

Text is ``path:line:col: CODE message``, with ``[*]`` after the code when ``--fix`` can fix it,
then one summary line. JSON is one object (``findings``, ``errors``, ``summary``; columns 1-based)
for scripts. SARIF is for code-scanning services (GitHub's ``upload-sarif``): every rule with its
help text and docs URL in ``tool.driver.rules``, one result per finding, unreadable files as
``toolExecutionNotifications``; ``tests/lint`` validates it against the OASIS schema.

No format ever prints source text, so a finding about a hard-coded key shows only what the rule's
message shows (the key's first three characters).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from ferryman import __version__
from ferryman.lint.result import FileResult, Finding, ParseError
from ferryman.lint.rules import BY_CODE, DOCS_URL, RULES

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FIX_FLAGS = {"safe": "--fix", "unsafe": "--fix --unsafe-fixes", "models": "--fix-models"}


@dataclass
class Run:
    results: list[FileResult]
    errors: list[ParseError]  # paths not found and files not parsed
    fixed: int = 0

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    @property
    def files(self) -> int:
        return len(self.results)


def _fix_word(finding: Finding) -> str | None:
    return finding.edit.safety if finding.edit is not None else None


def text(run: Run) -> str:
    lines = []
    for error in run.errors:
        lines.append(f"{error.path}:{error.line}:{error.col + 1}: error: {error.message}")
    for finding in run.findings:
        mark = " [*]" if _fix_word(finding) == "safe" else ""
        lines.append(f"{finding.path}:{finding.line}:{finding.col + 1}: {finding.code}{mark} {finding.message}")
    lines.append(summary(run))
    return "\n".join(lines) + "\n"


def summary(run: Run) -> str:
    findings = run.findings
    fixed = f", {run.fixed} fixed" if run.fixed else ""
    if not findings and not run.errors:
        return f"All checks passed ({run.files} file{'s' if run.files != 1 else ''}{fixed})."
    files = f"{run.files} file{'s' if run.files != 1 else ''}"
    parts = [f"Found {len(findings)} finding{'s' if len(findings) != 1 else ''} in {files}{fixed}"]
    if run.errors:
        parts.append(f"{len(run.errors)} file{'s' if len(run.errors) != 1 else ''} not linted (error)")
    by_flag: dict[str, int] = {}
    for finding in findings:
        word = _fix_word(finding)
        if word:
            by_flag[FIX_FLAGS[word]] = by_flag.get(FIX_FLAGS[word], 0) + 1
    fixable = [f"{count} fixable with {flag}" for flag, count in sorted(by_flag.items())]
    return "; ".join(parts + fixable) + "."


def as_dict(finding: Finding) -> dict[str, Any]:
    rule = BY_CODE[finding.code]
    fix = None
    if finding.edit is not None:
        fix = {"safety": finding.edit.safety, "applies_with": FIX_FLAGS[finding.edit.safety],
               "description": _describe(finding)}  # fmt: skip
    return {
        "code": finding.code,
        "name": rule.name,
        "message": finding.message,
        "path": finding.path,
        "line": finding.line,
        "column": finding.col + 1,
        "end_line": finding.end_line,
        "end_column": finding.end_col + 1,
        "severity": rule.level,
        "url": rule.url,
        "fix": fix,
    }


def _describe(finding: Finding) -> str:
    edit = finding.edit
    assert edit is not None
    if edit.kind == "rename":
        return f"rename {edit.old}= to {edit.new}="
    if edit.kind == "add":
        return f"add {edit.new}"
    return f"replace '{edit.old}' with '{edit.new}'"


def json_text(run: Run) -> str:
    data = {
        "version": 1,
        "tool": {"name": "ferryman lint", "version": __version__},
        "findings": [as_dict(f) for f in run.findings],
        "errors": [{"path": e.path, "line": e.line, "column": e.col + 1, "message": e.message} for e in run.errors],
        "summary": {"files": run.files, "findings": len(run.findings), "errors": len(run.errors), "fixed": run.fixed},
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _uri(path: str) -> dict[str, str]:
    pure = PurePath(path)
    if pure.is_absolute():
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(pure.as_posix()), "uriBaseId": "%SRCROOT%"}


def _region(line: int, col: int, end_line: int | None = None, end_col: int | None = None) -> dict[str, int]:
    region = {"startLine": max(1, line), "startColumn": col + 1}
    if end_line is not None and end_col is not None and (end_line, end_col) >= (line, col):
        region.update(endLine=end_line, endColumn=max(end_col, col) + 1)
    return region


def docs_uri() -> str | None:
    """The absolute ``file:`` URI of ``docs/lint-rules.md`` beside this package's source, if there."""
    page = Path(__file__).resolve().parents[3] / DOCS_URL
    return page.as_uri() if page.is_file() else None


def sarif_rules() -> list[dict[str, Any]]:
    page = docs_uri()
    rules = []
    for rule in RULES:
        entry: dict[str, Any] = {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": f"{rule.summary} {rule.hint}"},
            "help": {"text": f"{rule.hint} See {rule.url}.", "markdown": f"{rule.hint}\n\n{rule.code}: `{rule.url}`"},
            "defaultConfiguration": {"level": rule.level, "enabled": rule.default},
            "properties": {"fix": rule.fix or "none"},
        }
        if page is not None:
            entry["helpUri"] = f"{page}#{rule.url.partition('#')[2]}"
        rules.append(entry)
    return rules


def sarif(run: Run, root: Path | None = None) -> dict[str, Any]:
    index = {rule.code: i for i, rule in enumerate(RULES)}
    results = []
    for finding in run.findings:
        location = {"artifactLocation": _uri(finding.path),
                    "region": _region(finding.line, finding.col, finding.end_line, finding.end_col)}  # fmt: skip
        results.append(
            {
                "ruleId": finding.code,
                "ruleIndex": index[finding.code],
                "level": BY_CODE[finding.code].level,
                "message": {"text": finding.message},
                "locations": [{"physicalLocation": location}],
            }
        )
    notifications = [
        {
            "level": "error",
            "message": {"text": error.message},
            "locations": [
                {"physicalLocation": {"artifactLocation": _uri(error.path), "region": _region(error.line, error.col)}}
            ],
        }
        for error in run.errors
    ]
    base = (root or Path.cwd()).resolve().as_uri().rstrip("/") + "/"
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "ferryman lint",
                        "version": __version__,
                        **({"informationUri": docs_uri()} if docs_uri() else {}),
                        "rules": sarif_rules(),
                    }
                },
                "invocations": [{"executionSuccessful": not run.errors, "toolExecutionNotifications": notifications}],
                "originalUriBaseIds": {"%SRCROOT%": {"uri": base}},
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }


def render(run: Run, fmt: str) -> str:
    if fmt == "json":
        return json_text(run)
    if fmt == "sarif":
        return json.dumps(sarif(run), indent=2, ensure_ascii=False) + "\n"
    return text(run)


__all__: Sequence[str] = ["Run", "render", "sarif", "summary", "text"]
