"""(being written) The pacing stage."""

from __future__ import annotations

from typing import Any

from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.chain import Handler


class Pacing:
    @classmethod
    def from_settings(cls, settings: Any, **parts: Any) -> Pacing | None:
        return cls()

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        return await call_next(exchange)
