"""``ferryman.doctor_upstream`` against the real mock: keys accepted or refused, dead and silent
upstreams named as such, configured models listed, retired or retiring (dates from the catalogue
and the mock's listing, with ``today`` injected), and ``--probe``'s rate limits."""

from __future__ import annotations

import datetime as dt
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ferryman.config import Settings
from ferryman.doctor import FAIL, OK, SKIP, WARN, Check
from ferryman.doctor_limits import probe_request
from ferryman.doctor_upstream import check_upstreams, configured_models
from ferryman.mock.app import MockApp
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer, free_port
from ferryman.mock.settings import MockSettings

TODAY = dt.date(2026, 6, 1)  # gpt-3.5-turbo (shutdown 2026-10-23) still has 144 days
KEY_ENV = "DOCTOR_TEST_UPSTREAM_KEY"


def make_key() -> str:
    """A key-shaped value made at run time (the suite's leak guard knows none is in its source)."""
    return "-".join(("sk", "doctor", secrets.token_hex(12)))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """No settings file, no OpenAI key or base URL; an HTTPS proxy nobody runs, so that a bug
    sending a call to api.openai.com fails here instead of reaching it; the upstream's key."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(tmp_path)
    key = make_key()
    monkeypatch.setenv(KEY_ENV, key)
    yield key


def settings_for(base_url: str, models: list[str] | None = None, **deployment: Any) -> Settings:
    aliases = deployment.pop("aliases", {})
    return Settings(
        deployments=[
            {"name": "mock", "base_url": base_url, "api_keys": [f"env:{KEY_ENV}"], "models": models or ["*"]}
            | deployment
        ],
        routing={"aliases": aliases},
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.check: check for check in checks}


def run(settings: Settings, today: dt.date = TODAY, **options: Any) -> dict[str, Check]:
    options.setdefault("timeout", 2.0)
    return by_name([c.redacted() for c in check_upstreams(settings, today=today, **options)])


# -- reaching the upstream --------------------------------------------------------------------


def test_the_mock_answers_with_its_key(ferryman_mock: MockControl):
    found = run(settings_for(ferryman_mock.base_url, ["gpt-4o-mini"]), today=dt.date(2026, 6, 1))
    upstream = found["upstream:mock"]
    assert upstream.status == OK, upstream
    assert "models listed" in upstream.message
    assert upstream.details["results"] == [{"key": f"env:{KEY_ENV}", "ok": True, "cause": None}]
    assert ferryman_mock.requests()[-1]["path"] == "/v1/models"
    assert found["rate-limits"].status == SKIP
    assert found["rate-limits"].message == "not probed (use --probe; costs one small call per model)"


def test_a_dead_upstream_is_connection_refused():
    found = run(settings_for(f"http://127.0.0.1:{free_port()}/v1"))
    upstream = found["upstream:mock"]
    assert upstream.status == FAIL
    assert upstream.message == "connection refused"
    assert "nothing listens at" in upstream.hint


def test_a_silent_upstream_is_a_timeout():
    with socket.socket() as listener:  # accepts connections (the kernel does) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        found = run(settings_for(f"http://127.0.0.1:{port}/v1"), timeout=0.3)
    upstream = found["upstream:mock"]
    assert upstream.status == FAIL
    assert upstream.message == "timeout: no answer within 0.3 s"
    assert "--timeout" in upstream.hint


def test_an_unknown_host_is_named():
    found = run(settings_for("http://doctor-test.invalid/v1"))
    assert found["upstream:mock"].status == FAIL
    assert found["upstream:mock"].message.startswith("host name not found")


def test_a_refused_key_is_401_and_never_shown(isolated: str, monkeypatch: pytest.MonkeyPatch):
    good = make_key()
    monkeypatch.setenv("DOCTOR_TEST_GOOD_KEY", good)
    with BackgroundServer(MockApp(MockSettings(keys=frozenset({good})))) as server:
        bad_only = run(settings_for(server.base_url))
        both = run(settings_for(server.base_url, api_keys=["env:DOCTOR_TEST_GOOD_KEY", f"env:{KEY_ENV}"]))
    refused = bad_only["upstream:mock"]
    assert refused.status == FAIL
    assert refused.message.startswith("401 invalid key (invalid_api_key)")
    assert "check or renew it" in refused.hint
    one_bad = both["upstream:mock"]
    assert one_bad.status == FAIL
    assert one_bad.message.startswith(f"key env:{KEY_ENV}: 401 invalid key")
    assert "DOCTOR_TEST_GOOD_KEY" not in one_bad.message
    for check in (*bad_only.values(), *both.values()):
        assert isolated not in str(check.as_json()) and good not in str(check.as_json())


def test_no_key_means_no_call():
    """The implicit deployment (OpenAI's API) with no OPENAI_API_KEY: reported, never called."""
    found = run(Settings())
    upstream = found["upstream:default"]
    assert upstream.status == FAIL
    assert upstream.message == "no usable key: env:OPENAI_API_KEY is not set"
    assert "OPENAI_API_KEY" in upstream.hint
    assert "results" not in upstream.details  # nothing was sent


def test_an_unset_key_beside_a_working_one_warns(ferryman_mock: MockControl):
    settings = settings_for(ferryman_mock.base_url, api_keys=[f"env:{KEY_ENV}", "env:DOCTOR_TEST_UNSET"])
    upstream = run(settings)["upstream:mock"]
    assert upstream.status == WARN
    assert "a key is not used: env:DOCTOR_TEST_UNSET is not set" in upstream.message


def test_offline_calls_nothing(ferryman_mock: MockControl):
    found = run(settings_for(ferryman_mock.base_url, ["gpt-3.5-turbo"]), today=dt.date(2026, 11, 1), offline=True)
    assert found["upstream:mock"].status == SKIP
    assert ferryman_mock.requests() == []
    model = found["model:mock:gpt-3.5-turbo"]  # still judged by the shipped dates
    assert model.status == FAIL
    assert "retired on 2026-10-23" in model.message and "not checked against mock (--offline)" in model.message


def test_azure_is_not_listed(ferryman_mock: MockControl):
    settings = settings_for(ferryman_mock.url, ["gpt-4o-mini"], kind="azure", azure_deployments={"gpt-4o": "prod-4o"})
    found = run(settings)
    assert found["upstream:mock"].status == SKIP
    assert "not checked for Azure" in found["upstream:mock"].message
    assert set(found) >= {"model:mock:gpt-4o-mini", "model:mock:gpt-4o"}
    assert ferryman_mock.requests() == []


# -- models -----------------------------------------------------------------------------------


def test_configured_models_are_the_concrete_names():
    settings = Settings(
        deployments=[
            {"name": "a", "models": ["gpt-4o-mini", "gpt-5*", "o[34]-mini"]},
            {"name": "b", "models": ["text-embedding-3-small"]},
        ],
        routing={"aliases": {"fast": ["gpt-5-mini", "gpt-4o-mini"], "lost": ["claude-9"]}},
    )
    served, unserved = configured_models(settings)
    assert served == {"a": ["gpt-4o-mini", "gpt-5-mini"], "b": ["text-embedding-3-small"]}
    assert unserved == {"claude-9": ["lost"]}


def test_a_current_model_is_ok(ferryman_mock: MockControl):
    found = run(settings_for(ferryman_mock.base_url, ["gpt-6-luna", "text-embedding-3-small"]))
    assert found["model:mock:gpt-6-luna"].status == OK
    assert found["model:mock:gpt-6-luna"].details["listed"] is True
    assert found["model:mock:text-embedding-3-small"].status == OK


def test_a_retired_model_fails_with_its_successor(ferryman_mock: MockControl):
    model = run(settings_for(ferryman_mock.base_url, ["gpt-3.5-turbo"]), today=dt.date(2026, 10, 23))[
        "model:mock:gpt-3.5-turbo"
    ]
    assert model.status == FAIL
    assert model.message.startswith("gpt-3.5-turbo retired on 2026-10-23")
    assert "successor" in model.message
    assert model.details["retired"] is True
    assert model.hint.startswith("move to ")


def test_a_model_retiring_within_90_days_warns(ferryman_mock: MockControl):
    settings = settings_for(ferryman_mock.base_url, ["gpt-3.5-turbo"])
    model = run(settings, today=dt.date(2026, 7, 25))["model:mock:gpt-3.5-turbo"]
    assert model.status == WARN
    assert model.message.startswith("gpt-3.5-turbo retires on 2026-10-23, in 90 days (successor: ")
    later = run(settings, today=dt.date(2026, 7, 24))["model:mock:gpt-3.5-turbo"]
    assert later.status == OK
    assert "retires on 2026-10-23 (91 days)" in later.message


def test_the_upstreams_date_counts(ferryman_mock: MockControl):
    """The listing's shutdown_date is the source (the mock lists the catalogue's dates)."""
    model = run(settings_for(ferryman_mock.base_url, ["gpt-3.5-turbo"]))["model:mock:gpt-3.5-turbo"]
    assert model.details["source"] == f"upstream {TODAY.isoformat()}"


def test_an_alias_target_is_checked_on_the_deployments_that_serve_it(ferryman_mock: MockControl):
    settings = settings_for(ferryman_mock.base_url, ["gpt-*"], aliases={"fast": ["gpt-6-luna"], "gone": ["o9-x"]})
    found = run(settings)
    assert found["model:mock:gpt-6-luna"].status == OK
    assert found["alias:gone"].status == FAIL
    assert "routing.aliases.gone names o9-x, which no deployment serves" in found["alias:gone"].message


def test_an_unlisted_model_fails(ferryman_mock: MockControl):
    model = run(settings_for(ferryman_mock.base_url, ["gpt-doctor-nonexistent"]))["model:mock:gpt-doctor-nonexistent"]
    assert model.status == FAIL
    assert "does not list gpt-doctor-nonexistent" in model.message
    assert model.details["listed"] is False


def test_a_dead_upstream_leaves_models_to_the_catalogue():
    found = run(settings_for(f"http://127.0.0.1:{free_port()}/v1", ["gpt-6-luna"]))
    model = found["model:mock:gpt-6-luna"]
    assert model.status == SKIP
    assert "not checked against mock (the upstream did not answer)" in model.message


# -- rate limits ------------------------------------------------------------------------------


def test_probe_requests_are_tiny():
    assert probe_request("gpt-4o-mini")[1]["max_completion_tokens"] == 1
    assert probe_request("text-embedding-3-small")[0] == "/embeddings"
    assert probe_request("omni-moderation-latest")[0] == "/moderations"
    assert probe_request("o1-pro")[0] == "/responses"
    assert probe_request("davinci-002")[1]["max_tokens"] == 1


def test_a_probe_reports_the_limits(ferryman_mock: MockControl):
    ferryman_mock.set_limits(rpm=100, tpm=20000)
    settings = settings_for(ferryman_mock.base_url, ["gpt-6-luna", "text-embedding-3-small"])
    found = run(settings, probe=True)
    chat = found["rate-limits:mock:gpt-6-luna"]
    assert chat.status == OK, chat
    assert chat.message.startswith("100 requests/min (99 left), 20000 tokens/min (")
    assert chat.details["limit_requests"] == "100"
    assert found["rate-limits:mock:text-embedding-3-small"].status == OK
    paths = [r["path"] for r in ferryman_mock.requests()]
    assert paths == ["/v1/models", "/v1/chat/completions", "/v1/embeddings"]
    assert "rate-limits" not in found


def test_a_probe_warns_when_the_settings_exceed_the_limit(ferryman_mock: MockControl):
    ferryman_mock.set_limits(rpm=100, tpm=20000)
    found = run(settings_for(ferryman_mock.base_url, ["gpt-6-luna"], rpm=500), probe=True)
    chat = found["rate-limits:mock:gpt-6-luna"]
    assert chat.status == WARN
    assert "deployment rpm = 500 is above the upstream's 100" in chat.message


def test_a_probe_warns_when_the_key_is_nearly_spent(ferryman_mock: MockControl, isolated: str):
    import openai

    ferryman_mock.set_limits(rpm=20, tpm=1_000_000)
    same_key = openai.OpenAI(base_url=ferryman_mock.base_url, api_key=isolated, max_retries=0)
    for _ in range(19):  # the mock's limits are per key: spend this one's (one left, refilling one per 3 s)
        same_key.embeddings.create(model="text-embedding-3-small", input="x")
    chat = run(settings_for(ferryman_mock.base_url, ["gpt-6-luna"]), probe=True)["rate-limits:mock:gpt-6-luna"]
    assert chat.status == WARN
    assert "requests left this minute" in chat.message


def test_no_probe_for_a_failed_model(ferryman_mock: MockControl):
    settings = settings_for(ferryman_mock.base_url, ["gpt-doctor-nonexistent"])
    found = run(settings, probe=True)
    assert found["rate-limits:mock:gpt-doctor-nonexistent"].status == SKIP
    assert [r["path"] for r in ferryman_mock.requests()] == ["/v1/models"]


def test_an_azure_probe_calls_the_deployment(ferryman_mock: MockControl):
    """The pipeline's Azure URL (deployment name, api-version); the mock has no Azure routes."""
    settings = settings_for(ferryman_mock.url, [], kind="azure", azure_deployments={"gpt-4o": "prod-4o"})
    probe = run(settings, probe=True)["rate-limits:mock:gpt-4o"]
    (sent,) = ferryman_mock.requests()
    assert (sent["path"], sent["query"]) == ("/openai/deployments/prod-4o/chat/completions", "api-version=2024-10-21")
    assert probe.status == FAIL
    assert probe.message.startswith(f"probe failed: 404 at {ferryman_mock.url}/openai/deployments/prod-4o/")
    assert "azure_deployments" in probe.hint


@pytest.mark.parametrize(
    ("fault", "status", "said"),
    [
        ("status=500", FAIL, "500 upstream error"),
        ("status=429;code=insufficient_quota", FAIL, "429 insufficient_quota"),
        ("status=429;code=rate_limit_exceeded", WARN, "429 rate limited"),
        ("status=403;code=unsupported_country_region_territory", FAIL, "403 forbidden"),
    ],
)
def test_an_error_answer_is_named(ferryman_mock: MockControl, fault: str, status: str, said: str):
    ferryman_mock.set_faults([f"path=/v1/models;{fault}"])
    upstream = run(settings_for(ferryman_mock.base_url))["upstream:mock"]
    assert upstream.status == status
    assert upstream.message.startswith(said)
