"""The pacing stage: callers wait for capacity instead of getting 429s.

Each (deployment, model) is a lane with a requests bucket (RPM) and a tokens bucket (TPM), see
:mod:`ferryman.pipeline.buckets`. A call costs one request and its exact prompt tokens plus the
output cap it asks for (how OpenAI counts against TPM); both land in ``exchange.prompt_tokens``
and ``exchange.output_cap``.

- **Seeded or learned.** ``DeploymentSettings.rpm`` / ``.tpm`` seed a lane. Without them the
  limits are learned from the replies' ``x-ratelimit-*`` headers: until a lane knows any limit,
  one call at a time goes ahead (a probe) and the rest wait for its headers, so even the first
  burst meets no 429. A lane whose upstream sends no such headers, unseeded, is not paced. The
  probe does not wait for the tokenizer (its prompt counts 0 tokens here), which is built on a
  thread once the probe is back; any call that may be paced is counted exactly.
- **Corrected live.** Every reply's headers correct the lane (capacity = the advertised limit,
  or a lower seed; level = the upstream's remaining count, less the calls this process sent
  after that one and still has in flight; raised only by a count that leaves out every call the
  upstream may not have seen yet). Replies older than the newest seen are ignored.
- **Paused by 429s.** A 429 ``rate_limit_exceeded`` stops the lane for its ``retry-after-ms`` /
  ``retry-after``.
- **Settled.** When the upstream sends no headers but a TPM seed is set, the worst-case estimate
  is settled against the reply's real usage (``exchange.usage``, else the JSON body's).
- **Fair.** Waiters queue first in, first out per lane (an ``asyncio.Lock`` is FIFO); the head of
  the queue sleeps until its cost fits, woken early when the lane changes.
- **Failing open.** If the shared store (Redis) fails, calls go unpaced (with a warning) rather
  than fail; a reply is never lost to bookkeeping.
- **Bounded.** A call that would wait longer than ``pacing.max_wait_s`` gets a 429
  ``rate_limit_exceeded`` at once, made by Ferryman (its message says so; ``x-should-retry:
  false``, so neither the retry stage nor the SDK retries it). So does a call whose tokens
  exceed the lane's TPM outright.

With ``store.redis()`` the lanes live in Redis (one atomic Lua script), so several processes
share one limit; FIFO order then holds within each process. Waits add to ``notes["waited_ms"]``
and ``notes["pacing_wait_ms"]``.

A process keeps at most :data:`MAX_LANES` lanes per event loop (and as many buckets, see
:mod:`ferryman.pipeline.buckets`): the least recently used idle lane goes first, and a lane
with a call queued, paced, probing or in flight is never dropped, so callers naming ever new
models cannot grow memory. A model name longer than :data:`KEY_MODEL_MAX` is keyed by its hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import weakref
from collections import OrderedDict
from typing import Any

import orjson

from ferryman.config import PacingSettings, Settings
from ferryman.exchange import FERRYMAN_MADE, Exchange, Reply
from ferryman.pipeline.buckets import Buckets, Cost, MemoryBuckets, RedisBuckets, Seed, Seen
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.retry import is_quota_error, retry_after_s
from ferryman.tokens import (
    count_request_prompt_tokens,
    encoding_name_for_model,
    encoding_ready,
    endpoint_route,
    max_output_tokens,
    warm,
)

REFUSED_HEADER = "x-ferryman-refused-by"
MAX_LANES = 4096  # lanes per event loop (least recently used idle ones evicted)
KEY_MODEL_MAX = 256  # a longer model name is keyed by its hash (no real model is this long)
_EVICT_SCAN = 8  # oldest lanes looked at for an idle one
log = logging.getLogger("ferryman.pacing")


def lane_key(deployment: str, model: str) -> str:
    """``deployment|model``, the model hashed when it is longer than :data:`KEY_MODEL_MAX`."""
    if len(model) > KEY_MODEL_MAX:
        digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        model = f"{model[:64]}…sha256:{digest}"
    return f"{deployment}|{model}"


def is_paced(exchange: Exchange) -> bool:
    """Inference calls that name a model count against its limits; files, batches, reads do not."""
    if exchange.method != "POST" or not isinstance(exchange.model, str):
        return False
    return endpoint_route(exchange.path) is not None or exchange.path.startswith(("/audio/", "/images/"))


def cost_of(exchange: Exchange, exact: bool = True) -> Cost:
    """One request, plus prompt tokens and the output cap (kept on the exchange). Not ``exact``
    and the tokenizer still loading (:func:`ferryman.tokens.warm`): the prompt counts 0 tokens
    for this call's pacing, without waiting, and is not kept."""
    if exchange.prompt_tokens is None and not exact and not encoding_ready(exchange.model):
        if exchange.output_cap is None:
            exchange.output_cap = max_output_tokens(exchange.path, exchange.json)
        return Cost(1.0, float(exchange.output_cap or 0))
    if exchange.prompt_tokens is None:
        try:
            exchange.prompt_tokens = count_request_prompt_tokens(exchange.path, exchange.json)
        except Exception:  # an estimate must never fail the call; the upstream will judge it
            exchange.prompt_tokens = 0
    if exchange.output_cap is None:
        exchange.output_cap = max_output_tokens(exchange.path, exchange.json)
    return Cost(1.0, float(exchange.prompt_tokens + (exchange.output_cap or 0)))


