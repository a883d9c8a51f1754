"""The budget stage: hard USD caps per scope and period, never passed by concurrent calls.

Rules come from ``settings.budgets`` (``BudgetRule(scope, period, usd)``). Scopes:

- ``process``: every call through this store (all processes sharing it, in shared mode);
- ``key``: each caller (principal) separately; ``key:ID``: that caller only;
- ``tag:NAME``: each value of the ``ferryman-tags`` tag NAME separately; ``tag:NAME=VALUE``:
  that value only (the same counter as ``tag:NAME`` for that value).

A caller may bring its own caps (``Principal.caps``: the gateway's virtual keys and teams, on
counters ``key:ID`` and ``team:NAME``); they are held exactly like rules.

Windows are UTC: ``2026-11-25`` for ``day``, ``2026-11`` for ``month``.

Before an inference call (chat, responses, completions, embeddings) the stage reserves its
worst-case cost on every counter that applies, atomically, all or none: the prompt's tokens
counted exactly (``exchange.prompt_tokens``) plus the output cap (or the model's
``max_output_tokens`` when the request sets none), priced at the requested ``service_tier``
(for a routing alias, the dearest of its models). A call that would take a counter past its
cap (``spent + reserved + this > cap``) is refused with a 429 in OpenAI's shape, type
``insufficient_quota``, code ``budget_exceeded`` and ``x-should-retry: false``.

After the call the real cost (``exchange.cost_usd``, from the account stage; 0 for errors and
cache hits) is settled and the rest released: for a plain reply before it is returned, for a
stream when it ends or the caller closes it (``reply.on_close``). An exception or cancellation
releases the whole reservation. A settlement that fails is tried again at once (a pooled Redis
connection a restart left behind fails one command, then reconnects), then in the background
until it lands or the call's deadline passes: with Redis in front, the database may have settled
already while Redis has not, and no rebuild would add the cost to a counter Redis still has (the
store settles a hold in the database only once, however often it is tried).

Under the operator's own rules, a model without a price reserves 0 (the call goes through and a
warning is logged once per model), since refusing every call to a new model would be worse; its
cost, if it later turns out to have one, is still settled. A caller that brings its own cap (a
virtual key's or its team's budget) is not trusted that way: its call to a model Ferryman cannot
price is refused with a 400 ``model_not_priced`` on ``model``, never sent, since a cap that cannot
price a call cannot hold it (a new model, or a name a compatible upstream serves, would otherwise
be free of the key's budget). A price for it in ``pricing_file`` lets it through.

Counters live in the database, with Redis in front when the store has it (see budget_stores and
budget_redis). Each reservation is leased to this instance (``budget.lease_s``, default 60 s)
and renewed while calls are in flight, up to the call's deadline (the retry deadline plus the
slowest deployment's timeout); when a reservation is refused, expired leases (of instances that
died) are released first and the reservation is tried once more, so a crashed instance's calls
stop blocking a key within the lease.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.account import FINISH_NOTE
from ferryman.pipeline.budget_stores import (
    ZERO,
    BudgetStore,
    Counter,
    Hold,
    Refusal,
    budget_store,
    reservation,
    settled,
)
from ferryman.pipeline.chain import Handler
from ferryman.pricing import BILLED_ENDPOINTS, PriceTable, normalise_tier
from ferryman.tokens import count_request_prompt_tokens, endpoint_route, max_output_tokens

log = logging.getLogger("ferryman.budget")

BILLED = BILLED_ENDPOINTS
CODE = "budget_exceeded"
UNPRICED = "model_not_priced"  # a capped caller's call to a model with no price
WARNED_MAX = 256  # models without a price that are named in a warning, each once
REAP_EVERY_S = 1.0  # expired reservations are looked for at most this often
SETTLE_TRIES_NOW = 3  # a settlement is tried this often before the reply goes out
SETTLE_RETRY_S = (0.1, 0.5, 2.0, 5.0)  # then in the background, this far apart (the last repeated)


def window_of(period: str, now: float) -> tuple[str, int]:
    """The UTC window ``now`` falls in, and when its counter may expire (a day after it ends)."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = day + timedelta(days=1)
        return day.strftime("%Y-%m-%d"), int((end + timedelta(days=1)).timestamp())
    first = day.replace(day=1)
    end = (first + timedelta(days=32)).replace(day=1)
    return first.strftime("%Y-%m"), int((end + timedelta(days=1)).timestamp())


