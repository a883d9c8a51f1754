"""``ferryman doctor`` as a user runs it: settings from the environment, a table or JSON, and the
exit codes a CI job acts on (0 nothing failed, 1 a check failed, 2 bad usage or settings)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from ferryman.audit import Chain, load_key
from ferryman.cli import app
from ferryman.config import Settings
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import free_port
from ferryman.store import open_store
from tests.cli.test_audit_cli import record
from tests.leak_guard import assert_no_secrets

runner = CliRunner()
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
KEY_ENV = "DOCTOR_TEST_UPSTREAM_KEY"


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Isolated settings (a data directory of its own, no file, no OpenAI key or base URL, an
    HTTPS proxy nobody runs so nothing can reach api.openai.com) and the upstream key, made now."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(tmp_path)
    made = "-".join(("sk", "doctor", secrets.token_hex(12)))
    monkeypatch.setenv(KEY_ENV, made)
    yield made


def upstream(monkeypatch: pytest.MonkeyPatch, base_url: str, models: list[str]) -> None:
    deployment = {"name": "mock", "base_url": base_url, "api_keys": [f"env:{KEY_ENV}"], "models": models}
    monkeypatch.setenv("FERRYMAN_DEPLOYMENTS", json.dumps([deployment]))


def doctor(*args: str) -> Any:
    return runner.invoke(app, ["doctor", *args], env=PLAIN)


def as_json(result: Any) -> dict[str, dict[str, Any]]:
    listed = json.loads(result.stdout)
    assert all(set(item) == {"check", "status", "message", "hint", "details"} for item in listed)
    return {item["check"]: item for item in listed}


def first_run(n: int = 3) -> None:
    """What a first start leaves in the data directory: the store, migrated, and an audit chain."""
    store = open_store(Settings())
    try:
        chain = Chain(store.engine, load_key(create=True))
        for i in range(n):
            chain.append(record(i))
    finally:
        store.close()


def test_a_healthy_setup_exits_0(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-6-luna"])
    first_run()
    result = doctor("--json", "--today", "2026-12-01")
    assert result.exit_code == 0, result.output
    found = as_json(result)
    # the installed SDK is whatever release a fresh install took: ok if it is the tested one, else
    # a warning ("untested" or "upgrade"), which a healthy setup's exit code allows
    assert found.pop("openai-sdk")["status"] in ("ok", "warn")
    assert {name: c["status"] for name, c in found.items()} == {
        "upstream:mock": "ok",
        "model:mock:gpt-6-luna": "ok",
        "rate-limits": "skip",
        "prices": "ok",
        "store": "ok",
        "redis": "skip",
        "audit": "ok",
        "permissions": "ok",
        "sharing": "ok",
    }
    assert key not in result.output
    assert_no_secrets(result.output, "ferryman doctor --json")


def test_the_table(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-6-luna"])
    result = doctor("--today", "2026-12-01")
    assert result.exit_code == 0, result.output
    assert "upstream:mock" in result.output and "answers in" in result.output
    assert "not probed (use --probe; costs one small call per model)" in result.output
    assert result.output.strip().splitlines()[-1].endswith("failed, 5 skipped")
    assert key not in result.output


def test_warnings_exit_0_unless_strict(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-4o-mini"])  # shutdown 2027-01-14
    result = doctor("--json", "--today", "2026-12-04")
    assert result.exit_code == 0, result.output
    assert as_json(result)["model:mock:gpt-4o-mini"]["status"] == "warn"
    assert doctor("--json", "--today", "2026-12-04", "--strict").exit_code == 1


def test_a_dead_upstream_exits_1_with_its_cause(key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, f"http://127.0.0.1:{free_port()}/v1", ["gpt-6-luna"])
    result = doctor("--json")
    assert result.exit_code == 1, result.output
    found = as_json(result)["upstream:mock"]
    assert (found["status"], found["message"]) == ("fail", "connection refused")


def test_a_retired_model_exits_1(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-3.5-turbo"])
    result = doctor("--json", "--today", "2026-11-01")
    assert result.exit_code == 1, result.output
    found = as_json(result)["model:mock:gpt-3.5-turbo"]
    assert found["status"] == "fail" and "retired on 2026-10-23" in found["message"]


def test_a_tampered_audit_log_exits_1(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-6-luna"])
    first_run()
    store = open_store(Settings())
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit SET latency_ms = 1 WHERE seq = 2"))
    store.close()
    result = doctor("--json", "--today", "2026-12-01")
    assert result.exit_code == 1, result.output
    assert as_json(result)["audit"]["message"].startswith("TAMPERED: seq 2")


def test_a_readable_key_file_exits_1(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-6-luna"])
    first_run()
    data = Path(os.environ["FERRYMAN_DATA_DIR"])
    (data / "admin.key").write_text(secrets.token_hex(32))
    os.chmod(data / "admin.key", 0o644)
    result = doctor("--json", "--today", "2026-12-01")
    assert result.exit_code == 1, result.output
    found = as_json(result)["permissions"]
    assert found["status"] == "fail"
    assert "admin.key is 0644" in found["message"] and found["hint"].startswith("chmod 600 ")


def test_offline_calls_no_upstream(ferryman_mock: MockControl, key: str, monkeypatch: pytest.MonkeyPatch):
    upstream(monkeypatch, ferryman_mock.base_url, ["gpt-6-luna"])
    result = doctor("--json", "--offline")
    assert result.exit_code == 0, result.output
    assert as_json(result)["upstream:mock"]["status"] == "skip"
    assert ferryman_mock.requests() == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--probe", "--offline"], "choose one"),
        (["--today", "next tuesday"], "is not a date"),
        (["--timeout", "0"], "--timeout"),
    ],
)
def test_bad_usage_exits_2(key: str, args: list[str], said: str):
    result = doctor(*args)
    assert result.exit_code == 2, result.output
    assert said in result.output


def test_settings_that_do_not_load_exit_2(key: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FERRYMAN_STORE__SHARED", "true")  # without PostgreSQL and Redis: refused
    result = doctor()
    assert result.exit_code == 2
    assert "store.shared needs a shared database" in result.output


def test_help_teaches():
    result = runner.invoke(app, ["doctor", "--help"], env=PLAIN)
    assert result.exit_code == 0
    for words in ("--probe", "--offline", "--json", "--strict", "Exit codes: 0", "upstream:NAME", "ferryman doctor"):
        assert words in result.output, words
