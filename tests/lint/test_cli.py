"""``ferryman lint`` as a user runs it: exit codes, formats, options, config, fixes, the hook."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ferryman.cli import app

runner = CliRunner()
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
ROOT = Path(__file__).resolve().parents[2]
DIRTY = "import openai\nopenai.ChatCompletion.create(model='x', messages=[])\n"
CLEAN = "from openai import OpenAI\nclient = OpenAI(timeout=20)\n"


def invoke(*args: str):
    return runner.invoke(app, ["lint", "--today", "2026-12-04", *args], env=PLAIN)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_exit_codes(tmp_path):
    clean, dirty = write(tmp_path, "clean.py", CLEAN), write(tmp_path, "dirty.py", DIRTY)
    ok = invoke(str(clean))
    assert ok.exit_code == 0 and "All checks passed (1 file)." in ok.output
    found = invoke(str(clean), str(dirty))
    assert found.exit_code == 1 and f"{dirty}:2:1: FM301 openai.ChatCompletion.create is the 0.x SDK" in found.output
    assert invoke("--exit-zero", str(dirty)).exit_code == 0
    broken = write(tmp_path, "broken.py", "def f(:\n")
    parsed = invoke(str(dirty), str(broken))
    assert parsed.exit_code == 2 and f"{broken}:1:7: error: could not parse" in parsed.output
    assert "FM301" in parsed.output  # the other files are still linted
    assert invoke(str(tmp_path / "missing.py")).exit_code == 2


def test_usage_errors_exit_2(tmp_path):
    target = str(write(tmp_path, "a.py", CLEAN))
    for args in (["--select", "FM999"], ["--format", "xml"], ["--retiring-within", "soon"], ["--today", "monday"]):
        result = invoke(*args, target)
        assert result.exit_code == 2, (args, result.output)
    assert runner.invoke(app, ["lint", "--nope"], env=PLAIN).exit_code == 2


def test_select_and_ignore(tmp_path):
    target = str(write(tmp_path, "a.py", DIRTY + "c = openai.OpenAI()\n"))
    assert "FM501" in invoke(target).output
    only = invoke("--select", "FM3", target)
    assert "FM301" in only.output and "FM501" not in only.output
    ignored = invoke("--ignore", "FM301,FM501", target)
    assert ignored.exit_code == 0


def test_pyproject_config_is_found_above_the_path(tmp_path):
    write(tmp_path, "pyproject.toml", '[tool.ferryman.lint]\nignore = ["FM301"]\nextend-exclude = ["gen"]\n')
    write(tmp_path, "src/a.py", DIRTY)
    write(tmp_path, "src/gen/b.py", "import openai\nopenai.api_key = 'x'\n")
    assert invoke(str(tmp_path / "src")).exit_code == 0
    selected = invoke("--select", "FM3", str(tmp_path / "src"))  # --select replaces the table's, ignore stays
    assert selected.exit_code == 0
    write(tmp_path, "pyproject.toml", '[tool.ferryman.lint]\nselct = ["FM1"]\n')
    bad = invoke(str(tmp_path / "src"))
    assert bad.exit_code == 2 and "unknown key" in bad.output


def test_json_and_sarif_to_a_file(tmp_path):
    target = str(write(tmp_path, "a.py", DIRTY))
    data = json.loads(invoke("--format", "json", target).stdout)
    assert data["summary"]["findings"] == 1 and data["findings"][0]["code"] == "FM301"
    out = tmp_path / "lint.sarif"
    result = invoke("--format", "sarif", "-o", str(out), target)
    assert result.exit_code == 1 and result.stdout == ""
    assert json.loads(out.read_text())["version"] == "2.1.0"


def test_fix_diff_and_fix_models(tmp_path):
    path = write(tmp_path, "a.py", "c.chat.completions.create(model='o3', max_tokens=1, messages=[])\n")
    preview = invoke("--diff", str(path))
    assert preview.exit_code == 1 and "+c.chat.completions.create(model='o3', max_completion_tokens=1" in preview.stdout
    assert "max_tokens=1" in path.read_text()
    fixed = invoke("--fix", "--select", "FM2", str(path))
    assert fixed.exit_code == 0 and "1 fixed" in fixed.output and "max_completion_tokens=1" in path.read_text()
    invoke("--fix-models", str(path))
    assert "'o3'" not in path.read_text()


def test_help_teaches_and_list_rules(tmp_path):
    result = runner.invoke(app, ["lint", "--help"], env=PLAIN)
    assert result.exit_code == 0
    for text in ("Examples", "--fix-models", "ferryman: noqa", "tool.ferryman.lint", "FM801", "Exit codes"):
        assert text in result.output, text
    listed = runner.invoke(app, ["lint", "--list-rules"], env=PLAIN)
    assert listed.exit_code == 0 and listed.output.count("\n") == 14 and "opt-in" in listed.output


def test_the_pre_commit_hook():
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "ferryman-lint" and hook["entry"] == "ferryman lint"
    assert hook["language"] == "python" and hook["types"] == ["python"]