def check_scope(scope: str) -> None:
    kind, _, rest = scope.partition(":")
    if scope in ("process", "key") or (kind == "key" and rest) or (kind == "tag" and rest.partition("=")[0]):
        return
    raise ValueError(f"unknown budget scope {scope!r}: use process, key, key:ID, tag:NAME or tag:NAME=VALUE")


def scope_of(scope: str, exchange: Exchange) -> str | None:
    """The counter a rule's scope names for this call, or None when the rule does not apply."""
    if scope == "process":
        return "process"
    if scope == "key":
        return f"key:{exchange.principal.id}"
    kind, _, rest = scope.partition(":")
    if kind == "key":
        return scope if exchange.principal.id == rest else None
    name, sep, value = rest.partition("=")
    billing = exchange.principal.billing_tags
    tags = exchange.tags if billing is None else dict(billing)  # a virtual key bills to its own tags only
    actual = tags.get(name.lower())
    if actual is None or (sep and actual.casefold() != value.casefold()):
        return None
    return f"tag:{name.lower()}={actual.casefold()}"


class Budget:
    def __init__(
        self,
        rules: list[Any],
        store: BudgetStore,
        prices: PriceTable,
        aliases: dict[str, list[str]] | None = None,
        clock: Callable[[], float] = time.time,
        lease_s: float = 60.0,
        deadline_s: float = 900.0,
        instance: str | None = None,
    ) -> None:
        for rule in rules:
            check_scope(rule.scope)
        self.rules = list(rules)
        self.store = store
        self.prices = prices
        self.aliases = aliases or {}
        self.clock = clock
        self.lease_s = lease_s
        self.deadline_s = max(deadline_s, lease_s)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pending: set[asyncio.Future[Any]] = set()
        self._unpriced: set[str] = set()
        self._held = 0  # reservations of this instance in flight
        self._keeper: asyncio.Task[None] | None = None
        self._reaped_at = float("-inf")

    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Budget | None:
        if not (settings.budgets or parts.get("principals")) or parts.get("store") is None:
            return None
        return cls(
            list(settings.budgets),
            budget_store(parts["store"]),
            PriceTable.for_settings(settings),
            aliases=dict(settings.routing.aliases),
            lease_s=settings.budget.lease_s,
            deadline_s=settings.retry.deadline_s + max((d.timeout_s for d in settings.deployments), default=600.0),
        )

    # -- what applies, and the worst case -----------------------------------------------------

    def counters(self, exchange: Exchange) -> list[Counter]:
        now = self.clock()
        found: dict[tuple[str, str], Counter] = {}
        for rule in self.rules:
            scope = scope_of(rule.scope, exchange)
            if scope is None:
                continue
            window, expires = window_of(rule.period, now)
            cap = Decimal(rule.usd)
            held = found.get((scope, window))
            if held is None or cap < held.cap:  # two rules on one counter: the lower cap holds
                found[(scope, window)] = Counter(scope, window, rule.period, cap, expires)
        for own in exchange.principal.caps:  # a virtual key's and its team's own budgets
            window, expires = window_of(own.period, now)
            held = found.get((own.scope, window))
            if held is None or own.usd < held.cap:
                found[(own.scope, window)] = Counter(own.scope, window, own.period, Decimal(own.usd), expires)
        return list(found.values())

    def worst_case(self, exchange: Exchange) -> Decimal:
        body = exchange.json if isinstance(exchange.json, dict) else {}
        if exchange.prompt_tokens is None:
            try:
                exchange.prompt_tokens = count_request_prompt_tokens(exchange.path, body)
            except Exception:  # an uncountable prompt: its size in bytes bounds its tokens
                exchange.prompt_tokens = len(exchange.body)
        tier = body.get("service_tier")
        tier = normalise_tier(tier if isinstance(tier, str) else None)
        model = exchange.model or ""
        costs = []
        for candidate in self.aliases.get(model) or [model]:
            cap = max_output_tokens(exchange.path, body, self.prices.max_output_tokens(candidate))
            usage = {"prompt_tokens": exchange.prompt_tokens, "completion_tokens": cap or 0}
            cost = self.prices.cost_usd(candidate, usage, tier=tier)
            if cost is None:
                self._warn_unpriced(candidate)
                continue
            costs.append(cost)
        return reservation(max(costs, default=ZERO))

    def _warn_unpriced(self, model: str | None) -> None:
        """One warning per model without a price, for the first :data:`WARNED_MAX` of them; then
        one more saying the rest go unnamed (callers choose model names: the set stays bounded)."""
        if not model or model in self._unpriced or len(self._unpriced) > WARNED_MAX:
            return
        if len(self._unpriced) == WARNED_MAX:
            self._unpriced.add("")  # the marker: the last warning is given
            log.warning("budget: more than %d models have no price; further ones are not named", WARNED_MAX)
            return
        self._unpriced.add(model)
        shown = model if len(model) <= 100 else model[:100] + "…"
        log.warning("budget: no price for model %r; its calls reserve $0 and are not capped", shown)

    # -- the call ----------------------------------------------------------------------------------

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        route = endpoint_route(exchange.path) if exchange.method == "POST" else None
        counters = self.counters(exchange) if route in BILLED else []
        if not counters:
            return await call_next(exchange)
        amount = self.worst_case(exchange)
        if exchange.principal.caps and not self.priced(exchange):
            return self.refuse_unpriced(exchange)
        now = self.clock()
        held = Hold(uuid.uuid4().hex, self.instance, amount, counters, now + self.lease_s, now + self.deadline_s, now)
        refusal = await self._reserve(held)
        if refusal is not None and await self.reap():  # leases of dead instances ran out: try again
            refusal = await self._reserve(held)
        if refusal is not None:
            return self.refuse(exchange, refusal, amount)
        hold = _Hold(self, exchange, held)
        exchange.notes["budget"] = {"reserved_usd": amount, "counters": [(c.scope, c.window) for c in counters]}
        try:
            reply = await call_next(exchange)
        except BaseException:  # errors and cancellation: nothing was spent that we know of
            await asyncio.shield(self._spawn(hold.release_all()))
            raise
        if reply.stream is None:
            await asyncio.shield(self._spawn(hold.settle()))
            return reply
        reply.stream = _watch(reply.stream, hold.at_end)
        reply.on_close.append(hold.at_end)
        return reply

    async def _reserve(self, hold: Hold) -> Refusal | None:
        """Reserve; if the caller is cancelled meanwhile, the reservation that still lands is undone."""
        reserving = asyncio.ensure_future(self.store.reserve(hold))

        def undo(task: asyncio.Future[Refusal | None]) -> None:
            if not task.cancelled() and task.exception() is None and task.result() is None:
                self._spawn(self.store.settle(hold, ZERO))

        try:
            refusal = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            reserving.add_done_callback(undo)
            raise
        if refusal is None:
            self._opened()
        return refusal

    # -- leases --------------------------------------------------------------------------------------

    async def reap(self) -> int:
        """Release reservations whose lease ran out (their instance died); how many were. At most
        once a second: a key at its cap that keeps calling costs no more than one look a second."""
        now = self.clock()
        if now - self._reaped_at < REAP_EVERY_S:
            return 0
        self._reaped_at = now
        try:
            released = await self.store.reap(now)
        except Exception:
            log.exception("budget: could not release expired reservations")
            return 0
        if released:
            log.warning(
                "budget: released %d reservation(s) whose lease ran out ($%s in all; their instance "
                "stopped without settling them)",
                len(released),
                _usd(sum((r.amount for r in released), ZERO)),
            )
        return len(released)

    def _opened(self) -> None:
        self._held += 1
        keeper = self._keeper
        if keeper is None or keeper.done():
            self._keeper = asyncio.ensure_future(self._keep_leases())

    def _closed(self) -> None:
        self._held = max(0, self._held - 1)
        keeper = self._keeper
        if self._held == 0 and keeper is not None and not keeper.done():
            try:
                here = asyncio.get_running_loop() is keeper.get_loop()
            except RuntimeError:
                here = False
            if here:  # nothing left to renew: no task left pending when the loop closes
                keeper.cancel()

    async def _keep_leases(self) -> None:
        """While this instance holds reservations, renew their leases (a third of a lease apart)
        and release other instances' expired ones."""
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew(self.instance, self.clock(), self.lease_s)
            except Exception:  # the store is down: the leases may run out; calls settle late if so
                log.warning("budget: could not renew reservation leases", exc_info=True)
            await self.reap()

    def priced(self, exchange: Exchange) -> bool:
        """Whether the call's model (for an alias, one of its models) has a price."""
        model = exchange.model or ""
        return any(self.prices.prices(m) is not None for m in self.aliases.get(model) or [model])

    def refuse_unpriced(self, exchange: Exchange) -> Reply:
        model = exchange.model or ""
        shown = model if len(model) <= 100 else model[:100] + "…"
        message = (
            f"Ferryman has no price for the model `{shown}`, so this key's budget cannot cap the call; "
            "it was not sent. The gateway's operator can add the model's price (pricing_file)."
        )
        exchange.error = UNPRICED
        exchange.cost_usd = ZERO
        exchange.notes[FERRYMAN_MADE] = True
        error = {"message": message, "type": "invalid_request_error", "param": "model", "code": UNPRICED}
        return Reply.of_json(400, {"error": error}, {"x-should-retry": "false"})

    def refuse(self, exchange: Exchange, refusal: Refusal, amount: Decimal) -> Reply:
        c = refusal.counter
        message = (
            f"Ferryman budget exceeded for scope '{c.scope}' ({c.period} {c.window}): "
            f"${_usd(refusal.spent)} spent and ${_usd(refusal.reserved)} reserved by calls in flight, "
            f"of a ${_usd(c.cap)} cap; this call could cost up to ${_usd(amount)}."
        )
        exchange.error = CODE
        exchange.cost_usd = ZERO
        exchange.notes["budget_scope"] = c.scope
        error = {"message": message, "type": "insufficient_quota", "param": None, "code": CODE}
        return Reply.of_json(429, {"error": error}, {"x-should-retry": "false"})

    # -- settling in the background -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def flush(self) -> None:
        """Wait for settlements still in flight (streams that just ended)."""
        await asyncio.sleep(0)  # let settlements handed over from other threads start
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        keeper = self._keeper
        if keeper is not None and not self._held and not keeper.done():
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def snapshot(self, scope: str, period: str = "day") -> tuple[Decimal, Decimal]:
        """``(spent, reserved)`` of a counter in the current window (for tests and the admin API)."""
        return await self.store.snapshot(scope, window_of(period, self.clock())[0])


