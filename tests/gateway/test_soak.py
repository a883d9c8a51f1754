"""A bounded soak through the real gateway: callers naming ever new models and tags do not grow
``/metrics`` or the process's memory.

3,000 calls (most naming a random or fine-tuned model the mock refuses, some a known model with
random tags, some reading random file ids) after a warm-up; ``/metrics`` and the process's RSS
(the gateway runs in this process, on a thread) are measured after the warm-up and at the end.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2

from ferryman.gateway.access_log import FIELD_MAX

WARM_UP = 500
CALLS = 3_000
THREADS = 4
METRICS_GROWTH_MAX = 20 * 1024
RSS_GROWTH_MAX = 30 * 1024 * 1024
MESSAGES = [{"role": "user", "content": "hi"}]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class _Widest(logging.Handler):
    """Keeps no record: only how many came and the longest message and field seen."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.longest_message = 0
        self.longest_field = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.longest_message = max(self.longest_message, len(record.getMessage()))
        for name in ("path", "model", "request_id", "error"):
            value = getattr(record, name, None)
            if isinstance(value, str):
                self.longest_field = max(self.longest_field, len(value))


def test_random_models_and_tags_do_not_grow_metrics_or_memory(gateway, monkeypatch):
    gw = gateway()
    key = gw.new_key(name="soak")
    access = logging.getLogger("ferryman.access")
    widest = _Widest()
    access.addHandler(widest)
    monkeypatch.setattr(access, "propagate", False)  # pytest's own capture would keep every line
    monkeypatch.setattr(access, "level", logging.INFO)
    statuses: dict[int, int] = {}
    headers = {"authorization": f"Bearer {key}"}
    local: dict[int, httpx2.Client] = {}
    clients: list[httpx2.Client] = []

    def client() -> httpx2.Client:
        ident = threading.get_ident()
        if ident not in local:
            local[ident] = httpx2.Client(base_url=gw.base_url, headers=headers, timeout=30)
            clients.append(local[ident])
        return local[ident]

    def one(i: int) -> int:
        project, team, feature = (uuid.uuid4().hex[:12] for _ in range(3))
        tags = {"ferryman-tags": f"team=tagteam{team},feature=tagfeat{feature}"}
        kind = i % 10
        if kind == 9:  # an id in the path: never a label
            reply = client().get(f"/files/file-{project}", headers=tags)
        else:
            model = (
                "gpt-4o-mini" if kind == 0
                else f"ft:gpt-4o-mini:org:secretproj-{project}:{uuid.uuid4().hex[:8]}" if kind < 5
                else f"random-{uuid.uuid4()}"
            )  # fmt: skip
            body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 4}
            reply = client().post("/chat/completions", json=body, headers=tags)
        return reply.status_code

    def run(start: int, stop: int) -> None:
        with ThreadPoolExecutor(THREADS) as pool:
            for status in pool.map(one, range(start, stop)):
                statuses[status] = statuses.get(status, 0) + 1

    def measure() -> tuple[int, int]:
        gc.collect()
        return len(httpx2.get(gw.url + "/metrics").content), rss_bytes()

    started = time.perf_counter()
    try:
        run(0, WARM_UP)
        metrics_before, rss_before = measure()
        run(WARM_UP, CALLS)
        metrics_after, rss_after = measure()
        text = httpx2.get(gw.url + "/metrics").text
    finally:
        access.removeHandler(widest)
        for each in clients:
            each.close()
    elapsed = time.perf_counter() - started
    print(
        f"\nsoak: {CALLS} calls in {elapsed:.1f} s, statuses {dict(sorted(statuses.items()))}\n"
        f"  /metrics {metrics_before} -> {metrics_after} bytes ({metrics_after - metrics_before:+d})\n"
        f"  RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB ({(rss_after - rss_before) / 2**20:+.1f})\n"
        f"  access log: {widest.count} lines, longest message {widest.longest_message}, "
        f"longest field {widest.longest_field}"
    )
    assert sum(statuses.values()) == CALLS
    assert statuses.get(200, 0) > 0 and len(statuses) > 1  # some served, most refused
    assert metrics_after - metrics_before < METRICS_GROWTH_MAX
    assert rss_after - rss_before < RSS_GROWTH_MAX
    assert "secretproj" not in text and "random-" not in text and "tagteam" not in text and "tagfeat" not in text
    assert 'endpoint="/files/{id}"' in text and "file-" not in text
    assert widest.longest_field <= FIELD_MAX
