"""``ferryman report`` on the command line: the JSON contract's shape, Markdown and the table, a
file written 0600, the default store from the settings, and exit code 2 naming the option."""

from __future__ import annotations

import json
import stat
import time
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from ferryman.cli import app
from ferryman.store.database import make_engine, migrate
from tests.report.conftest import synthetic, write

runner = CliRunner()
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
STATS = {"requests", "cost_usd", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
         "errors", "rate_limited", "cache_hits", "latency_ms", "ttft_ms"}  # fmt: skip


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'report.db'}"
    engine = make_engine(url)
    migrate(engine)
    now = time.time()
    write(engine, [
        synthetic(ts=now - 3_600, model="gpt-4o-mini", input_tokens=1_000, output_tokens=200,
                  cost_usd=Decimal("0.00027"), tags={"team": "a"}, latency_ms=120.0, ttft_ms=40.0),
        synthetic(ts=now - 7_200, model="text-embedding-3-small", endpoint="/embeddings", input_tokens=10,
                  cost_usd=Decimal("0.0000002"), tags={"team": "b|c"}),
        synthetic(ts=now - 60, model="gpt-4o-mini", status=429, latency_ms=5.0),
        synthetic(ts=now - 40 * 86_400, model="gpt-4o", cost_usd=Decimal(9)),  # before the default 30 days
    ])  # fmt: skip
    engine.dispose()
    return url


def invoke(*args):
    return runner.invoke(app, ["report", *args], env=PLAIN)


def test_json_follows_the_contract(store):
    done = invoke("--store", store, "--format", "json", "--by", "tag:team")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert set(data) == {"version", "period", "filters", "totals", "by_model", "breakdown", "month", "spikes", "advice"}
    assert data["version"] == 1 and set(data["period"]) == {"from", "to"}
    assert set(data["totals"]) == STATS and set(data["totals"]["latency_ms"]) == {"p50", "p95"}
    assert data["totals"]["cost_usd"] == "0.0002702000" and data["totals"]["requests"] == 3
    assert data["totals"]["errors"] == 1 and data["totals"]["rate_limited"] == 1
    assert [m["model"] for m in data["by_model"]] == ["gpt-4o-mini", "text-embedding-3-small"]
    assert all(set(m) == STATS | {"model"} for m in data["by_model"])
    assert data["breakdown"]["by"] == ["tag:team"]
    assert {g["tag:team"]: g["requests"] for g in data["breakdown"]["groups"]} == {None: 1, "a": 1, "b|c": 1}
    assert set(data["month"]) == {"month", "to_date_usd", "projected_usd", "elapsed_days", "days_in_month", "rule"}
    [advice] = data["advice"]
    assert set(advice) == {"kind", "title", "savings_usd", "savings_usd_per_month", "evidence", "action"}
    assert advice["kind"] == "deprecated_model" and advice["evidence"]["model"] == "gpt-4o-mini"
    assert isinstance(advice["savings_usd"], str) and Decimal(advice["savings_usd"]) > 0


def test_markdown_and_table(store):
    md = invoke("--store", store, "--format", "md", "--by", "tag:team")
    assert md.exit_code == 0, md.output
    assert md.stdout.startswith("# Ferryman report ") and "## By model" in md.stdout and "## Advice" in md.stdout
    assert "| b\\|c |" in md.stdout  # a pipe in a value does not break the table
    table = invoke("--store", store, "--by", "model")
    assert table.exit_code == 0, table.output
    assert "Totals" in table.stdout and "gpt-4o-mini" in table.stdout and "$0.00027" in table.stdout
    assert "deprecated_model" in table.stdout and "gpt-4o " not in table.stdout


def test_the_default_store_is_the_settings_one(store, tmp_path):
    done = invoke("--format", "json")  # FERRYMAN_DATA_DIR: an empty store of its own
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["totals"]["requests"] == 0
    assert (tmp_path / "data" / "ferryman.db").exists()


def test_period_and_filters(store):
    def requests(*args):
        done = invoke("--store", store, "--format", "json", *args)
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)["totals"]["requests"]

    assert requests("--since", "90d") == 4
    assert requests("--since", "24h") == 3
    assert requests("--model", "gpt-4o-mini") == 2
    assert requests("--tag", "team=a") == 1
    assert requests("--from", "2000-01-01", "--to", "2000-01-31") == 0


def test_output_file_is_private(store, tmp_path):
    target = tmp_path / "out.md"
    done = invoke("--store", store, "--format", "md", "-o", str(target))
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text().startswith("# Ferryman report")
    table = tmp_path / "out.txt"
    assert invoke("--store", store, "-o", str(table)).exit_code == 0
    assert "By model" in table.read_text() and "\x1b[" not in table.read_text()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "7x"], "--since"),
        (["--since", "0d"], "--since"),
        (["--since", "7d", "--from", "2026-01-01"], "--since"),
        (["--from", "2026-02-01", "--to", "2026-01-01"], "--from"),
        (["--from", "yesterday"], "--from"),
        (["--by", "colour"], "--by"),
        (["--tag", "team"], "--tag"),
        (["--format", "pdf"], "--format"),
    ],
)
def test_bad_usage_exits_2_naming_the_option(store, args, option):
    done = invoke("--store", store, *args)
    assert done.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}:")


def test_values_are_never_markup(store, tmp_path):
    engine = make_engine(store)
    write(engine, [synthetic(ts=time.time() - 10, model="gpt-4o-mini", tags={"team": "[red]x[/red]"})])
    engine.dispose()
    done = invoke("--store", store, "--by", "tag:team")
    assert done.exit_code == 0, done.output
    assert "[red]x[/red]" in done.stdout
