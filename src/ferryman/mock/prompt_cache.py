"""OpenAI's automatic prompt caching, as the mock reports it in ``cached_tokens``.

OpenAI caches prompts of 1,024 tokens or more by prefix, in steps of 128 tokens, per
organisation, for a few minutes. The mock remembers, per key and model, every message prefix
of the requests it served; a request whose longest seen prefix is long enough reports that
prefix's tokens, rounded down to 128, as cached.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

import orjson

from ferryman.tokens import count_chat_messages

MIN_TOKENS = 1024
STEP = 128
TTL_SECONDS = 300.0
MAX_ENTRIES = 10_000
MAX_PREFIXES = 64  # prefixes remembered per request


class PromptCache:
    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def _remember(self, digest: str, now: float) -> None:
        self._seen[digest] = now
        self._seen.move_to_end(digest)
        while len(self._seen) > MAX_ENTRIES:
            self._seen.popitem(last=False)

    def cached_tokens(self, key: str, model: str, messages: Any, prompt_tokens: int) -> int:
        """Tokens of the longest message prefix seen before (rounded down to 128), else 0."""
        if prompt_tokens < MIN_TOKENS or not isinstance(messages, list):
            return 0
        now = time.monotonic()
        digests = self._prefix_digests(key, model, messages)
        hit = 0
        for length in range(len(digests), 0, -1):
            seen = self._seen.get(digests[length - 1])
            if seen is not None and now - seen < TTL_SECONDS:
                tokens = count_chat_messages(messages[:length], model) - 3  # no reply priming
                hit = (min(tokens, prompt_tokens) // STEP) * STEP
                break
        for digest in digests[-MAX_PREFIXES:]:
            self._remember(digest, now)
        return hit if hit >= MIN_TOKENS else 0

    @staticmethod
    def _prefix_digests(key: str, model: str, messages: list[Any]) -> list[str]:
        running = hashlib.sha256(orjson.dumps([key, model]))
        out = []
        for message in messages:
            running.update(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
            out.append(running.copy().hexdigest())
        return out
