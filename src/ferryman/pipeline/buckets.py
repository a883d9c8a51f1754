"""Token buckets for the pacing stage: requests and tokens per minute, per lane.

A lane is one (deployment, model). Each lane has two buckets, requests and tokens, with the
same rules in both stores:

- a bucket has a capacity ``C`` (unknown: no limit yet) and a level that refills continuously
  at ``C / 60`` per second up to ``C``; so its **burst is ``C``**, a full minute's worth, as
  OpenAI's (and the mock's) own limiter allows, less a small reserve (below);
- ``take(cost)``: unless the lane is paused, when every known bucket holds its share of the cost
  plus the reserve (``1 + 0.1 %`` of ``C``) both are debited and the answer is 0; otherwise
  nothing is debited and the answer is the seconds until it would fit. A cost above a capacity
  can never fit (``math.inf``); with no capacity known at all the answer is None;
- ``observe(seen, later, in_flight, age_s)``: a reply's ``x-ratelimit-*`` headers correct the
  lane. The capacity becomes the advertised limit (or the seed, when one was configured and is
  lower: a seed is a ceiling you choose). The upstream's remaining count (its fraction read
  from the reset time when the two agree), less the calls still in flight, is the upstream's
  view of the level. Plus the refill since the call was sent, and counting only the calls sent
  after this one (``later``), it lowers ours when it is more than ``SLACK`` below it; with no
  refill (the upstream may have read its level just before replying) and counting every call
  in flight (``in_flight``), it raises ours, in a store that is the only writer (memory) and
  tracks the upstream's own limit;
- ``pause(seconds)``: a 429 ``rate_limit_exceeded`` stops the lane for the advised time;
- ``adjust(tokens)``: settle an estimate against real usage (a refund is positive).

``exact=True`` drops the reserve: for limits Ferryman itself sets (a virtual key's RPM and TPM),
where the buckets are the limit rather than a mirror of an upstream's.

The reserve covers what the correction lets through (a level up to ``SLACK`` above the
upstream's, and a few milliseconds of refill): a constant offset in a continuous bucket costs
the burst a little and the sustained rate nothing.

:class:`MemoryBuckets` serves one process; :class:`RedisBuckets` keeps the lanes in Redis and
runs every step as one Lua script (atomic, timed by Redis's clock), so several processes share
one limit.

**Bounded.** :class:`MemoryBuckets` keeps at most ``max_lanes`` lanes (:data:`MAX_LANES`), least
recently used first out (a lane paused by a 429 is passed over while younger ones can go): a
caller naming ever new models cannot grow it. An evicted lane comes back full, with its limits
to learn again (or its seed): the same as a lane idle for a minute, which is what the least
recently used of 4096 lanes nearly always is. Redis keys expire after :data:`KEY_TTL_S`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

SLACK = 1.0  # the headers' remaining counts are whole numbers, rounded down
RESERVE_FRACTION = 0.001  # reserve = SLACK + this share of the capacity (covers ~60 ms of refill)


def reserve(capacity: float) -> float:
    return SLACK + capacity * RESERVE_FRACTION


KEY_TTL_S = 3600  # an idle lane is full again long before this
MAX_LANES = 4096  # lanes one MemoryBuckets keeps (least recently used evicted)
_EVICT_SCAN = 8  # oldest lanes looked at for one that is not paused


@dataclass(frozen=True)
class Cost:
    requests: float = 1.0
    tokens: float = 0.0


@dataclass(frozen=True)
class Seed:
    """Configured limits (``DeploymentSettings.rpm`` / ``.tpm``); None: learn them."""

    requests: float | None = None
    tokens: float | None = None


_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|h|m|s)")
_GO_WHOLE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|h|m|s))+")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str | None) -> float | None:
    """Seconds in a Go duration string (``12ms``, ``1s``, ``6m0s``, ``1h2m3.5s``); None if unreadable."""
    if text is None:
        return None
    return _go_duration(text) if len(text) <= 32 else _go_duration.__wrapped__(text)


@functools.lru_cache(maxsize=1024)  # every reply carries two; most values repeat
def _go_duration(text: str) -> float | None:
    text = text.strip()
    if text == "0":
        return 0.0
    if not _GO_WHOLE.fullmatch(text):
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(text))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


_HEADER_NAMES = tuple(
    (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
)


@dataclass(frozen=True)
class Seen:
    """What one reply's ``x-ratelimit-*`` headers say."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Seen | None:
        if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
            return None
        values: list[float | None] = []
        for limit_name, remaining_name, reset_name in _HEADER_NAMES:
            limit = _number(headers.get(limit_name))
            remaining = _number(headers.get(remaining_name))
            reset = go_duration(headers.get(reset_name))
            values += [limit, _refined(limit, remaining, reset), reset]
        seen = cls(*values)
        return seen if seen.limit_requests or seen.limit_tokens else None


