"""Circuit breakers and the route stage's unit-level choices, with a fake upstream and a hand-moved clock.

The same behaviour end to end, against mocks, is in test_route.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ferryman.config import DeploymentSettings
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Permit
from ferryman.pipeline.route import Route
from ferryman.upstream import Deployment

MESSAGES = [{"role": "user", "content": "hi"}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FirstPick(random.Random):
    """Weighted order that always draws the first deployment left: the settings' order."""

    def random(self) -> float:
        return 0.0


def _route(*names: str, **options: Any) -> Route:
    deployments = [Deployment(DeploymentSettings(name=n, base_url="http://unused.invalid", api_keys=[])) for n in names]
    route = Route(deployments, clock=FakeClock(), rng=FirstPick(), **options)
    return route


def _exchange(model: str = "gpt-4o-mini") -> Exchange:
    return Exchange.build("POST", "/chat/completions", {}, orjson.dumps({"model": model, "messages": MESSAGES}))


async def test_half_open_lets_exactly_one_probe_through():
    route = _route("bad", "good", breaker_failures=1, breaker_cooldown_s=5)
    calls: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()
    healthy = False

    async def upstream(ex: Exchange) -> Reply:
        assert ex.deployment is not None
        calls.append(ex.deployment.name)
        if ex.deployment.name == "good":
            return Reply.of_json(200, {"ok": True})
        if not healthy:
            return Reply.of_json(503, {"error": {"message": "down", "type": "server_error", "code": None}})
        entered.set()
        await release.wait()
        return Reply.of_json(200, {"ok": True})

    await route.handle(_exchange(), upstream)
    assert route.breakers["bad"] == OPEN
    route.clock.advance(5)
    healthy = True
    calls.clear()
    probe = asyncio.create_task(route.handle(_exchange(), upstream))
    await entered.wait()
    assert route.breakers["bad"] == HALF_OPEN
    others = await asyncio.gather(*(route.handle(_exchange(), upstream) for _ in range(3)))
    assert [r.status for r in others] == [200, 200, 200]
    assert calls == ["bad", "good", "good", "good"]  # the concurrent callers skipped the probing deployment
    release.set()
    assert (await probe).status == 200
    assert route.breakers["bad"] == CLOSED


async def test_probe_cancelled_lets_the_next_caller_probe():
    route = _route("only", breaker_failures=1, breaker_cooldown_s=5)
    breaker = route.breaker("only")
    breaker.failure(route.clock(), Permit.CALL)
    route.clock.advance(5)
    started = asyncio.Event()

    async def hang(ex: Exchange) -> Reply:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(route.handle(_exchange(), hang))
    await started.wait()
    assert breaker.probing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == OPEN and breaker.acquire(route.clock()) is Permit.PROBE


async def test_all_open_tries_the_one_whose_cooldown_ends_first():
    route = _route("a", "b", breaker_failures=1, breaker_cooldown_s=10)
    clock = route.clock
    route.breaker("b").failure(clock(), Permit.CALL)
    clock.advance(3)
    route.breaker("a").failure(clock(), Permit.CALL)
    assert route.breakers == {"a": OPEN, "b": OPEN}
    tried: list[str] = []

    async def upstream(ex: Exchange) -> Reply:
        assert ex.deployment is not None
        tried.append(ex.deployment.name)
        return Reply.of_json(200, {"ok": True})

    exchange = _exchange()
    reply = await route.handle(exchange, upstream)
    assert reply.status == 200 and tried == ["b"]
    assert exchange.notes["route"][0]["permit"] == "forced"
    assert route.breakers == {"a": OPEN, "b": CLOSED}  # its success closed it


async def test_client_errors_do_not_count_but_rate_limits_do():
    route = _route("d", breaker_failures=2)

    def answer(status: int, code: str | None) -> Callable[[Exchange], Any]:
        async def upstream(ex: Exchange) -> Reply:
            return Reply.of_json(status, {"error": {"message": "x", "type": "t", "param": None, "code": code}})

        return upstream

    for _ in range(4):
        assert (await route.handle(_exchange(), answer(400, "invalid_value"))).status == 400
        assert (await route.handle(_exchange(), answer(404, "model_not_found"))).status == 404
    assert route.breakers["d"] == CLOSED
    for _ in range(2):
        await route.handle(_exchange(), answer(429, "rate_limit_exceeded"))
    assert route.breakers["d"] == OPEN


def test_failures_outside_the_window_do_not_add_up():
    breaker = Breaker(failures=3, window_s=10, cooldown_s=5)
    breaker.failure(0, Permit.CALL)
    breaker.failure(6, Permit.CALL)
    breaker.failure(11, Permit.CALL)  # the first has left the window
    assert breaker.state == CLOSED
    breaker.failure(12, Permit.CALL)
    assert breaker.state == OPEN
    assert breaker.acquire(16.9) is None
    assert breaker.acquire(17) is Permit.PROBE
    assert breaker.acquire(17) is None  # one probe at a time
    breaker.failure(18, Permit.PROBE)
    assert breaker.state == OPEN and breaker.snapshot(18)["reopen_in_s"] == 5


async def test_pacing_refusals_fall_back_without_counting_against_the_breaker():
    route = _route("busy", "idle", breaker_failures=1)

    async def upstream(ex: Exchange) -> Reply:
        assert ex.deployment is not None
        if ex.deployment.name == "busy":
            ex.notes["ferryman_refused"] = True  # what the pacing stage marks on a 429 it made
            return Reply.of_json(429, {"error": {"message": "paced", "type": "rate_limit_error", "code": None}})
        return Reply.of_json(200, {"ok": True})

    exchange = _exchange()
    assert (await route.handle(exchange, upstream)).status == 200
    assert [(t["deployment"], t["outcome"]) for t in exchange.notes["route"]] == [("busy", "busy"), ("idle", "ok")]
    assert route.breakers == {"busy": CLOSED, "idle": CLOSED}


async def test_quota_codes_read_like_the_retry_stage():
    route = _route("a", "b")
    tried: list[str] = []

    async def upstream(ex: Exchange) -> Reply:
        assert ex.deployment is not None
        tried.append(ex.deployment.name)
        error = {"message": "no credit", "type": "insufficient_quota", "code": "credit_balance_exhausted"}
        return Reply.of_json(429, {"error": error})

    route.aliases = {"mix": ["gpt-4o-mini", "gpt-4o"]}
    reply = await route.handle(_exchange("mix"), upstream)
    assert reply.status == 429 and tried == ["a", "b"]  # each deployment once: its other models are skipped
