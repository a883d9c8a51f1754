"""The route stage: model aliases → (model, deployment) candidates, fallback, circuit breakers.

A requested model is an alias (``settings.routing.aliases``, e.g. ``fast = ["gpt-6-luna",
"gpt-4o-mini"]``: an ordered list of models) or a plain model (a list of one). For each model
in turn, the deployments that serve it (their ``models`` globs) are tried in weighted random
order among those whose breaker lets calls through; open breakers are skipped. Before each try
the body's ``model`` becomes the candidate, and ``exchange.model`` / ``exchange.deployment`` are
set (Azure deployments map ``exchange.model`` to their deployment name). The name the caller
asked for stays in ``exchange.notes["requested_model"]``; every try is listed in
``exchange.notes["route"]``.

What moves on to the next candidate (the retry stage sits inside this one, so each candidate
has had its own retries already):

- 5xx replies, and transport errors or timeouts (``httpx2.TransportError``);
- 429 ``rate_limit_exceeded`` / ``slow_down`` (limits are per model, so another model on the
  same deployment is still worth a try);
- 429 ``insufficient_quota`` (and the other quota codes, as the retry stage reads them): the
  quota belongs to that deployment's keys, so the remaining candidates on the *same* deployment
  are skipped and other deployments (other keys) are tried;
- a 429 the pacing stage made itself (``notes["ferryman_refused"]``: that deployment's buckets
  are full) moves on too, but is no failure of the deployment, so its breaker does not count it;
- 400 ``context_length_exceeded``: only candidate models with a larger known context window
  are tried (other deployments of the same model would fail the same way).

Other 4xx replies go back to the caller at once. A streamed reply is final once returned (the
retry stage has already read its first chunk). When every candidate fails, the last error reply
is returned; if no candidate answered at all, the last transport error is raised.

Circuit breakers (:mod:`ferryman.pipeline.breaker`), one per deployment, count 5xx, 429s
(rate limits and quota) and transport errors; client 4xx replies count as the deployment
answering. If every candidate's breaker refuses calls, the one whose cooldown ends first is
tried anyway rather than failing without trying (its outcome closes or re-opens it).

Requests without a model (files, batches, listing models) and exchanges whose deployment was
already chosen pass straight through.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from typing import Any

import httpx2

from ferryman.catalogue import lookup
from ferryman.config import Settings
from ferryman.errors import model_not_found
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.breaker import Breaker, Breakers, Clock, Permit
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.retry import is_quota_error
from ferryman.upstream import Deployment

# What one try ended as.
OK = "ok"  # a reply to hand back (success, or an error that is the caller's to see)
FAIL = "fail"  # counted by the breaker; next candidate
QUOTA = "quota"  # counted; next candidate on another deployment
CONTEXT = "context"  # not counted; next candidate with a larger context window
BUSY = "busy"  # a 429 made by the pacing stage: not counted; next candidate
TRANSPORT = "transport"  # counted; next candidate

_CONTEXT_IN_MESSAGE = re.compile(r"maximum context length is (\d+)")


class Route:
    def __init__(
        self,
        deployments: Sequence[Deployment],
        aliases: dict[str, list[str]] | None = None,
        *,
        breaker_failures: int = 5,
        breaker_window_s: float = 30.0,
        breaker_cooldown_s: float = 15.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.deployments = list(deployments)
        self.aliases = dict(aliases or {})
        self.board = Breakers(
            [d.name for d in self.deployments], breaker_failures, breaker_window_s, breaker_cooldown_s, clock
        )
        self.rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings, **parts: Any) -> Route | None:
        upstream = parts.get("upstream")
        if upstream is None:
            return None
        r = settings.routing
        return cls(
            upstream.deployments,
            r.aliases,
            breaker_failures=r.breaker_failures,
            breaker_window_s=r.breaker_window_s,
            breaker_cooldown_s=r.breaker_cooldown_s,
            clock=parts.get("clock") or time.monotonic,
            rng=parts.get("rng"),
        )

    # -- state, for tests, telemetry and the admin API ---------------------------------------

    @property
    def clock(self) -> Clock:
        return self.board.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.board.clock = clock

    @property
    def breakers(self) -> dict[str, str]:
        """Each deployment's breaker state: closed | open | half_open."""
        return self.board.states()

    def breaker(self, deployment: str) -> Breaker:
        return self.board[deployment]

    # -- planning ------------------------------------------------------------------------------

    def models_for(self, requested: str) -> list[str]:
        return list(self.aliases.get(requested) or [requested])

    def plan(self, requested: str) -> list[tuple[str, Deployment]]:
        """Every (model, deployment) candidate in the order they would be tried."""
        now = self.clock()
        plan: list[tuple[str, Deployment]] = []
        for model in self.models_for(requested):
            serving = [d for d in self.deployments if d.serves(model)]
            healthy = [d for d in serving if self.board[d.name].available(now)]
            rest = sorted((d for d in serving if d not in healthy), key=lambda d: self.board[d.name].reopen_at)
            plan.extend((model, d) for d in weighted_order(healthy, self.rng) + rest)
        return plan

    # -- the stage -----------------------------------------------------------------------------

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        requested = exchange.model
        if requested is None or not isinstance(exchange.json, dict) or exchange.deployment is not None:
            return await call_next(exchange)
        plan = self.plan(requested)
        exchange.notes["requested_model"] = requested
        if not plan:
            error = model_not_found(requested)
            return Reply.of_json(error.status, error.body())
        attempt = _Attempt(exchange, call_next, self.board)
        skipped: list[tuple[str, Deployment]] = []
        for model, deployment in plan:
            if not attempt.wanted(model, deployment):
                continue
            permit = self.board[deployment.name].acquire(self.clock())
            if permit is None:
                skipped.append((model, deployment))
                continue
            if await attempt.run(model, deployment, permit):
                return attempt.final()
        if not attempt.tried and skipped:
            # Every candidate's breaker refused: try the one whose cooldown ends first.
            model, deployment = min(skipped, key=lambda c: self.board[c[1].name].reopen_at)
            await attempt.run(model, deployment, self.board[deployment.name].force(self.clock()))
        return attempt.final()


