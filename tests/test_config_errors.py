"""Settings errors: a typo is refused in one line naming the source, the key and the fix.

Before, ``[cache] mdoe = "all"`` or ``FERRYMAN_CACHE__MDOE=all`` was silently ignored and the
cache stayed off; a bad value was a multi-line pydantic report naming neither the file nor the
variable. Each kind of failure is checked here by its exact message.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ferryman import config
from ferryman.config import Settings, SettingsError
from ferryman.config_errors import ALLOWED_VARIABLES, check_environment

ROOT = Path(__file__).resolve().parents[1]
SECRET = "-".join(("sk", "proj", "Zq8rT2vW9xY4bN6mK1pL3sD5fG7hJ0aQ"))  # key-shaped, built at run time


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No FERRYMAN_* or OPENAI_* variable from outside, and a working directory of our own."""
    for name in list(os.environ):
        if name.upper().startswith(("FERRYMAN_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _refused(**overrides) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        config.load(**overrides)
    text = str(caught.value)
    assert "\n" not in text and text == text.strip() and text
    return caught.value


def _file(tmp_path: Path, text: str, name: str = "ferryman.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- unknown keys and variables -----------------------------------------------------------------


def test_an_unknown_key_in_the_file_is_refused_with_the_nearest_key(tmp_path):
    _file(tmp_path, '[cache]\nmdoe = "all"\n')
    error = _refused()
    assert str(error) == "ferryman.toml: unknown setting cache.mdoe (did you mean cache.mode?)"
    assert (error.source, error.key, error.suggestion) == ("ferryman.toml", "cache.mdoe", "cache.mode")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"\n', "ferryman.toml: unknown setting colour"),
        ("[cahce]\nmode = 1\n", "ferryman.toml: unknown setting cahce (did you mean cache?)"),
        (
            '[[deployments]]\nname = "a"\nwieght = 2\n',
            "ferryman.toml: unknown setting deployments[0].wieght (did you mean deployments[0].weight?)",
        ),
        ("[gateway]\nmax_body_kb = 5\n", "ferryman.toml: unknown setting gateway.max_body_kb (did you mean"),
    ],
)
def test_unknown_keys_at_every_level_are_refused(tmp_path, text, message):
    _file(tmp_path, text)
    assert str(_refused()).startswith(message)


def test_an_unknown_keyword_override_is_refused():
    assert (
        str(_refused(cache={"mdoe": "all"}))
        == "keyword overrides: unknown setting cache.mdoe (did you mean cache.mode?)"
    )


def test_an_unknown_nested_variable_is_refused_with_the_nearest_variable(monkeypatch):
    monkeypatch.setenv("FERRYMAN_CACHE__MDOE", "all")
    error = _refused()
    assert str(error) == "FERRYMAN_CACHE__MDOE: unknown setting (did you mean FERRYMAN_CACHE__MODE?)"
    assert (error.source, error.suggestion) == ("FERRYMAN_CACHE__MDOE", "FERRYMAN_CACHE__MODE")


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("FERRYMAN_CACHEE__MODE", "FERRYMAN_CACHE__MODE"),  # pydantic-settings would not even read these
        ("FERRYMAN_CACHE_MODE", "FERRYMAN_CACHE__MODE"),
        ("FERRYMAN_RETRY__MAX_ATEMPTS", "FERRYMAN_RETRY__MAX_ATTEMPTS"),
        ("FERRYMAN_ADMN_KEY", "FERRYMAN_ADMIN_KEY"),
        ("FERRYMAN_DATADIR", "FERRYMAN_DATA_DIR"),
    ],
)
def test_unknown_variables_are_refused_with_the_nearest_name(monkeypatch, name, suggestion):
    monkeypatch.setenv(name, "1")
    assert str(_refused()) == f"{name}: unknown setting (did you mean {suggestion}?)"


def test_a_variable_with_no_near_name_is_refused_plainly(monkeypatch):
    monkeypatch.setenv("FERRYMAN_COLOUR", "blue")
    assert str(_refused()) == "FERRYMAN_COLOUR: unknown setting"


