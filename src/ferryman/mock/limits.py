"""Per-key rate limits and dollar quotas, the way OpenAI reports and enforces them.

Each key has two token buckets that refill continuously: requests per minute and tokens per
minute. A request costs one request and its estimated tokens (prompt tokens plus the requested
output cap), which is how OpenAI counts against TPM. A request that does not fit gets a 429
``rate_limit_exceeded`` saying how long until it would; every reply carries the
``x-ratelimit-*`` headers with reset times as Go durations (``1s``, ``6m0s``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ferryman.errors import OpenAIError

DEFAULT_RPM = 30_000
DEFAULT_TPM = 150_000_000


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``: ``12ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


@dataclass
class Bucket:
    capacity: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (inf if it never can)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


class RateLimiter:
    """RPM and TPM buckets per API key. Not thread-safe: used from the server's event loop."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpm = rpm or DEFAULT_RPM
        self.tpm = tpm or DEFAULT_TPM
        self._clock = clock
        self._buckets: dict[str, tuple[Bucket, Bucket]] = {}

    def set_limits(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm or DEFAULT_RPM
        self.tpm = tpm or DEFAULT_TPM
        self._buckets.clear()

    def _for(self, key: str, now: float) -> tuple[Bucket, Bucket]:
        pair = self._buckets.get(key)
        if pair is None:
            pair = (Bucket(self.rpm, self.rpm, now), Bucket(self.tpm, self.tpm, now))
            self._buckets[key] = pair
        for bucket in pair:
            bucket.refill(now)
        return pair

    def acquire(self, key: str, tokens: int, model: str | None) -> dict[str, str]:
        """Charge one request of ``tokens``; return the headers, or raise a 429 carrying them."""
        now = self._clock()
        requests, toks = self._for(key, now)
        wait_r = requests.wait_for(1)
        wait_t = toks.wait_for(tokens)
        if wait_r == 0 and wait_t == 0:
            requests.level -= 1
            toks.level -= tokens
            return self.headers(requests, toks)
        headers = self.headers(requests, toks)
        what = model or "this model"
        if math.isinf(wait_t):
            raise OpenAIError(
                429,
                f"Request too large for {what} on tokens per min (TPM): Limit {self.tpm}, "
                f"Requested {tokens}. The input or output tokens must be reduced in order to "
                "run successfully.",
                "tokens",
                None,
                "rate_limit_exceeded",
                headers,
            )
        wait = max(wait_r, wait_t)
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        if wait_r >= wait_t:
            used = self.rpm - int(requests.level)
            detail = f"requests per min (RPM): Limit {self.rpm}, Used {used}, Requested 1"
            kind = "requests"
        else:
            used = self.tpm - int(toks.level)
            detail = f"tokens per min (TPM): Limit {self.tpm}, Used {used}, Requested {tokens}"
            kind = "tokens"
        raise OpenAIError(
            429,
            f"Rate limit reached for {what} on {detail}. Please try again in "
            f"{go_duration(wait)}. Visit https://platform.openai.com/account/rate-limits to "
            "learn more.",
            kind,
            None,
            "rate_limit_exceeded",
            headers,
        )

    def peek(self, key: str) -> dict[str, str]:
        requests, toks = self._for(key, self._clock())
        return self.headers(requests, toks)

    def headers(self, requests: Bucket, toks: Bucket) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(int(requests.capacity)),
            "x-ratelimit-limit-tokens": str(int(toks.capacity)),
            "x-ratelimit-remaining-requests": str(max(0, int(requests.level))),
            "x-ratelimit-remaining-tokens": str(max(0, int(toks.level))),
            "x-ratelimit-reset-requests": go_duration(requests.until_full()),
            "x-ratelimit-reset-tokens": go_duration(toks.until_full()),
        }


class QuotaLedger:
    """Dollars spent per key, against an optional per-key quota."""

    def __init__(self, quota_usd: float | None = None) -> None:
        self.quota = Decimal(str(quota_usd)) if quota_usd is not None else None
        self.spent: dict[str, Decimal] = {}

    def check(self, key: str) -> None:
        if self.quota is not None and self.spent.get(key, Decimal(0)) >= self.quota:
            raise OpenAIError(
                429,
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            )

    def charge(self, key: str, usd: Decimal | None) -> None:
        if usd:
            self.spent[key] = self.spent.get(key, Decimal(0)) + usd
