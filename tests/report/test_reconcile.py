"""``ferryman report --reconcile`` through the real path: calls via ``ferryman.OpenAI`` against the mock,
then the command, in the same store and deployment, reading the mock's Usage and Costs API.

Expected figures are the audit rows summed in plain Python and the token counts the mock's own
replies reported (for calls sent around Ferryman), never the reconciliation's own code.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ferryman.cli import app
from ferryman.mock.server import free_port
from ferryman.pricing import PriceTable
from ferryman.report.billed import Billed, Usage
from ferryman.report.reconcile import Figures, compare, served_as, whole_days
from tests.pipeline.conftest import mock_deployment
from tests.report.conftest import records

runner = CliRunner()
PLAIN = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
CHAT = [{"role": "user", "content": "Say something about ferries and rivers, briefly."}]


def admin_key() -> str:
    return "sk-" + "admin-" + uuid.uuid4().hex  # built at run time: no key-shaped literal in the source


def config(tmp_path: Path, deployment: dict[str, Any]) -> Path:
    """A settings file for the command: the test pipeline's deployment and store."""
    path = tmp_path / "cli" / "ferryman.toml"
    path.parent.mkdir(exist_ok=True)
    keys = ", ".join(f'"{k}"' for k in deployment["api_keys"])
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "ferryman.db"}"\n\n'
        f'[[deployments]]\nname = "{deployment["name"]}"\nbase_url = "{deployment["base_url"]}"\napi_keys = [{keys}]\n'
    )
    return path


def reconcile(settings_file: Path, *args: str, key: str | None = None) -> Any:
    env = {**PLAIN, "FERRYMAN_CONFIG": str(settings_file), "OPENAI_ADMIN_KEY": key if key is not None else ""}
    return runner.invoke(app, ["report", "--reconcile", "--since", "1d", *args], env=env)


def through_ferryman(client: Any) -> None:
    for n in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, seed=n, max_tokens=40)
    client.chat.completions.create(model="gpt-4.1", messages=CHAT, max_tokens=30)
    client.embeddings.create(model="text-embedding-3-small", input=["ferry", "river crossing"])
    client.moderations.create(input="a calm crossing")


def recorded_sums(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    mine = [r for r in rows if r["model"] == model and r["status"] < 400 and r["cache"] != "hit"]
    return {
        "requests": len(mine),
        "input_tokens": sum(r["input_tokens"] for r in mine),
        "cached_input_tokens": sum(r["cached_tokens"] for r in mine),
        "output_tokens": sum(r["output_tokens"] for r in mine),
        "cost_usd": sum((Decimal(r["cost_usd"]) for r in mine), Decimal(0)),
    }


def row_of(data: dict[str, Any], model: str) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    [row] = [r for r in data["reconciliation"]["rows"] if r["model"] == model and r["day"] == today]
    return row


def test_traffic_through_ferryman_matches_to_the_token_and_cent(ferryman_client, ferryman_mock, audit_db, tmp_path):
    client = ferryman_client()
    through_ferryman(client)
    settings_file = config(tmp_path, mock_deployment(ferryman_mock))

    done = reconcile(settings_file, "--format", "json", key=admin_key())
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    rec = data["reconciliation"]
    assert rec["matched"] is True and rec["upstream"] == {"deployments": ["mock"], "base_url": ferryman_mock.base_url}
    rows = records(audit_db)
    for model in ("gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"):
        row, want = row_of(data, model), recorded_sums(rows, model)
        assert row["status"] == "matched" and row["cost_source"] == "costs"
        for side in ("billed", "recorded"):
            got = row[side]
            assert {k: got[k] for k in want if k != "cost_usd"} == {k: v for k, v in want.items() if k != "cost_usd"}
            assert Decimal(got["cost_usd"]).quantize(Decimal("0.01")) == want["cost_usd"].quantize(Decimal("0.01"))
        assert abs(Decimal(row["billed"]["cost_usd"]) - want["cost_usd"]) < Decimal("1E-9")  # closer than a cent
        assert row["unaccounted"]["requests"] == 0 and row["unaccounted"]["input_tokens"] == 0
    assert want["requests"] == 1 and recorded_sums(rows, "gpt-4o-mini")["requests"] == 3
    moderation = row_of(data, "omni-moderation-latest")
    assert moderation["kind"] == "moderations" and moderation["tokens_compared"] is False
    assert moderation["billed"]["requests"] == moderation["recorded"]["requests"] == 1
    assert rec["totals"]["unaccounted"]["requests"] == 0
    assert set(data) >= {"version", "totals", "by_model"} and data["version"] == 1

    table = reconcile(settings_file, key=admin_key())
    assert table.exit_code == 0, table.output
    assert "Reconciliation with mock at" in table.stdout and "matched" in table.stdout
    md = reconcile(settings_file, "--format", "md", key=admin_key())
    assert md.exit_code == 0 and "## Billed / recorded, per UTC day and model" in md.stdout


def test_calls_around_ferryman_are_unaccounted_with_their_exact_tokens(
    ferryman_client, ferryman_mock, audit_db, tmp_path
):
    through_ferryman(ferryman_client())
    direct = [
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=25),
        ferryman_mock.client.chat.completions.create(model="gpt-4o-mini", messages=CHAT[:1] * 2, max_tokens=15),
    ]
    around = ferryman_mock.client.embeddings.create(model="text-embedding-3-large", input="only upstream")
    settings_file = config(tmp_path, mock_deployment(ferryman_mock))

    done = reconcile(settings_file, "--format", "json", key=admin_key())
    assert done.exit_code == 1, done.output  # a difference found: the report is printed all the same
    data = json.loads(done.stdout)
    assert data["reconciliation"]["matched"] is False
    mini = row_of(data, "gpt-4o-mini")
    assert mini["status"] == "unaccounted"
    assert mini["unaccounted"]["requests"] == 2
    assert mini["unaccounted"]["input_tokens"] == sum(r.usage.prompt_tokens for r in direct)
    assert mini["unaccounted"]["output_tokens"] == sum(r.usage.completion_tokens for r in direct)
    assert mini["recorded"]["requests"] == 3 == recorded_sums(records(audit_db), "gpt-4o-mini")["requests"]
    priced = sum(
        (PriceTable.default().cost_usd("gpt-4o-mini", r.usage.model_dump()) or Decimal(0) for r in direct), Decimal(0)
    )
    assert abs(Decimal(mini["unaccounted"]["cost_usd"]) - priced) < Decimal("1E-9")
    large = row_of(data, "text-embedding-3-large")
    assert large["recorded"]["requests"] == 0 and large["status"] == "unaccounted"
    assert large["unaccounted"]["input_tokens"] == around.usage.prompt_tokens
    assert row_of(data, "gpt-4.1")["status"] == "matched"
    sums = data["reconciliation"]["totals"]
    for name in ("requests", "input_tokens", "cached_input_tokens", "output_tokens"):
        assert sums["billed"][name] - sums["recorded"][name] == sums["difference"][name]
    totals = sums["unaccounted"]
    assert totals["requests"] == 3
    assert totals["input_tokens"] == sum(r.usage.prompt_tokens for r in direct) + around.usage.prompt_tokens

    table = reconcile(settings_file, key=admin_key())
    assert table.exit_code == 1 and "unaccounted" in table.stdout and "differences found" in table.stdout


