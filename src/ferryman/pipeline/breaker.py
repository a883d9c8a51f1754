"""Circuit breakers: one per deployment, so a failing upstream stops getting calls for a while.

States::

    closed ──(``failures`` failures within ``window_s``)──► open
    open ──(``cooldown_s`` passed; the next caller takes the one probe)──► half_open
    half_open ──(the probe succeeds)──► closed
    half_open ──(the probe fails)──► open, for another cooldown

While a probe is in flight, other callers are refused (they route elsewhere). The clock is a
callable returning seconds (``time.monotonic`` by default) so tests can move time by hand.
A breaker's methods take no locks across awaits: each is a short, synchronous step, guarded by
a lock so that several event loops sharing one pipeline see consistent state.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

Clock = Callable[[], float]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Permit(Enum):
    """What a breaker granted: a normal call, the one half-open probe, or a call forced
    through an open breaker because every candidate was open. The outcome of a probe or a
    forced call decides the state: success closes the breaker, failure opens it again."""

    CALL = "call"
    PROBE = "probe"
    FORCED = "forced"


@dataclass
class Breaker:
    failures: int
    window_s: float
    cooldown_s: float
    state: str = CLOSED
    reopen_at: float = 0.0  # when an open breaker lets its probe through
    probing: bool = False
    opened: int = 0  # times it has opened (for telemetry)

    def __post_init__(self) -> None:
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def available(self, now: float) -> bool:
        """Whether :meth:`acquire` would grant a call now (without taking it)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            return self.state == OPEN and now >= self.reopen_at

    def acquire(self, now: float) -> Permit | None:
        """A permit for one call, or None (open and cooling down, or a probe is in flight)."""
        with self._lock:
            if self.state == CLOSED:
                return Permit.CALL
            if self.state == OPEN and now >= self.reopen_at:
                self.state = HALF_OPEN
                self.probing = True
                return Permit.PROBE
            return None

    def force(self, now: float) -> Permit:
        """A call let through although the breaker refuses calls (every candidate did)."""
        with self._lock:
            return Permit.CALL if self.state == CLOSED else Permit.FORCED

    def success(self, now: float, permit: Permit) -> None:
        """The deployment answered (any reply that is not a counted failure)."""
        with self._lock:
            if permit is not Permit.CALL:
                self.state = CLOSED
                self.probing = False
                self._recent.clear()

    def failure(self, now: float, permit: Permit) -> None:
        """A counted failure: 5xx, 429, a transport error or timeout."""
        with self._lock:
            if permit is not Permit.CALL:
                self._open(now)
                return
            if self.state != CLOSED:
                return  # a call that started before the breaker opened: already accounted for
            self._recent.append(now)
            while self._recent and self._recent[0] <= now - self.window_s:
                self._recent.popleft()
            if len(self._recent) >= self.failures:
                self._open(now)

    def release(self, now: float, permit: Permit) -> None:
        """A call ended without a verdict (cancelled): a probe goes back to waiting for the next caller."""
        with self._lock:
            if permit is Permit.PROBE and self.state == HALF_OPEN:
                self.state = OPEN
                self.probing = False

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.probing = False
        self.reopen_at = now + self.cooldown_s
        self.opened += 1
        self._recent.clear()

    def snapshot(self, now: float) -> dict[str, Any]:
        with self._lock:
            recent = sum(1 for t in self._recent if t > now - self.window_s)
            return {
                "state": self.state,
                "recent_failures": recent,
                "reopen_in_s": max(0.0, self.reopen_at - now) if self.state == OPEN else 0.0,
                "probing": self.probing,
                "opened": self.opened,
            }


class Breakers:
    """The breakers of a set of deployments, by name, on one clock."""

    def __init__(
        self, names: list[str], failures: int, window_s: float, cooldown_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.clock = clock
        self.by_name = {name: Breaker(failures, window_s, cooldown_s) for name in names}

    def __getitem__(self, name: str) -> Breaker:
        return self.by_name[name]

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self.by_name.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {name: breaker.snapshot(now) for name, breaker in self.by_name.items()}