def _refined(limit: float | None, remaining: float | None, reset: float | None) -> float | None:
    """The remaining count with the fraction the whole number drops, read from the reset time
    (a bucket refilling ``limit / 60`` per second is full after ``reset``), when the two agree."""
    if not limit or remaining is None or reset is None:
        return remaining
    precise = limit - reset * limit / 60.0
    return precise if remaining <= precise < remaining + 1 else remaining


class Buckets(Protocol):
    async def take(self, key: str, cost: Cost, seed: Seed) -> float | None: ...
    async def observe(self, key: str, seen: Seen, later: Cost, in_flight: Cost, age_s: float, seed: Seed) -> None: ...
    async def pause(self, key: str, seconds: float, seed: Seed) -> None: ...
    async def adjust(self, key: str, tokens: float, seed: Seed) -> None: ...


# -- in memory ------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    capacity: float | None = None
    level: float = 0.0

    def refill(self, seconds: float) -> None:
        if self.capacity is not None:
            self.level = min(self.capacity, self.level + seconds * self.capacity / 60.0)

    def wait_for(self, amount: float, exact: bool = False) -> float:
        if self.capacity is None:
            return 0.0
        need = amount if exact else min(self.capacity, amount + reserve(self.capacity))
        return 0.0 if self.level >= need else (need - self.level) * 60.0 / self.capacity

    def observe(
        self,
        limit: float | None,
        remaining: float | None,
        later: float,
        in_flight: float,
        age_s: float,
        seed: float | None,
        may_raise: bool,
    ) -> None:
        if not limit:
            return
        capacity = min(seed, limit) if seed else limit
        if remaining is None:
            low = high = None
        else:
            # The upstream read its level somewhere between sending and replying: the refill since
            # is at most ``age_s`` worth (used to lower ours) and at least none (used to raise it).
            high = min(capacity, remaining + age_s * capacity / 60.0 - later)  # it counted every earlier call
            low = min(capacity, remaining - in_flight)  # it counted none in flight
        if self.capacity is None:
            self.capacity = capacity
            self.level = capacity if low is None else low
            return
        self.capacity = capacity
        self.level = min(self.level, capacity)
        if high is None or low is None:
            return
        if high < self.level - SLACK:
            self.level = high
        elif may_raise and capacity == limit and low > self.level:
            self.level = low


@dataclass
class _Lane:
    stamp: float
    requests: _Bucket = field(default_factory=_Bucket)
    tokens: _Bucket = field(default_factory=_Bucket)
    paused_until: float = 0.0