def test_variables_that_are_not_settings_are_allowed(monkeypatch, tmp_path):
    for name in ("FERRYMAN_DATA_DIR", "FERRYMAN_ADMIN_KEY", "FERRYMAN_AUDIT_KEY", "FERRYMAN_LOOP"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("FERRYMAN_CONFIG", str(_file(tmp_path, "", "empty.toml")))
    config.load()


def test_a_variable_named_by_a_secret_reference_is_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRYMAN_TEAM_UPSTREAM", "sk-upstream")
    assert str(_refused()) == "FERRYMAN_TEAM_UPSTREAM: unknown setting"
    _file(tmp_path, '[[deployments]]\nname = "team"\napi_keys = ["env:FERRYMAN_TEAM_UPSTREAM"]\n')
    assert config.load().deployments[0].api_keys == ["env:FERRYMAN_TEAM_UPSTREAM"]


def test_variables_keep_working_for_nested_dict_and_list_settings(monkeypatch):
    monkeypatch.setenv("FERRYMAN_ROUTING__ALIASES__FAST", '["gpt-6-luna", "gpt-4o-mini"]')
    monkeypatch.setenv("ferryman_cache__mode", "all")  # case-insensitive, as pydantic-settings reads them
    monkeypatch.setenv(
        "FERRYMAN_DEPLOYMENTS",
        '[{"name": "eu", "kind": "azure", "base_url": "https://x.openai.azure.com",'
        ' "azure_deployments": {"gpt-4o-mini": "mini-eu"}}]',
    )
    settings = config.load()
    assert settings.routing.aliases == {"fast": ["gpt-6-luna", "gpt-4o-mini"]}
    assert settings.cache.mode == "all"
    assert settings.deployments[0].azure_deployments == {"gpt-4o-mini": "mini-eu"}
    monkeypatch.delenv("FERRYMAN_ROUTING__ALIASES__FAST")
    monkeypatch.setenv("FERRYMAN_ROUTING__ALIASES", '{"fast": ["gpt-4o-mini"]}')
    assert config.load().routing.aliases == {"fast": ["gpt-4o-mini"]}


def test_a_table_variable_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("FERRYMAN_DEPLOYMENTS", '[{"name": "a"')
    assert str(_refused()) == "FERRYMAN_DEPLOYMENTS: must be a JSON array, and is not valid JSON"
    monkeypatch.delenv("FERRYMAN_DEPLOYMENTS")
    monkeypatch.setenv("FERRYMAN_CACHE", "all")
    assert str(_refused()).startswith("FERRYMAN_CACHE: must be a JSON object (or one variable per key, such as")


def test_an_unknown_key_inside_a_json_variable_names_variable_and_key(monkeypatch):
    monkeypatch.setenv("FERRYMAN_DEPLOYMENTS", '[{"name": "a", "wieght": 2}]')
    assert str(_refused()) == (
        "FERRYMAN_DEPLOYMENTS: unknown setting deployments[0].wieght (did you mean deployments[0].weight?)"
    )


# -- bad values ---------------------------------------------------------------------------------


def test_a_bad_value_in_the_file_names_file_key_choices_and_value(tmp_path):
    _file(tmp_path, '[cache]\nmode = "sometimes"\n')
    error = _refused()
    assert str(error) == "ferryman.toml: cache.mode: must be one of 'off', 'deterministic', 'all' (got 'sometimes')"
    assert (error.source, error.key) == ("ferryman.toml", "cache.mode")


def test_a_bad_value_in_a_variable_names_the_variable(monkeypatch):
    monkeypatch.setenv("FERRYMAN_CACHE__MODE", "sometimes")
    assert str(_refused()) == "FERRYMAN_CACHE__MODE: must be one of 'off', 'deterministic', 'all' (got 'sometimes')"
    monkeypatch.setenv("FERRYMAN_CACHE__MODE", "all")
    monkeypatch.setenv("FERRYMAN_GATEWAY__PORT", "99999")
    assert str(_refused()) == "FERRYMAN_GATEWAY__PORT: must be less than or equal to 65535 (got '99999')"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cache]\nttl_s = -1\n", "ferryman.toml: cache.ttl_s: must be greater than 0 (got -1)"),
        ("cache = 3\n", "ferryman.toml: cache: must be a table (got 3)"),
        ('[[budgets]]\nscope = "key"\n', "ferryman.toml: budgets[0].usd: required, and not set"),
        (
            '[[deployments]]\nname = "a"\n[[deployments]]\nname = "a"\n',
            "ferryman.toml: deployment names must be unique, got ['a', 'a']",
        ),
    ],
)
def test_bad_values_in_the_file(tmp_path, text, message):
    _file(tmp_path, text)
    assert str(_refused()) == message