def test_a_key_that_is_not_an_admin_key_exits_2_with_one_line(ferryman_mock, ferryman_settings, tmp_path):
    ferryman_settings()
    settings_file = config(tmp_path, mock_deployment(ferryman_mock))
    plain_key = "sk-" + "proj-" + uuid.uuid4().hex
    done = reconcile(settings_file, key=plain_key)
    assert done.exit_code == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "refused the admin key (401)" in line and ferryman_mock.base_url in line
    assert plain_key not in done.output

    missing = reconcile(settings_file, key="")
    assert missing.exit_code == 2
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("error: --admin-key:") and "OPENAI_ADMIN_KEY is not set" in line


def test_an_unreachable_upstream_exits_2_naming_it(ferryman_settings, tmp_path):
    ferryman_settings()
    gone = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings_file = config(tmp_path, {"name": "gone", "base_url": gone, "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"]})
    done = reconcile(settings_file, key=admin_key())
    assert done.exit_code == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the upstream at " + gone)


@pytest.mark.parametrize("args", [["--key", "team-a"], ["--tag", "team=a"], ["--upstream", "nowhere"]])
def test_options_that_cannot_reconcile_are_usage_errors(ferryman_mock, ferryman_settings, tmp_path, args):
    ferryman_settings()
    settings_file = config(tmp_path, mock_deployment(ferryman_mock))
    done = reconcile(settings_file, *args, key=admin_key())
    assert done.exit_code == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(("error: --reconcile:", "error: --upstream:"))


def test_snapshots_fold_into_the_recorded_alias_and_days_are_whole():
    assert served_as("gpt-4o-mini-2024-07-18", {"gpt-4o-mini"}) == "gpt-4o-mini"
    assert served_as("gpt-4o-mini-2024-07-18", {"gpt-4o-mini-2024-07-18", "gpt-4o-mini"}) == "gpt-4o-mini-2024-07-18"
    assert served_as("gpt-4o-2024-08-06", {"gpt-4o-mini"}) == "gpt-4o-2024-08-06"
    day = 1_796_342_400  # 2026-12-04T00:00:00Z
    assert whole_days(day + 5, day + 86_400 + 5) == (day, day + 2 * 86_400)
    usage = [Usage(day, "completions", "gpt-4o-mini-2024-07-18", False, 2, 100, 0, 10)]
    mine = {(day, "completions", "gpt-4o-mini"): Figures(2, 100, 0, 10, Decimal("0.0000210000"))}
    [row] = compare(Billed(usage, None, "costs: 403"), mine, PriceTable.default())
    assert row.model == "gpt-4o-mini" and row.cost_source == "priced" and row.status == "matched"
