"""Finding files, parse errors that do not stop a run, ``# ferryman: noqa``, worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.lint import checks
from ferryman.lint.config import DEFAULT_EXCLUDE, Excluder
from ferryman.lint.engine import discover, lint_files, lint_source, noqa_lines
from tests.lint.helpers import codes, options

BAD = "import openai\nopenai.ChatCompletion.create(model='x')\n"


@pytest.mark.parametrize(
    ("comment", "left"),
    [("# ferryman: noqa", []), ("# ferryman: noqa[FM301]", []), ("# ferryman: NOQA[fm3]", []),
     ("#ferryman:noqa[FM102, FM301]", []), ("# ferryman: noqa[FM501]", ["FM301"]), ("# noqa: FM301", ["FM301"])],
)  # fmt: skip
def test_noqa_on_the_line(comment, left):
    source = BAD.replace("model='x')", f"model='x')  {comment}")
    assert codes(source, ("FM301",)) == left


def test_noqa_lines_parses_codes():
    assert noqa_lines(b"a = 1  # ferryman: noqa[FM101,FM2]\nb = 2\nc = 3  # ferryman: noqa\n") == {
        1: ("FM101", "FM2"),
        3: None,
    }


def test_a_file_that_does_not_parse_is_an_error_with_its_line():
    result = lint_source(b"x = 1\ndef f(:\n", "broken.py", options())
    assert result.error is not None and result.error.line == 2 and "could not parse" in result.error.message
    nul = lint_source(b"x = 1\x00\n", "nul.py", options())
    assert nul.error is not None


def test_a_bug_in_a_rule_is_reported_for_that_file_only(monkeypatch):
    def broken(cx):
        raise RuntimeError("boom")

    monkeypatch.setattr(checks, "run", broken)
    result = lint_source(b"x = 1\n", "x.py", options())
    assert result.error is not None and "internal error" in result.error.message and "boom" in result.error.message


def _tree(root: Path) -> None:
    for rel in ("app/main.py", "app/util.txt", "app/nb.ipynb", ".venv/lib/x.py", "node_modules/m/x.py",
                "build/lib/x.py", "pkg.egg-info/x.py", "app/__pycache__/x.py", "tests/fixtures/bad.py", "tests/t.py"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BAD)  # fmt: skip


def test_walking_keeps_python_files_outside_excluded_directories(tmp_path):
    _tree(tmp_path)
    found, missing = discover([str(tmp_path)], Excluder(DEFAULT_EXCLUDE, tmp_path))
    assert missing == []
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in found) == [
        "app/main.py", "tests/fixtures/bad.py", "tests/t.py",
    ]  # fmt: skip


def test_path_patterns_are_relative_to_the_config_and_apply_to_named_files(tmp_path):
    _tree(tmp_path)
    excluder = Excluder((*DEFAULT_EXCLUDE, "tests/fixtures"), tmp_path)
    found, _ = discover([str(tmp_path), str(tmp_path / "tests/fixtures/bad.py")], excluder)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in found) == ["app/main.py", "tests/t.py"]


def test_a_directory_named_like_an_exclude_above_the_target_does_not_matter(tmp_path):
    inside = tmp_path / "build" / "project"
    inside.mkdir(parents=True)
    (inside / "a.py").write_text(BAD)
    found, _ = discover([str(inside)], Excluder(DEFAULT_EXCLUDE, inside))
    assert len(found) == 1


def test_a_missing_path_is_an_error(tmp_path):
    found, missing = discover([str(tmp_path / "nope")], Excluder(DEFAULT_EXCLUDE, tmp_path))
    assert found == [] and missing[0].message == "no such file or directory"


def test_worker_processes_give_the_same_results(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"m{i}.py"
        path.write_text(BAD * (i + 1))
        paths.append(str(path))
    serial = lint_files(paths, options(), jobs=1)
    parallel = lint_files(paths, options(), jobs=2)
    assert [(r.path, r.findings) for r in serial] == [(r.path, r.findings) for r in parallel]