def test_a_rule_across_settings_names_where_the_setting_came_from(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRYMAN_STORE__SHARED", "true")
    message = "store.shared needs a shared database: set store.url to a PostgreSQL URL"
    assert str(_refused()) == f"FERRYMAN_STORE__SHARED: {message}"
    monkeypatch.delenv("FERRYMAN_STORE__SHARED")
    _file(tmp_path, "[store]\nshared = true\n")
    assert str(_refused()) == f"ferryman.toml: {message}"


def test_several_problems_are_one_line_with_a_count(tmp_path):
    _file(tmp_path, '[cache]\nmode = "sometimes"\nttl_s = -1\n[retry]\nmax_attempts = 0\n')
    assert str(_refused()).endswith("(and 2 more problems)")


def test_secret_values_are_never_echoed(tmp_path):
    _file(tmp_path, f'[[deployments]]\nname = "a"\napi_keys = "{SECRET}"\n[gateway]\nadmin_kye = "{SECRET}"\n')
    error = _refused()
    assert str(error) == "ferryman.toml: deployments[0].api_keys: must be a list (and 1 more problem)"
    _file(tmp_path, f'[gateway]\nadmin_kye = "{SECRET}"\n')
    assert str(_refused()) == "ferryman.toml: unknown setting gateway.admin_kye (did you mean gateway.admin_key?)"


# -- the file itself ----------------------------------------------------------------------------


def test_a_missing_config_file_named_by_ferryman_config_is_an_error(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "ferryman.toml"
    monkeypatch.setenv("FERRYMAN_CONFIG", str(missing))
    assert str(_refused()) == f"{missing}: no such settings file (named by FERRYMAN_CONFIG)"
    monkeypatch.setenv("FERRYMAN_CONFIG", str(tmp_path))
    assert str(_refused()) == f"{tmp_path}: not a file (named by FERRYMAN_CONFIG as the settings file)"


def test_no_ferryman_toml_in_the_working_directory_is_fine():
    assert not Path("ferryman.toml").exists()
    assert config.load().cache.mode == "off"


def test_errors_name_the_file_ferryman_config_names(monkeypatch, tmp_path):
    path = _file(tmp_path, '[cache]\nmdoe = "all"\n', "elsewhere.toml")
    monkeypatch.setenv("FERRYMAN_CONFIG", str(path))
    assert str(_refused()) == f"{path}: unknown setting cache.mdoe (did you mean cache.mode?)"


def test_ferryman_config_may_start_with_a_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # never the real home directory
    _file(tmp_path, "[retry]\nmax_attempts = 7\n", "home.toml")
    monkeypatch.setenv("FERRYMAN_CONFIG", "~/home.toml")
    assert config.load().retry.max_attempts == 7


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path):
    _file(tmp_path, '[cache]\nmode = "all"\nttl_s = \n')
    error = _refused()
    assert re.fullmatch(r"ferryman\.toml: line 3, column \d+: not valid TOML: .+", str(error)), str(error)
    _file(tmp_path, "[cache\n")
    assert str(_refused()).startswith("ferryman.toml: line 1, column ")


# -- the class ----------------------------------------------------------------------------------


def test_direct_construction_raises_the_same_error_and_it_is_a_value_error():
    with pytest.raises(SettingsError) as caught:
        Settings(cache={"mode": "sometimes"})
    assert isinstance(caught.value, ValueError)
    assert (
        str(caught.value)
        == "keyword overrides: cache.mode: must be one of 'off', 'deterministic', 'all' (got 'sometimes')"
    )


def test_the_error_pickles_with_its_parts():
    error = SettingsError("f.toml: unknown setting a.b (did you mean a.c?)", "f.toml", "a.b", "a.c")
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.source, again.key, again.suggestion) == (str(error), "f.toml", "a.b", "a.c")


# -- every variable the project names is known --------------------------------------------------

# Names in the repository that are not variables settings are loaded beside: a Python constant,
# and variables set only by the secret-resolution tests (never while settings load).
NOT_SETTINGS_VARIABLES = {"FERRYMAN_MADE", "FERRYMAN_NO_SUCH_ADMIN_KEY", "FERRYMAN_TEST_UNSET_AUDIT_KEY"}
DELIBERATE_TYPOS = {"test_config_errors.py", "test_config.py", "config_errors.py"}  # their examples of typos


def test_every_ferryman_variable_the_repository_names_is_a_setting_or_allowed():
    names: set[str] = set()
    paths = [
        ROOT / "README.md",
        *(p for d in ("src", "tests", "scripts", ".ci", "benchmarks") for p in (ROOT / d).rglob("*")),
    ]
    for path in paths:
        if path.is_file() and path.name not in DELIBERATE_TYPOS and path.suffix in ("", ".py", ".md", ".toml", ".sh"):
            names |= set(
                re.findall(r"\bFERRYMAN_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8", errors="replace"))
            )
    settings = Settings()
    unknown = []
    for name in sorted(names - NOT_SETTINGS_VARIABLES):
        if name.startswith("FERRYMAN_UNIT_"):  # secrets tests' own references
            continue
        try:
            check_environment(settings, {name: "x"})
        except SettingsError as error:
            unknown.append(str(error))
    assert not unknown, f"add them to ferryman.config_errors' allow-lists (now {len(ALLOWED_VARIABLES)}): {unknown}"


# -- the command line ---------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("FERRYMAN_", "OPENAI_"))}
    env.pop("COLUMNS", None)  # as in a pipe or a service: not the width of the terminal running the tests
    env.update(FERRYMAN_CACHE__MDOE="all", FERRYMAN_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "ferryman.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_exit_2(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert "FERRYMAN_CACHE__MDOE" in lines[0] and "FERRYMAN_CACHE__MODE" in lines[0]


@pytest.mark.parametrize("command", [("keys", "list"), ("teams", "list"), ("run", "in.jsonl"), ("serve",)])
def test_a_settings_typo_is_one_line_and_exit_2_from_every_command(tmp_path, command):
    (tmp_path / "in.jsonl").write_text('{"model": "gpt-4o-mini", "input": "x"}\n')
    _assert_one_line_exit_2(_cli(tmp_path, *command))


def test_a_settings_typo_is_one_line_and_exit_2_from_audit_verify(tmp_path):
    _assert_one_line_exit_2(_cli(tmp_path, "audit", "verify"))