class MemoryBuckets:
    """The lanes of one process."""

    exclusive = True

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, exact: bool = False, max_lanes: int = MAX_LANES
    ) -> None:
        self.clock = clock
        self.exact = exact  # no reserve: the buckets are the limit itself, not an upstream's mirror
        self.max_lanes = max(1, max_lanes)
        self.lanes: OrderedDict[str, _Lane] = OrderedDict()  # least recently used first

    def _lane(self, key: str, seed: Seed) -> tuple[_Lane, float]:
        now = self.clock()
        lanes = self.lanes
        lane = lanes.get(key)
        if lane is None:
            if len(lanes) >= self.max_lanes:
                self._evict(now)
            lane = lanes[key] = _Lane(now)
        else:
            lanes.move_to_end(key)
        if lane.requests.capacity is None and seed.requests:
            lane.requests = _Bucket(seed.requests, seed.requests)
        if lane.tokens.capacity is None and seed.tokens:
            lane.tokens = _Bucket(seed.tokens, seed.tokens)
        elapsed = max(0.0, now - lane.stamp)
        lane.requests.refill(elapsed)
        lane.tokens.refill(elapsed)
        lane.stamp = now
        return lane, now

    def _evict(self, now: float) -> None:
        """Drop the least recently used lane, passing over a few paused ones (a 429 told us to
        wait; forgetting it would send the next call straight into another)."""
        lanes = self.lanes
        for _ in range(min(_EVICT_SCAN, len(lanes))):
            key, lane = next(iter(lanes.items()))
            if lane.paused_until <= now:
                del lanes[key]
                return
            lanes.move_to_end(key)
        while lanes and len(lanes) >= self.max_lanes:  # all paused: the cap holds anyway
            lanes.popitem(last=False)

    async def take(self, key: str, cost: Cost, seed: Seed) -> float | None:
        lane, now = self._lane(key, seed)
        paused = max(0.0, lane.paused_until - now)
        if lane.requests.capacity is None and lane.tokens.capacity is None:
            return paused or None
        for bucket, amount in ((lane.requests, cost.requests), (lane.tokens, cost.tokens)):
            if bucket.capacity is not None and amount > bucket.capacity:
                return math.inf
        wait = max(
            paused, lane.requests.wait_for(cost.requests, self.exact), lane.tokens.wait_for(cost.tokens, self.exact)
        )
        if wait <= 0:
            lane.requests.level -= cost.requests if lane.requests.capacity is not None else 0.0
            lane.tokens.level -= cost.tokens if lane.tokens.capacity is not None else 0.0
        return wait

    async def observe(self, key: str, seen: Seen, later: Cost, in_flight: Cost, age_s: float, seed: Seed) -> None:
        lane, _ = self._lane(key, seed)
        for bucket, limit, remaining, kind in (
            (lane.requests, seen.limit_requests, seen.remaining_requests, "requests"),
            (lane.tokens, seen.limit_tokens, seen.remaining_tokens, "tokens"),
        ):
            bucket.observe(
                limit, remaining, getattr(later, kind), getattr(in_flight, kind), age_s, getattr(seed, kind),
                self.exclusive,
            )  # fmt: skip

    async def pause(self, key: str, seconds: float, seed: Seed) -> None:
        lane, now = self._lane(key, seed)
        lane.paused_until = max(lane.paused_until, now + seconds)

    async def adjust(self, key: str, tokens: float, seed: Seed) -> None:
        lane, _ = self._lane(key, seed)
        if lane.tokens.capacity is not None:
            lane.tokens.level = min(lane.tokens.capacity, lane.tokens.level + tokens)


# -- in Redis -------------------------------------------------------------------------------------

