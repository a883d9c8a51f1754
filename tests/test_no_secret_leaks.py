"""Keys pushed deliberately through every path must come out nowhere: audit rows, logs, exceptions,
error bodies, metrics. The suite-wide check (tests/leak_guard.py) is tested here too, in a pytest
run of its own."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import generate_latest

import ferryman
from ferryman.config import Settings
from ferryman.logs import configure_json_logging, remove_json_logging
from ferryman.mock.app import MockApp
from ferryman.mock.control_client import TEST_KEY, MockControl
from ferryman.mock.server import BackgroundServer
from ferryman.mock.settings import MockSettings
from ferryman.pipeline.telemetry import REGISTRY
from tests.leak_guard import KNOWN_KEYS, assert_no_secrets, find_secrets
from tests.pipeline.conftest import UPSTREAM_KEY, mock_deployment

ROOT = Path(__file__).resolve().parents[1]
CALLER_KEY = "sk-ferryman-caller-side-0123456789"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Ferryman's JSON log lines and any other record (the app logging an exception), as text."""
    stream = io.StringIO()
    configure_json_logging("DEBUG", stream=stream)
    app = logging.StreamHandler(stream)
    logging.getLogger().addHandler(app)
    yield stream
    logging.getLogger().removeHandler(app)
    remove_json_logging()


@pytest.fixture
def client_for(
    ferryman_mock: MockControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., openai.OpenAI]]:
    """``client_for(**settings)``: the SDK through Ferryman (audit on, JSON logs on), in front of a mock."""
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    clients: list[openai.OpenAI] = []

    def make(mock: MockControl | None = None, **overrides: Any) -> openai.OpenAI:
        overrides.setdefault("deployments", [mock_deployment(mock or ferryman_mock)])
        overrides.setdefault("store", {"url": f"sqlite:///{tmp_path / 'ferryman.db'}"})
        overrides.setdefault("retry", {"max_attempts": 1})
        overrides.setdefault("telemetry", {"json_logs": True})
        client = ferryman.OpenAI(ferryman={"settings": Settings(**overrides)}, api_key=CALLER_KEY)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def audit_text(tmp_path: Path) -> tuple[int, str]:
    """How many audit rows the test's store holds, and all their values as one text."""
    with sqlite3.connect(tmp_path / "ferryman.db") as db:
        rows = db.execute("SELECT * FROM audit").fetchall()
    return len(rows), "\n".join(" | ".join(str(v) for v in row if v is not None) for row in rows)


def test_the_check_itself():
    assert find_secrets(f"a {UPSTREAM_KEY} b") == [UPSTREAM_KEY]
    assert find_secrets("Authorization: Bearer abc.def.ghi-123") == ["Bearer abc.def.ghi-123"]
    assert find_secrets(f"prefix{TEST_KEY}") == [TEST_KEY]  # the known keys, even glued to a word
    clean = "key [REDACTED], Bearer [REDACTED], masked sk-************6789, Bearer YOUR_KEY, task-force-2026-plan"
    assert find_secrets(clean) == []
    with pytest.raises(AssertionError, match="1 secret"):
        assert_no_secrets(f"x {CALLER_KEY}")


def test_a_key_in_a_prompt_is_redacted_in_the_audit_row_and_never_logged(client_for, tmp_path, logs):
    client = client_for()
    prompt = f"my keys are {UPSTREAM_KEY} and {TEST_KEY}; token Bearer abcdef0123456789"
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    assert reply.choices[0].message.content
    rows, text = audit_text(tmp_path)
    assert rows == 1
    assert "[REDACTED]" in text
    assert_no_secrets(text, "the audit row")
    assert '"ferryman.telemetry"' in logs.getvalue()
    assert_no_secrets(logs.getvalue(), "the logs")


def test_an_upstream_error_echoing_the_key_is_redacted_everywhere(client_for, ferryman_mock, tmp_path, logs):
    ferryman_mock.set_faults([f"times=1;status=401;code=invalid_api_key;message=Incorrect API key {UPSTREAM_KEY}"])
    client = client_for()
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # The application logs the exception, as applications do.
    logging.getLogger("app").error("the call failed", exc_info=caught.value)
    error = caught.value
    assert "Incorrect API key [REDACTED]" in str(error)
    assert_no_secrets(f"{error} {error.body} {error.response.text}", "the SDK's exception")
    assert_no_secrets(logs.getvalue(), "the logs")
    rows, text = audit_text(tmp_path)
    assert rows == 1
    assert_no_secrets(text, "the audit row")


