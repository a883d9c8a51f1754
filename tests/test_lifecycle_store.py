"""The upstreams' own shutdown dates: parsed from ``GET /v1/models``, cached, and trusted before
the shipped table, with the rules the module states (a date wins, a null erases nothing, the
earliest of several upstreams counts, a dead upstream keeps what was known)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time

import pytest

from ferryman import catalogue, lifecycle_store
from ferryman.config import load
from ferryman.lifecycle_store import Fetched, from_listing, read, save
from ferryman.store import open_store


def _settings(tmp_path, *deployments):
    return load(
        deployments=[
            {"name": name, "base_url": url, "api_keys": ["env:FERRYMAN_TEST_UPSTREAM_KEY"]} for name, url in deployments
        ],
        store={"url": f"sqlite:///{tmp_path / 'state.db'}"},
    )


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_listing_parsed_with_bad_entries_skipped():
    payload = {
        "object": "list",
        "data": [
            {"id": "gpt-x", "shutdown_date": "2027-03-01"},
            {"id": "gpt-y", "shutdown_date": None},
            {"id": "gpt-z", "shutdown_date": "soon"},
            {"shutdown_date": "2027-01-01"},
            "not an object",
        ],
    }
    assert from_listing(payload) == {"gpt-x": "2027-03-01", "gpt-y": None, "gpt-z": None}
    assert from_listing({"error": {}}) == {} and from_listing([1, 2]) == {}


def test_upstream_date_wins_null_erases_nothing_earliest_counts(tmp_path):
    store = open_store(_settings(tmp_path, ("a", "http://127.0.0.1:9/v1")))
    with store.engine.begin() as conn:
        save(conn, Fetched("a", {"gpt-4o-mini": "2026-12-20", "gpt-4o": None, "x-1": "2027-05-01"}), now=0)
        save(conn, Fetched("b", {"x-1": "2027-02-01", "gpt-4o": None}), now=0)
    with store.engine.connect() as conn:
        upstream = read(conn)
    assert set(upstream) == {"gpt-4o-mini", "x-1"}
    assert upstream["x-1"].shutdown_date == dt.date(2027, 2, 1)  # b stops serving it first
    mini = catalogue.lifecycle("gpt-4o-mini", upstream)
    assert mini and mini.shutdown_date == dt.date(2026, 12, 20) and mini.source == "upstream 1970-01-01"
    assert mini.successor == "gpt-6-luna"  # successors still come from the shipped table
    shipped = catalogue.lifecycle("gpt-4o", upstream)
    assert shipped and shipped.shutdown_date == dt.date(2027, 1, 14) and shipped.source.startswith("shipped ")
    store.close()


def test_refresh_from_the_mock_then_a_dead_upstream_keeps_the_rows(tmp_path, ferryman_mock, monkeypatch):
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", "local-" + "key")
    settings = _settings(tmp_path, ("mock", ferryman_mock.base_url))
    store = open_store(settings)
    results = asyncio.run(lifecycle_store.refresh(settings, store))
    assert [(r.upstream, r.error) for r in results] == [("mock", None)]
    served = {m["id"]: m["shutdown_date"] for m in ferryman_mock.client.models.list().model_dump()["data"]}
    assert results[0].dates == served
    known = asyncio.run(lifecycle_store.load(store))
    assert {m: u.shutdown_date.isoformat() for m, u in known.items() if u.shutdown_date} == {
        m: d for m, d in served.items() if d
    }
    # The mock saw the deployment's own key, not the caller's (there is none).
    assert any(r["path"] == "/v1/models" for r in ferryman_mock.requests())

    # OpenAI announces a date the shipped table does not know: after a refresh, it is the one used.
    ferryman_mock.set_shutdown_dates({"gpt-6-luna": "2027-06-30", "gpt-4o-mini": "2026-12-20"})
    asyncio.run(lifecycle_store.refresh(settings, store))
    known = asyncio.run(lifecycle_store.load(store))
    luna, mini = catalogue.lifecycle("gpt-6-luna", known), catalogue.lifecycle("gpt-4o-mini", known)
    assert luna and luna.shutdown_date == dt.date(2027, 6, 30) and luna.source.startswith("upstream ")
    assert mini and mini.shutdown_date == dt.date(2026, 12, 20) and mini.successor == "gpt-6-luna"

    dead = _settings(tmp_path, ("mock", _dead_url()))
    failed = asyncio.run(lifecycle_store.refresh(dead, store))
    assert failed[0].error and "Connect" in failed[0].error
    assert asyncio.run(lifecycle_store.load(store)) == known
    store.close()


class Rounds:
    """A fake clock and sleep for ``keep_fresh``: each sleep advances the clock by what was asked,
    and the loop is stopped (cancelled) after ``rounds`` sleeps."""

    def __init__(self, rounds: int, start: float = 1_800_000_000.0) -> None:
        self.now, self.rounds, self.slept = start, rounds, []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if len(self.slept) >= self.rounds:
            raise asyncio.CancelledError


def _keep_fresh(settings, store, rounds: Rounds, every: float = 86400.0) -> list[dict]:
    handed: list[dict] = []

    async def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await lifecycle_store.keep_fresh(
                settings, store, every, handed.append, clock=rounds.clock, sleep=rounds.sleep
            )

    asyncio.run(run())
    return handed


def test_keep_fresh_refreshes_when_due_and_not_before(tmp_path, ferryman_mock, monkeypatch):
    monkeypatch.setenv("FERRYMAN_TEST_UPSTREAM_KEY", "local-" + "key")
    settings = _settings(tmp_path, ("mock", ferryman_mock.base_url))
    store = open_store(settings)
    ferryman_mock.set_shutdown_dates({"gpt-6-luna": "2027-06-30"})
    rounds = Rounds(3, start=time.time())
    handed = _keep_fresh(settings, store, rounds)
    listings = [r for r in ferryman_mock.requests() if r["path"] == "/v1/models"]
    # first start: fetched at once; then each round sleeps the period and fetches again
    assert len(listings) == 3 and rounds.slept == [86400.0, 86400.0, 86400.0]
    assert all(h["gpt-6-luna"].shutdown_date == dt.date(2027, 6, 30) for h in handed) and len(handed) == 3

    # a restart an hour after the last fetch waits out the rest of the day, fetching nothing
    ferryman_mock.clear_requests()
    with store.engine.connect() as conn:
        last = lifecycle_store.last_fetched(conn)
    assert last is not None
    later = Rounds(1, start=last + 3600)
    assert _keep_fresh(settings, store, later) == []
    assert later.slept == [pytest.approx(86400.0 - 3600)]
    assert not [r for r in ferryman_mock.requests() if r["path"] == "/v1/models"]
    store.close()


def test_keep_fresh_retries_a_dead_upstream_sooner_and_keeps_what_was_known(tmp_path, caplog):
    settings = _settings(tmp_path, ("gone", _dead_url()))
    store = open_store(settings)
    with store.engine.begin() as conn:
        save(conn, Fetched("gone", {"gpt-6-luna": "2027-06-30"}), now=0)
    rounds = Rounds(2)
    with caplog.at_level(logging.WARNING, logger="ferryman.lifecycle"):
        handed = _keep_fresh(settings, store, rounds, every=86400.0)
    assert rounds.slept == [8640.0, 8640.0]  # a tenth of the period
    assert [h["gpt-6-luna"].shutdown_date for h in handed] == [dt.date(2027, 6, 30)] * 2
    assert "gone's GET /models failed" in caplog.text
    store.close()
