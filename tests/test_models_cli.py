"""``ferryman models``: the lifecycle table as a person and a script read it, its filters, the
refresh from the upstream's ``GET /v1/models`` and its exit codes."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest
from typer.testing import CliRunner

from ferryman.cli import app

runner = CliRunner()
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", "local-" + "key")

    def configure(base_url: str) -> None:
        config = tmp_path / "ferryman.toml"
        config.write_text(
            f'[[deployments]]\nname = "main"\nbase_url = "{base_url}"\napi_keys = ["env:FERRYMAN_TEST_UPSTREAM_KEY"]\n'
        )
        monkeypatch.setenv("FERRYMAN_CONFIG", str(config))

    return configure


def _json(*args: str) -> dict:
    result = runner.invoke(app, ["models", *args, "--json"], env=PLAIN)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_retiring_window_lists_what_retires_in_it_and_what_already_has(env):
    env("http://127.0.0.1:9/v1")
    listed = _json("--retiring", "45d", "--today", "2026-12-04")["models"]
    by_model = {m["model"]: m for m in listed}
    today = dt.date(2026, 12, 4)
    for entry in listed:  # each row, computed again from its own date
        shutdown = dt.date.fromisoformat(entry["shutdown_date"])
        assert entry["days_left"] == (shutdown - today).days
        assert entry["retired"] is (shutdown <= today)
        assert (shutdown - today).days <= 45
    assert by_model["gpt-4o-mini"]["days_left"] == 41 and by_model["gpt-4o-mini"]["successor"] == "gpt-6-luna"
    assert by_model["gpt-5"]["days_left"] == 7 and by_model["gpt-5"]["reasoning"] is True
    assert by_model["gpt-3.5-turbo"]["retired"] is True
    assert "gpt-6-luna" not in by_model  # no shutdown date
    assert "gpt-5.1" not in by_model  # 2027-04-01: outside 45 days
    dates = [m["shutdown_date"] for m in listed]
    assert dates == sorted(dates)


def test_without_a_window_every_known_model_is_listed_with_its_source(env):
    env("http://127.0.0.1:9/v1")
    listed = _json("--today", "2026-12-04")["models"]
    by_model = {m["model"]: m for m in listed}
    assert by_model["gpt-6-luna"]["shutdown_date"] is None and by_model["gpt-6-luna"]["days_left"] is None
    assert all(m["source"].startswith("shipped ") for m in listed)


def test_table_output_is_whole_when_piped(env):
    env("http://127.0.0.1:9/v1")
    result = runner.invoke(app, ["models", "--retiring", "10d", "--today", "2026-12-04"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0
    assert "gpt-4o-mini-search-preview-2025-03-11" in result.stdout  # not cut to gpt-4o-mini-…
    assert "gpt-6.1-sol" in result.stdout and "retired" in result.stdout


def test_refresh_from_the_mock_marks_the_source(env, ferryman_mock):
    env(ferryman_mock.base_url)
    out = _json("--refresh", "--retiring", "45d", "--today", "2026-12-04")
    assert out["refreshed"][0]["upstream"] == "main" and out["refreshed"][0]["error"] is None
    mini = next(m for m in out["models"] if m["model"] == "gpt-4o-mini")
    assert mini["source"] == f"upstream {dt.datetime.now(dt.UTC).date().isoformat()}"
    assert mini["shutdown_date"] == "2027-01-14"


def test_refresh_against_a_dead_upstream_exits_1_and_still_lists(env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env(f"http://127.0.0.1:{port}/v1")
    result = runner.invoke(app, ["models", "--refresh", "--retiring", "30d", "--json"], env=PLAIN)
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["refreshed"][0]["error"] and out["models"]


@pytest.mark.parametrize("args", [["--retiring", "soon"], ["--today", "12/04/2026"]])
def test_bad_usage_exits_2_naming_the_option(env, args):
    env("http://127.0.0.1:9/v1")
    result = runner.invoke(app, ["models", *args], env=PLAIN)
    assert result.exit_code == 2
    assert "not a span" in result.output or "not a date" in result.output
