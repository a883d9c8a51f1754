"""A configured secret with no key shape (the admin key) is redacted by value everywhere.

``ferryman-admin-test-secret`` has no ``sk-``/``fm-`` prefix, no ``Bearer`` and no ``api-key=``
before it, so shape-based redaction cannot see it: sent as a model name, an id in a path or a
query value, it must still not come back in an error, nor reach the access log, the audit rows or
``/admin/usage``. The gateway resolves it at start-up, which registers it with ferryman.redact.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.test_security import Logs, audit_rows, bodies_of, logs  # noqa: F401  (a fixture)


def _misuse(gw: Any, captured: Logs, secret: str = ADMIN_KEY) -> None:
    """Send the admin key as a model name, a file id (raw and percent-encoded) and a query value;
    check the replies, the log, /admin/usage and the audit rows."""
    auth = {"authorization": f"Bearer {gw.new_key('careless')}"}
    body = {"model": secret, "messages": [{"role": "user", "content": f"admin is {secret}"}], "max_tokens": 3}
    with httpx2.Client(base_url=gw.base_url, timeout=30) as http:
        replies = [
            http.post("/chat/completions", json=body, headers=auth),
            http.get(f"/files/{secret}", headers=auth),
            http.get(f"/files/{quote(secret, safe='')}x", headers=auth),
            http.get("/models", params={"after": secret}, headers=auth),
        ]
    assert all(r.status_code < 500 for r in replies), bodies_of(replies)
    errors = bodies_of(replies)
    assert secret not in errors

    deadline = time.monotonic() + 10
    while captured.text().count("ferryman.access") < len(replies) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert secret not in captured.text()

    usage = httpx2.get(gw.url + "/admin/usage?days=30", headers={"authorization": f"Bearer {secret}"}, timeout=30)
    assert usage.status_code == 200 and secret not in usage.text

    rows = audit_rows(Path(gw.gateway.settings.store.url.removeprefix("sqlite:///")))
    assert rows and secret not in json.dumps(rows, default=str)


def test_the_admin_key_sent_as_a_model_id_or_query_value_is_never_echoed_or_stored(
    gateway: Any,
    logs: Logs,  # noqa: F811
) -> None:
    gw = gateway(audit={"bodies": "full"})
    assert gw.admin.get("/admin/usage?days=1").status_code == 200  # the gateway has resolved its admin key
    _misuse(gw, logs)


def test_the_admin_key_is_known_from_start_up(
    gateway: Any,
    logs: Logs,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No admin request first: the gateway resolves its admin key when it starts."""
    secret = f"ferryman-admin-{secrets.token_hex(8)}"  # one no other test has made known yet
    monkeypatch.setenv("FERRYMAN_TEST_ADMIN_KEY", secret)
    _misuse(gateway(audit={"bodies": "full"}), logs, secret)