def usage_tokens(usage: Any) -> float | None:
    """Tokens a reply's ``usage`` says it used (chat, responses and embeddings shapes)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return float(total)
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return float(sum(numbers)) if numbers else None


class _Lane:
    """One process's view of a lane: its queue, its calls in flight, its probe."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.queued = 0  # calls waiting for the lock
        self.changed = asyncio.Event()
        self.seq = 0
        self.in_flight: dict[int, tuple[Cost, Cost]] = {}  # seq → (its cost, ``done`` when it was sent)
        self.done = Cost(0.0, 0.0)  # every call that has come back, summed
        self.last_seen = 0
        self.probing = False
        self.open = False  # unseeded, and the upstream sends no limits: nothing to pace by
        self.learned = False  # a reply's headers have told this process the lane's limits

    @property
    def idle(self) -> bool:
        """Nothing holds, waits for, or has a call out on this lane: it may be forgotten."""
        return not (self.lock.locked() or self.queued or self.in_flight or self.probing)

    def poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def send(self, cost: Cost) -> int:
        self.seq += 1
        self.in_flight[self.seq] = (cost, self.done)
        return self.seq

    def back(self, seq: int) -> tuple[Cost, Cost]:
        """Call ``seq`` came back. Returns the calls the upstream's count in its reply cannot have
        included, and the calls it may not have: those in flight sent after it; and every call
        still in flight plus every call that came back while it was out (connections reorder
        calls, so one sent earlier may have reached the upstream later)."""
        cost, done_at_send = self.in_flight.pop(seq)
        self.done = Cost(self.done.requests + cost.requests, self.done.tokens + cost.tokens)
        later, maybe = [0.0, 0.0], [0.0, 0.0]
        for s, (other, _) in self.in_flight.items():
            maybe[0] += other.requests
            maybe[1] += other.tokens
            if s > seq:
                later[0] += other.requests
                later[1] += other.tokens
        maybe[0] += self.done.requests - cost.requests - done_at_send.requests
        maybe[1] += self.done.tokens - cost.tokens - done_at_send.tokens
        return Cost(*later), Cost(*maybe)

    async def sleep(self, seconds: float) -> None:
        """Up to ``seconds``, or until the lane changes."""
        try:
            async with asyncio.timeout(seconds):
                await self.changed.wait()
        except TimeoutError:
            pass