class _Hold:
    """One call's reservation: settled or released exactly once."""

    def __init__(self, budget: Budget, exchange: Exchange, hold: Hold) -> None:
        self.budget = budget
        self.exchange = exchange
        self.hold = hold
        self.amount = hold.amount
        self.loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._done = False

    def _claim(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True

    def _cost(self) -> Decimal:
        finish = self.exchange.notes.get(FINISH_NOTE)
        if callable(finish):  # the account stage's end of stream, if it has not run yet
            finish()
        cost = self.exchange.cost_usd
        return settled(cost) if cost is not None else ZERO

    async def settle(self) -> None:
        if self._claim():
            await self._write(self._cost())

    async def release_all(self) -> None:
        if self._claim():
            await self._write(None)

    async def _write(self, cost: Decimal | None) -> None:
        spent = cost if cost is not None else ZERO
        later = False
        try:
            failed: Exception | None = None
            for _ in range(SETTLE_TRIES_NOW):
                try:
                    await self.budget.store.settle(self.hold, spent)
                    return
                except Exception as error:
                    failed = error
            log.warning(
                "budget: could not settle %s on %s (%s: %s); trying again in the background",
                self.amount,
                self._scopes(),
                type(failed).__name__,
                failed,
            )
            self.budget._spawn(self._write_later(spent))
            later = True
        finally:
            if not later:
                self.budget._closed()

    async def _write_later(self, spent: Decimal) -> None:
        """The settlement, tried until it lands or the call's deadline passes."""
        try:
            for tries in itertools.count():
                await asyncio.sleep(SETTLE_RETRY_S[min(tries, len(SETTLE_RETRY_S) - 1)])
                try:
                    await self.budget.store.settle(self.hold, spent)
                except Exception:
                    if self.budget.clock() > self.hold.deadline:
                        raise
                    continue
                log.warning("budget: settled %s on %s after all", self.amount, self._scopes())
                return
        except Exception:
            log.exception(
                "budget: could not settle %s on %s by the call's deadline; a reservation the database "
                "still holds is released when its lease runs out",
                self.amount,
                self._scopes(),
            )
        finally:
            self.budget._closed()

    def _scopes(self) -> list[str]:
        return [c.scope for c in self.hold.counters]

    def at_end(self, completed: bool = True) -> None:
        """The stream ended or was closed (maybe on another thread): settle on the call's loop."""
        if not self._claim():
            return
        cost = self._cost()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.budget._spawn(self._write(cost))
            return
        try:
            self.loop.call_soon_threadsafe(lambda: self.budget._spawn(self._write(cost)))
        except RuntimeError:  # the loop is gone: nothing can settle it now
            log.error("budget: reservation of %s left held, its event loop closed", self.amount)


def _usd(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


async def _watch(stream: AsyncIterator[bytes], at_end: Callable[[bool], None]) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for chunk in stream:
            yield chunk
        completed = True
    finally:
        at_end(completed)


__all__ = ["CODE", "Budget", "check_scope", "scope_of", "window_of"]