class _Attempt:
    """The tries of one exchange: what was tried, the last error, and what to skip next."""

    def __init__(self, exchange: Exchange, call_next: Handler, board: Breakers) -> None:
        self.exchange = exchange
        self.call_next = call_next
        self.board = board
        self.tried: list[dict[str, Any]] = []
        exchange.notes["route"] = self.tried
        self.reply: Reply | None = None  # the last reply (final, or the last error)
        self.replied_by: tuple[str, Deployment] | None = None  # the candidate that sent it
        self.error: httpx2.TransportError | None = None
        self.no_quota: set[str] = set()  # deployments whose keys are out of quota
        self.context_over: int | None = None  # a context window the prompt did not fit

    def wanted(self, model: str, deployment: Deployment) -> bool:
        if deployment.name in self.no_quota:
            return False
        if self.context_over is not None:
            size = context_window(model)
            return size is not None and size > self.context_over
        return True

    async def run(self, model: str, deployment: Deployment, permit: Permit) -> bool:
        """Try one candidate; True when its reply is the one to return."""
        ex = self.exchange
        if ex.json.get("model") != model:
            ex.set_json({**ex.json, "model": model})
        ex.model = model
        ex.deployment = deployment
        breaker = self.board[deployment.name]
        entry: dict[str, Any] = {"deployment": deployment.name, "model": model, "permit": permit.value}
        self.tried.append(entry)
        ex.notes.pop(FERRYMAN_MADE, None)  # set anew by the pacing stage if it refuses this try
        try:
            reply = await self.call_next(ex)
            outcome, code = await classify(reply, refused=bool(ex.notes.get(FERRYMAN_MADE)))
        except httpx2.TransportError as error:
            breaker.failure(self.board.clock(), permit)
            entry.update(outcome=TRANSPORT, error=type(error).__name__)
            self.error = error
            return False
        except BaseException:
            breaker.release(self.board.clock(), permit)
            raise
        entry.update(outcome=outcome, status=reply.status, code=code)
        if outcome in (FAIL, QUOTA):
            breaker.failure(self.board.clock(), permit)
        elif outcome == BUSY:
            breaker.release(self.board.clock(), permit)  # the call never reached the deployment
        else:
            breaker.success(self.board.clock(), permit)
        if self.reply is not None:
            await discard(self.reply)
        self.reply, self.replied_by = reply, (model, deployment)
        if outcome == OK:
            return True
        if outcome == QUOTA:
            self.no_quota.add(deployment.name)
        elif outcome == CONTEXT:
            size = context_window(model) or _context_from(reply)
            if size is None:
                return True  # nothing to compare with: the caller sees the 400
            self.context_over = max(size, self.context_over or 0)
        return False

    def final(self) -> Reply:
        self.exchange.notes["fallbacks"] = max(0, len(self.tried) - 1)
        if self.reply is not None:
            if self.replied_by is not None:  # a later try may have failed without a reply
                self.exchange.model, self.exchange.deployment = self.replied_by
            return self.reply
        assert self.error is not None
        raise self.error


async def classify(reply: Reply, refused: bool = False) -> tuple[str, str | None]:
    """(outcome, error code) of a reply; ``refused``: a 429 made by the pacing stage."""
    status = reply.status
    if status < 400:
        return OK, None
    if status >= 500:
        return FAIL, None
    if status not in (400, 429):
        return OK, None
    await reply.aread()
    error = reply.json()
    error = error.get("error") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if status == 429:
        if is_quota_error(reply):
            return QUOTA, code
        return (BUSY if refused else FAIL), code
    return (CONTEXT if code == "context_length_exceeded" else OK), code


def context_window(model: str) -> int | None:
    info = lookup(model)
    return info.max_input_tokens if info else None


def _context_from(reply: Reply) -> int | None:
    error = reply.json()
    message = str(error.get("error", {}).get("message", "")) if isinstance(error, dict) else ""
    found = _CONTEXT_IN_MESSAGE.search(message)
    return int(found.group(1)) if found else None


def weighted_order(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A random order in which each next deployment is drawn with probability ∝ its weight."""
    pool = list(deployments)
    order: list[Deployment] = []
    while pool:
        total = sum(d.settings.weight for d in pool)
        x = rng.random() * total
        pick = len(pool) - 1
        for i, d in enumerate(pool):
            x -= d.settings.weight
            if x < 0:
                pick = i
                break
        order.append(pool.pop(pick))
    return order


async def discard(reply: Reply) -> None:
    """Finish with a reply that will not reach the caller."""
    stream = reply.stream
    if stream is not None and hasattr(stream, "aclose"):
        await stream.aclose()
    for callback in reply.on_close:
        callback()
    reply.on_close.clear()
