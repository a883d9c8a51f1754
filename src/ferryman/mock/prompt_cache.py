"""OpenAI's automatic prompt caching, as the mock reports it in ``cached_tokens``.

OpenAI caches prompts of 1,024 tokens or more by prefix, in steps of 128 tokens, per
organisation, for a few minutes. The mock keeps, per key, the conversation prefixes it has
seen (every message but the last); a request whose prefix was seen within the TTL and is
long enough reports that prefix's tokens, rounded down to 128, as cached.
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


class PromptCache:
    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def _remember(self, digest: str, now: float) -> None:
        self._seen[digest] = now
        self._seen.move_to_end(digest)
        while len(self._seen) > MAX_ENTRIES:
            self._seen.popitem(last=False)

    def cached_tokens(self, key: str, model: str, messages: Any, prompt_tokens: int) -> int:
        if prompt_tokens < MIN_TOKENS or not isinstance(messages, list):
            return 0
        now = time.monotonic()
        full = self._digest(key, model, messages)
        prefix = self._digest(key, model, messages[:-1]) if len(messages) > 1 else None
        hit = 0
        for digest, candidate in ((full, messages), (prefix, messages[:-1])):
            seen = self._seen.get(digest) if digest else None
            if seen is not None and now - seen < TTL_SECONDS:
                tokens = prompt_tokens if candidate is messages else count_chat_messages(candidate, model) - 3
                hit = (min(tokens, prompt_tokens) // STEP) * STEP
                break
        self._remember(full, now)
        return hit if hit >= MIN_TOKENS else 0

    @staticmethod
    def _digest(key: str, model: str, messages: Any) -> str:
        data = orjson.dumps([key, model, messages], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(data).hexdigest()
