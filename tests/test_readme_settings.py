"""The README's settings sample loads, and what it shows as a default is the default.

Readers copy the sample and trust it: a key it spells wrong would be refused by the real
loader, and a value it shows as the default but is not (``cache.mode = "deterministic"`` when
the default is ``off``) misleads. Convention, stated at the top of each ```toml block: every
value shown is the default, except in lines and tables marked ``example`` in their comment.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, TypeAdapter

from ferryman import config
from ferryman.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
CONVENTION = "Every value shown is the default"
_BLOCK = re.compile(r"^```toml\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")
_EXAMPLE = re.compile(r"#.*\bexample\b", re.IGNORECASE)


def _blocks() -> list[str]:
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def _where(block: str) -> str:
    text = README.read_text(encoding="utf-8")
    return f"README.md:{text.count(chr(10), 0, text.index(block)) + 1}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No FERRYMAN_* or OPENAI_* variable from outside, and a working directory of our own."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(("FERRYMAN_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def _claimed_defaults(block: str) -> list[tuple[str, bool, str, int]]:
    """(table, is an array of tables, key, line number) of each line the block shows as a default."""
    claims = []
    table, array, example = "", False, False
    for number, line in enumerate(block.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table, array, example = header[2], header[1] == "[[", bool(_EXAMPLE.search(line))
            continue
        key = _KEY.match(line)
        if key and not example and not _EXAMPLE.search(line):
            claims.append((table, array, key[1], number))
    return claims


def _default_of(model: type[BaseModel], key: str) -> Any:
    field = model.model_fields[key]
    assert not field.is_required(), f"{model.__name__}.{key} has no default: mark its line `# example`"
    return field.get_default(call_default_factory=True)


def _model_of(table: str, array: bool) -> type[BaseModel]:
    model: type[BaseModel] = Settings
    for part in filter(None, table.split(".")):
        annotation = model.model_fields[part].annotation
        model = get_args(annotation)[0] if array else annotation  # list[Item] for [[table]]
    return model


def test_the_readme_has_a_settings_sample():
    blocks = _blocks()
    assert blocks, "README.md has no ```toml settings sample"
    for block in blocks:
        assert CONVENTION in block, f"state the convention at the top of each sample: {CONVENTION!r} …"


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: _where(b))
def test_the_sample_loads_through_the_real_loader(block, tmp_path, monkeypatch):
    path = tmp_path / "sample.toml"
    path.write_text(block, encoding="utf-8")
    monkeypatch.setenv("FERRYMAN_CONFIG", str(path))
    config.load()  # unknown keys and bad values are a SettingsError here


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: _where(b))
def test_what_the_sample_shows_as_default_is_the_default(block):
    data = tomllib.loads(block)
    wrong = []
    for table, array, key, number in _claimed_defaults(block):
        model = _model_of(table, array)
        values = data
        for part in filter(None, table.split(".")):
            values = values[part]
        for item in values if array else [values]:
            shown = TypeAdapter(model.model_fields[key].annotation).validate_python(item[key])
            default = _default_of(model, key)
            if shown != default:
                wrong.append(f"line {number}: {table}.{key} = {item[key]!r}, but the default is {default!r}")
    assert not wrong, "the README sample shows non-defaults as defaults (fix them or mark `# example`): " + "; ".join(
        wrong
    )


def test_the_convention_catches_a_wrong_default():
    """The check itself: the sample as it once was (cache mode "deterministic") is caught."""
    claims = _claimed_defaults('[cache]\nmode = "deterministic"   # off | deterministic | all\nttl_s = 3600\n')
    assert [(t, k) for t, _, k, _ in claims] == [("cache", "mode"), ("cache", "ttl_s")]
    assert _default_of(_model_of("cache", False), "mode") == "off"
    assert _claimed_defaults('[cache]\nmode = "all"   # example\n') == []
    assert _claimed_defaults("[[budgets]]   # example\nusd = 5\n") == []
