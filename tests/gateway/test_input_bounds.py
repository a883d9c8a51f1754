"""The gateway answers an out-of-range integer (``max_tokens: 2**63``, the finding) with a 400
``invalid_value``, not a 429 from pacing, over real HTTP with a key that has limits and a budget;
the refusal is recorded and nothing reaches the upstream."""

from __future__ import annotations

import httpx2

HUGE = 9223372036854775808  # 2**63


def test_the_gateway_answers_400_and_records_it(gateway, ferryman_mock):
    gw = gateway()
    key = gw.new_key("bounded", budget="5/day", rpm=100, tpm=1000)
    ferryman_mock.clear_requests()
    reply = httpx2.post(
        gw.base_url + "/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": %d}' % HUGE,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("invalid_value", "max_tokens", "invalid_request_error")
    assert ferryman_mock.requests() == []
    recent = gw.admin.get("/admin/requests").json()["data"]
    assert recent[0]["status"] == 400 and recent[0]["error"] == "invalid_value"
