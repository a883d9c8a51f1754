"""``[tool.ferryman.lint]`` discovery and validation, and the window's syntax."""

from __future__ import annotations

import pytest

from ferryman.lint.config import ConfigError, discover, load_file, parse_window


@pytest.mark.parametrize(("text", "days"), [("180d", 180), ("90", 90), (30, 30), ("26w", 182), ("6m", 180),
                                            ("1y", 365), ("all", None), (None, 180)])  # fmt: skip
def test_parse_window(text, days):
    assert parse_window(text) == days


@pytest.mark.parametrize("text", ["soon", "-3", "12h", True])
def test_bad_windows(text):
    with pytest.raises(ConfigError):
        parse_window(text)


def test_found_walking_up_skipping_pyprojects_without_the_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.ferryman.lint]\nignore = ["FM102"]\nretiring-within = "30d"\n')
    inner = tmp_path / "svc"
    (inner / "src").mkdir(parents=True)
    (inner / "pyproject.toml").write_text('[project]\nname = "svc"\n')
    found = discover(inner / "src")
    assert found.path == tmp_path / "pyproject.toml" and found.ignore == ["FM102"] and found.retiring_within == "30d"
    assert found.root == tmp_path


def test_no_table_anywhere(tmp_path):
    assert discover(tmp_path).path is None


@pytest.mark.parametrize(
    "table",
    ['selct = ["FM1"]', 'select = "FM1"', "ignore = [1]", 'retiring-within = "soon"', "retiring-within = [1]"],
)
def test_a_bad_table_is_an_error(tmp_path, table):
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[tool.ferryman.lint]\n{table}\n")
    with pytest.raises(ConfigError):
        load_file(path)


def test_a_broken_toml_is_an_error(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.ferryman.lint\n")
    with pytest.raises(ConfigError):
        load_file(path)