def test_a_bad_key_gets_a_401_that_masks_it(client_for, tmp_path, logs):
    with BackgroundServer(MockApp(MockSettings(keys=frozenset({TEST_KEY})))) as server:
        strict = MockControl(server.url, app=server.app)
        bad = "sk-ferryman-wrong-key-0123456789"
        plain = openai.OpenAI(base_url=server.base_url, api_key=bad, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as direct:
            plain.models.list()
        assert "sk-************6789" in str(direct.value)
        assert_no_secrets(f"{direct.value} {direct.value.response.text}", "the mock's 401")
        # Through Ferryman, the deployment's key is the one the strict mock refuses.
        with pytest.raises(openai.AuthenticationError) as through:
            client_for(strict).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        plain.close()
        strict.close()
    assert_no_secrets(f"{through.value} {through.value.response.text}", "the 401 through Ferryman")
    assert_no_secrets(logs.getvalue(), "the logs")
    assert_no_secrets(audit_text(tmp_path)[1], "the audit row")


def test_a_key_sent_as_the_model_name_leaks_nowhere(client_for, tmp_path, logs):
    client = client_for()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=UPSTREAM_KEY, messages=[{"role": "user", "content": "hi"}])
    assert_no_secrets(str(caught.value), "the SDK's exception")
    assert_no_secrets(generate_latest(REGISTRY).decode(), "the metrics")
    assert_no_secrets(logs.getvalue(), "the logs")
    assert_no_secrets(audit_text(tmp_path)[1], "the audit row")


# -- the suite-wide guard, run on a small suite of its own ----------------------------------------

LEAKY_SUITE = f'''
import logging, sqlite3, warnings
import pytest

def test_logs_a_key():
    logging.getLogger("ferryman.inner").debug("sent %s", "{KNOWN_KEYS[1]}")

def test_logs_only_redacted_and_masked_text():
    logging.getLogger("ferryman.inner").warning("ok [REDACTED], Bearer [REDACTED], sk-************6789")

def test_warns_a_token():
    warnings.warn("retrying with Bearer abcdefghijklmnop0123")

@pytest.mark.xfail(strict=True)
def test_an_exception_holds_a_virtual_key():
    raise RuntimeError("refused fm-virtual-key-0123456789")

def test_an_audit_row_holds_a_key(tmp_path):
    db = sqlite3.connect(tmp_path / "ferryman.db")
    db.execute("CREATE TABLE audit (seq INTEGER, request_body TEXT)")
    db.execute("INSERT INTO audit VALUES (1, ?)", ("prompt {KNOWN_KEYS[0]}",))
    db.commit()
    db.close()

def test_a_metric_label_holds_a_key():
    from ferryman.pipeline.telemetry import BUDGET_REFUSALS
    BUDGET_REFUSALS.labels("sk-metric-label-0123456789").inc()
'''

CLEAN_SUITE = """
import logging

def test_logs_only_redacted_text():
    logging.getLogger("ferryman.inner").info("key [REDACTED] and sk-************6789")
"""


def run_suite(source: str) -> subprocess.CompletedProcess[str]:
    # Outside the session's temp directory, so this session's own scan never sees its databases.
    with tempfile.TemporaryDirectory() as folder:
        test = Path(folder) / "test_inner.py"
        test.write_text(textwrap.dedent(source))
        argv = [sys.executable, "-m", "pytest", "-p", "tests.leak_guard", "-p", "no:cacheprovider", "-q"]
        argv += ["--rootdir", folder, "--basetemp", str(Path(folder) / "tmp"), str(test)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FERRYMAN_TEST_POSTGRES": "postgresql://nobody@127.0.0.1:1/none"}
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_guard_fails_a_session_that_leaks_and_says_where():
    result = run_suite(LEAKY_SUITE)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "5 passed, 1 xfailed" in out
    assert "SECRET LEAKS: 5 key(s) or token(s) seen" in out
    assert "log record (ferryman.inner DEBUG) during test_inner.py::test_logs_a_key" in out
    assert "warning UserWarning" in out
    assert "exception (RuntimeError) ending the test" in out
    assert "audit table audit of" in out
    assert "Prometheus metrics" in out
    assert "test_logs_only_redacted_and_masked_text" not in out.split("SECRET LEAKS")[1]
    # The report names the keys cut short, never whole.
    assert all(key not in out for key in KNOWN_KEYS)


def test_the_guard_passes_a_clean_session():
    result = run_suite(CLEAN_SUITE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SECRET LEAKS" not in result.stdout
