"""The gateway's audit records name it as their front door, with the advice fields filled as for
the SDK (pipeline/audit_advice.py)."""

from __future__ import annotations

from sqlalchemy import select

from ferryman.store.tables import audit


def test_gateway_calls_are_recorded_with_source_gateway_and_their_advice_fields(gateway):
    gw = gateway()
    client = gw.client(gw.new_key())
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "seed": 3}
    raw = client.chat.completions.with_raw_response.create(**ask)
    for _ in client.chat.completions.create(**ask, stream=True):
        pass
    client.models.list()
    with gw.gateway.store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]
    plain, streamed, models = rows[-3:]
    assert {row["source"] for row in rows} == {"gateway"}
    assert plain["output_cap"] == streamed["output_cap"] == 7 and plain["deterministic"] is True
    assert plain["request_fp"] is not None and plain["request_fp"] == streamed["request_fp"]
    assert plain["ratelimit"]["remaining_requests"] == int(raw.headers["x-ratelimit-remaining-requests"])
    assert plain["via_batch"] is False and models["request_fp"] is None and models["output_cap"] is None
