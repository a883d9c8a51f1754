"""The official Node SDK (``openai`` from npm, pinned in tests/gateway/node/package-lock.json) through the
gateway to the mock: chat (plain and streamed), responses (streamed), embeddings, files and batches, with
the caller holding only a virtual key; and a refused key surfacing as the SDK's AuthenticationError.

Each test runs ``node tests/gateway/node/sdk_through_gateway.mjs <area>`` against a fresh gateway; the
script prints one JSON object per check and exits non-zero on any failure. Without ``node`` or without
``tests/gateway/node/node_modules`` (``npm ci``, which scripts/test runs) the tests skip, and fail
instead under ``FERRYMAN_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.leak_guard import assert_no_secrets
from tests.pipeline.conftest import UPSTREAM_KEY

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "sdk_through_gateway.mjs"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed, so the Node SDK tests cannot run"
    elif not (NODE_DIR / "node_modules" / "openai").is_dir():
        reason = "tests/gateway/node/node_modules is missing: run `npm ci` there (scripts/test does)"
    else:
        return node
    if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and FERRYMAN_REQUIRE_SERVICES=1 makes these tests mandatory")
    pytest.skip(reason)


@dataclass
class NodeRun:
    returncode: int
    checks: dict[str, dict[str, Any]]
    stdout: str
    stderr: str

    def ok(self, *names: str) -> dict[str, dict[str, Any]]:
        """The reports of ``names``, after asserting that exactly those checks ran and all passed."""
        failure = f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        assert self.returncode == 0, failure
        assert sorted(self.checks) == sorted(names), failure
        assert all(self.checks[name]["ok"] is True for name in names), failure
        return self.checks


@pytest.fixture
def node_sdk():
    """``node_sdk(gw, key, *areas)``: runs the Node script against gateway ``gw`` with ``key``."""
    node = _node()

    def run(gw: Any, key: str, *areas: str) -> NodeRun:
        env = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
        env.update(OPENAI_BASE_URL=gw.base_url, OPENAI_API_KEY=key)
        done = subprocess.run(
            [node, str(SCRIPT), *areas], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60
        )
        # What the script prints must never carry a key, whatever happened.
        assert_no_secrets(done.stdout + done.stderr, "the Node script's output")
        checks = {}
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                report = json.loads(line)
                checks[report["check"]] = report
        return NodeRun(done.returncode, checks, done.stdout, done.stderr)

    return run


def test_chat_plain_through_the_gateway(gateway, ferryman_mock, node_sdk):
    gw = gateway()
    key = gw.new_key()
    report = node_sdk(gw, key, "chat").ok("chat")["chat"]
    assert report["total_tokens"] > 0
    sent = ferryman_mock.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert key not in json.dumps(sent)  # the upstream saw the server's key, never the caller's


def test_chat_stream_ends_with_usage(gateway, node_sdk):
    gw = gateway()
    report = node_sdk(gw, gw.new_key(), "chat_stream").ok("chat_stream")["chat_stream"]
    assert report["chunks"] > 1 and report["completion_tokens"] > 0


def test_responses_stream(gateway, node_sdk):
    gw = gateway()
    report = node_sdk(gw, gw.new_key(), "responses_stream").ok("responses_stream")["responses_stream"]
    assert (report["first"], report["last"]) == ("response.created", "response.completed")
    assert report["text_chars"] > 0


def test_embeddings(gateway, node_sdk):
    gw = gateway()
    report = node_sdk(gw, gw.new_key(), "embeddings").ok("embeddings")["embeddings"]
    assert (report["vectors"], report["dimensions"]) == (2, 1536)


def test_files_and_batches(gateway, ferryman_mock, node_sdk):
    gw = gateway()
    checks = node_sdk(gw, gw.new_key(), "files_batches").ok(
        "files.create", "files.retrieve", "files.content", "batches.create", "batches.retrieve", "batches.list"
    )
    assert checks["files.retrieve"]["purpose"] == "batch"
    assert (checks["batches.list"]["batches"], checks["batches.list"]["files"]) == (1, 1)
    paths = {r["path"] for r in ferryman_mock.requests()}
    assert {"/v1/files", "/v1/batches"} <= paths  # both reached the upstream through the gateway


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(lambda: "fm-" + secrets.token_urlsafe(32), id="unknown-virtual-key"),
        pytest.param(lambda: UPSTREAM_KEY, id="the-upstream-key"),
    ],
)
def test_a_refused_key_throws_authentication_error(gateway, ferryman_mock, node_sdk, refused):
    gw = gateway()
    report = node_sdk(gw, refused(), "auth_error").ok("auth_error")["auth_error"]
    assert report["error"] == "AuthenticationError"
    assert (report["status"], report["code"]) == (401, "invalid_api_key")
    assert report["key_in_message"] is False
    assert ferryman_mock.requests() == []  # refused at the gateway, nothing went upstream