class Pacing:
    def __init__(
        self, settings: PacingSettings, deployments: list[Any], buckets: Buckets, max_lanes: int = MAX_LANES
    ) -> None:
        self.settings = settings
        self.buckets = buckets
        self.default = deployments[0].name if deployments else "default"
        self.seeds = {d.name: Seed(d.rpm, d.tpm) for d in deployments}
        self.max_lanes = max(1, max_lanes)
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[str, _Lane]] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **parts: Any) -> Pacing | None:
        if not settings.pacing.enabled:
            return None
        store = parts.get("store")
        redis = store.redis() if store is not None else None
        buckets: Buckets = MemoryBuckets()
        if store is not None and redis is not None:
            buckets = RedisBuckets(redis, store.redis_prefix + "pacing:")
        return cls(settings.pacing, list(settings.deployments), buckets)

    def lane(self, key: str) -> _Lane:
        loop = asyncio.get_running_loop()
        lanes = self._lanes.get(loop)
        if lanes is None:
            lanes = self._lanes[loop] = OrderedDict()
        lane = lanes.get(key)
        if lane is None:
            if len(lanes) >= self.max_lanes:
                self._evict(lanes)
            lane = lanes[key] = _Lane()
        else:
            lanes.move_to_end(key)
        return lane

    def _evict(self, lanes: OrderedDict[str, _Lane]) -> None:
        """Forget the least recently used idle lane. A busy one is passed over (moved to the
        young end: it is in use), so the count may exceed the cap by the lanes busy at once."""
        for _ in range(min(_EVICT_SCAN, len(lanes))):
            key, lane = next(iter(lanes.items()))
            if lane.idle:
                del lanes[key]
                return
            lanes.move_to_end(key)

    def lane_count(self) -> int:
        """Lanes held on the running loop."""
        return len(self._lanes.get(asyncio.get_running_loop(), ()))

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        if not is_paced(exchange):
            return await call_next(exchange)
        name = exchange.deployment.name if exchange.deployment is not None else self.default
        key = lane_key(name, exchange.model or "")
        seed = self.seeds.get(name, Seed())
        lane = self.lane(key)
        # A call that finds its lane with no limit learned or seeded, free and unprobed, goes out
        # as the probe whatever it costs: it need not wait for the tokenizer still loading at a
        # process's start. Any call that may be paced is counted exactly.
        probe_to_be = not (seed.tokens or lane.learned or lane.probing or lane.queued or lane.lock.locked())
        cost = cost_of(exchange, exact=not probe_to_be)
        loop = asyncio.get_running_loop()
        started = loop.time()
        refusal, probe = await self._admit(exchange, lane, key, cost, seed, started + self.settings.max_wait_s)
        sent_at = loop.time()
        if sent_at - started > 0.0001:
            waited_ms = (sent_at - started) * 1000
            exchange.notes["waited_ms"] = exchange.notes.get("waited_ms", 0.0) + waited_ms
            exchange.notes["pacing_wait_ms"] = exchange.notes.get("pacing_wait_ms", 0.0) + waited_ms
        if refusal is not None:
            return refusal
        seq = lane.send(cost)
        try:
            reply = await call_next(exchange)
        except BaseException:
            lane.back(seq)
            self._end_probe(lane, probe)
            raise
        pending = lane.back(seq)
        if probe_to_be:
            # The tokenizer, which the calls after this one need, built now on a thread: not from
            # the start, where its fraction of a second of CPU (most of it holding the GIL) would
            # have slowed the probe itself.
            warm(encoding_name_for_model(exchange.model))
        try:
            await self._learn(exchange, lane, key, seed, seq, pending, loop.time() - sent_at, reply, cost, probe)
        except Exception:  # never lose a reply over bookkeeping
            log.warning("pacing could not learn from a reply of %s", key, exc_info=True)
        finally:
            self._end_probe(lane, probe)
        return reply

    async def _admit(
        self, exchange: Exchange, lane: _Lane, key: str, cost: Cost, seed: Seed, deadline: float
    ) -> tuple[Reply | None, bool]:
        """Wait at the lane's queue, then until the cost fits. Returns (a refusal, is a probe)."""
        loop = asyncio.get_running_loop()
        if lane.lock.locked() or lane.queued:
            lane.queued += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await lane.lock.acquire()
            except TimeoutError:
                return self._refusal(exchange, key, None), False
            finally:
                lane.queued -= 1
        else:
            await lane.lock.acquire()  # free and nobody queued: taken at once, no timer needed
        try:
            while True:
                try:
                    wait = await self.buckets.take(key, cost, seed)
                except Exception:  # the shared store is down: let calls through rather than fail them
                    log.warning("pacing store unavailable; %s goes unpaced", key, exc_info=True)
                    return None, False
                if wait is None:  # no limit known yet
                    if lane.open:
                        return None, False
                    if not lane.probing:
                        lane.probing = True
                        return None, True
                    wait = max(0.0, deadline - loop.time())  # until the probe's headers arrive
                    if wait <= 0:
                        return self._refusal(exchange, key, None), False
                elif wait <= 0:
                    return None, False
                elif math.isinf(wait) or loop.time() + wait > deadline:
                    return self._refusal(exchange, key, wait), False
                await lane.sleep(wait)
        finally:
            lane.lock.release()

    @staticmethod
    def _end_probe(lane: _Lane, probe: bool) -> None:
        if probe:
            lane.probing = False
            lane.poke()

    async def _learn(
        self,
        exchange: Exchange,
        lane: _Lane,
        key: str,
        seed: Seed,
        seq: int,
        pending: tuple[Cost, Cost],
        age_s: float,
        reply: Reply,
        cost: Cost,
        probe: bool,
    ) -> None:
        seen = Seen.from_headers(reply.headers)
        if seen is not None:
            lane.learned = True
            if seq > lane.last_seen:
                lane.last_seen = seq
                await self.buckets.observe(key, seen, *pending, age_s, seed)
                lane.poke()
        elif probe and reply.status != 429:
            lane.open = True
        if reply.status == 429 and not is_quota_error(reply):
            advised = retry_after_s(reply.headers)
            if advised:
                await self.buckets.pause(key, advised, seed)
        elif seen is None and seed.tokens and reply.status < 400 and cost.tokens:
            self._settle_later(exchange, reply, key, seed, cost)

    def _settle_later(self, exchange: Exchange, reply: Reply, key: str, seed: Seed, cost: Cost) -> None:
        """No headers to trust: settle the estimate against real usage (streams: when done)."""
        if not reply.is_stream:
            usage = exchange.usage
            if usage is None and reply.body and b'"usage"' in reply.body:
                try:
                    body = orjson.loads(reply.body)
                except orjson.JSONDecodeError:
                    body = None
                usage = body.get("usage") if isinstance(body, dict) else None
            self._spawn(self._settle(key, seed, cost, usage))
            return
        loop = asyncio.get_running_loop()

        def settle() -> None:  # on_close may run on the caller's thread (the sync SDK)
            loop.call_soon_threadsafe(lambda: self._spawn(self._settle(key, seed, cost, exchange.usage)))

        reply.on_close.append(settle)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, key: str, seed: Seed, cost: Cost, usage: Any) -> None:
        used = usage_tokens(usage)
        if used is not None and used != cost.tokens:
            try:
                await self.buckets.adjust(key, cost.tokens - used, seed)
            except Exception:
                log.warning("pacing could not settle a call of %s", key, exc_info=True)

    def _refusal(self, exchange: Exchange, key: str, wait: float | None) -> Reply:
        exchange.notes[FERRYMAN_MADE] = True
        deployment, _, model = key.partition("|")
        where = f"deployment {deployment!r}, model {model!r}"
        headers = {"x-should-retry": "false", REFUSED_HEADER: "pacing"}
        if wait is not None and math.isinf(wait):
            message = (
                f"Ferryman's pacing refused this call: it needs {exchange.prompt_tokens or 0} prompt tokens plus "
                f"{exchange.output_cap or 0} output tokens, more than the tokens-per-minute limit of {where}. "
                "Reduce the input or max tokens. (This 429 was made by Ferryman, not sent by the upstream.)"
            )
        else:
            ahead = "" if wait is None else f" for about {wait:.1f} s"
            message = (
                f"Ferryman's pacing refused this call: {where} has no capacity{ahead}, longer than "
                f"pacing.max_wait_s ({self.settings.max_wait_s:g} s). "
                "(This 429 was made by Ferryman, not sent by the upstream.)"
            )
            if wait is not None:
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                headers["retry-after"] = str(max(1, math.ceil(wait)))
        body = {"error": {"message": message, "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
        return Reply.of_json(429, body, headers)
