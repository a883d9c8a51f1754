"""Operations: health and readiness, Prometheus metrics, JSON access logs, graceful drain."""

from __future__ import annotations

import json
import logging
import threading

import httpx2

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def test_healthz_and_readyz(gateway):
    gw = gateway()
    assert httpx2.get(gw.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(gw.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "disk": "ok"}  # SQLite: the room beside its file too


def test_metrics_count_calls_through_the_gateway(gateway):
    gw = gateway()
    gw.client(gw.new_key()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    text = httpx2.get(gw.url + "/metrics").text
    assert (
        'ferryman_requests_total{deployment="mock",endpoint="/chat/completions",model="gpt-4o-mini",status="200"}'
        in text
    )
    assert "ferryman_gateway_open_streams" in text


class _Lines(logging.Handler):
    """Collects log records; ``arrived(n)`` is set once n of them have come."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.wanted = wanted
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.wanted:
            self.arrived.set()


def test_access_log_is_one_json_line_per_request_without_secrets(gateway, caplog):
    gw = gateway()
    key = gw.new_key(name="logged")
    lines = _Lines(wanted=2)
    access = logging.getLogger("ferryman.access")
    access.addHandler(lines)
    try:
        with caplog.at_level(logging.INFO, logger="ferryman.access"):
            gw.client(key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            httpx2.get(
                gw.base_url + "/models?api_key=sk-inquerystring12345678&limit=2",
                headers={"authorization": f"Bearer {key}"},
            )
            # the line is written when the response is done, on the server's side: wait for it
            assert lines.arrived.wait(10), "the access log lines did not come"
    finally:
        access.removeHandler(lines)
    records = lines.records
    assert [r.status for r in records] == [200, 200]
    assert records[0].key_id.startswith("key_") and records[0].model == "gpt-4o-mini"
    assert records[1].query_params == ["api_key", "limit"]  # names only, never values
    for record in records:
        line = json.dumps(record.__dict__, default=str)
        assert key not in line and "sk-inquerystring" not in line


def test_shutdown_drains_an_open_stream(gateway, ferryman_mock):
    """Stopping the gateway while a stream is open: readiness turns 503 at once, and the stream
    still runs to its last event before the process lets go."""
    gw = gateway()
    client = gw.client(gw.new_key())
    ferryman_mock.set_faults(["path=/v1/chat/completions;times=1;chunk_delay_ms=25"])  # a slow stream
    try:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=40)
    finally:
        ferryman_mock.set_faults([])  # the mock fixed the stream's fault when the call arrived
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices
    stopping = threading.Thread(target=gw.server.stop)
    stopping.start()
    rest = list(chunks)  # the stream goes on to [DONE] while the server shuts down
    stopping.join(15)
    assert not stopping.is_alive()
    assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
    assert gw.gateway.draining