# One script for every step: read the lane, refill it by Redis's clock, act, write it back.
# Fields: rc/rl requests capacity/level, tc/tl tokens capacity/level, ts stamp, pz paused until.
# ARGV: op, seed_requests, seed_tokens (0: none), then the op's own arguments.
LUA = """
local key, op = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', key, 'rc', 'rl', 'tc', 'tl', 'ts', 'pz')
local rc, rl, tc, tl = tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
local ts, pz = tonumber(h[5]) or now, tonumber(h[6]) or 0
local seed_r, seed_t = tonumber(ARGV[2]), tonumber(ARGV[3])
if not rc and seed_r > 0 then rc, rl = seed_r, seed_r end
if not tc and seed_t > 0 then tc, tl = seed_t, seed_t end
local dt = math.max(0, now - ts)
if rc then rl = math.min(rc, rl + dt * rc / 60) end
if tc then tl = math.min(tc, tl + dt * tc / 60) end

local function observe(c, l, limit, remaining, pending, age, seed, slack)
  if limit <= 0 then return c, l end
  local cap = limit
  if seed > 0 and seed < limit then cap = seed end
  local est = nil
  if remaining >= 0 then est = math.min(cap, remaining - pending + age * cap / 60) end
  if not c then
    if est then return cap, est end
    return cap, cap
  end
  l = math.min(l, cap)
  -- several processes write here: lower only (a raise could count their calls in flight twice)
  if est and est < l - slack then l = est end
  return cap, l
end

local result = '0'
if op == 'take' then
  local cr, ct, slack, fraction = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local wait = 0
  if pz > now then wait = pz - now end
  if not rc and not tc then
    if wait > 0 then result = tostring(wait) else result = 'none' end
  elseif (rc and cr > rc) or (tc and ct > tc) then
    result = 'inf'
  else
    if rc then
      local need = math.min(rc, cr + slack + rc * fraction)
      if rl < need then wait = math.max(wait, (need - rl) * 60 / rc) end
    end
    if tc then
      local need = math.min(tc, ct + slack + tc * fraction)
      if tl < need then wait = math.max(wait, (need - tl) * 60 / tc) end
    end
    if wait <= 0 then
      if rc then rl = rl - cr end
      if tc then tl = tl - ct end
    end
    result = tostring(wait)
  end
elseif op == 'observe' then
  local age, slack = tonumber(ARGV[10]), tonumber(ARGV[11])
  rc, rl = observe(rc, rl, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8]), age, seed_r, slack)
  tc, tl = observe(tc, tl, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[9]), age, seed_t, slack)
elseif op == 'pause' then
  pz = math.max(pz, now + tonumber(ARGV[4]))
elseif op == 'adjust' then
  if tc then tl = math.min(tc, tl + tonumber(ARGV[4])) end
end

local fields = {'ts', tostring(now), 'pz', tostring(pz)}
if rc then
  table.insert(fields, 'rc'); table.insert(fields, tostring(rc))
  table.insert(fields, 'rl'); table.insert(fields, tostring(rl))
end
if tc then
  table.insert(fields, 'tc'); table.insert(fields, tostring(tc))
  table.insert(fields, 'tl'); table.insert(fields, tostring(tl))
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, math.max(tonumber(ARGV[#ARGV]), math.ceil((pz - now) * 1000)))
return result
"""


def _opt(value: float | None) -> float:
    return -1.0 if value is None else value


class RedisBuckets:
    """Lanes shared by every process on the same Redis (and the same ``prefix``)."""

    exclusive = False

    def __init__(self, redis: Any, prefix: str = "ferryman:pacing:", exact: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.exact = exact
        self._script = redis.register_script(LUA)

    async def _run(self, key: str, op: str, seed: Seed, *args: float) -> str:
        argv = [op, seed.requests or 0, seed.tokens or 0, *args, KEY_TTL_S * 1000]
        result = await self._script(keys=[self.prefix + key], args=argv)
        return result.decode() if isinstance(result, bytes) else str(result)

    async def take(self, key: str, cost: Cost, seed: Seed) -> float | None:
        slack, fraction = (0.0, 0.0) if self.exact else (SLACK, RESERVE_FRACTION)
        result = await self._run(key, "take", seed, cost.requests, cost.tokens, slack, fraction)
        if result == "none":
            return None
        return math.inf if result == "inf" else float(result)

    async def observe(self, key: str, seen: Seen, later: Cost, in_flight: Cost, age_s: float, seed: Seed) -> None:
        await self._run(
            key, "observe", seed,
            _opt(seen.limit_requests), _opt(seen.remaining_requests),
            _opt(seen.limit_tokens), _opt(seen.remaining_tokens),
            later.requests, later.tokens, age_s, SLACK,
        )  # fmt: skip

    async def pause(self, key: str, seconds: float, seed: Seed) -> None:
        await self._run(key, "pause", seed, seconds)

    async def adjust(self, key: str, tokens: float, seed: Seed) -> None:
        await self._run(key, "adjust", seed, tokens)
