"""A pipeline is a list of stages around a terminal handler, composed like ASGI middleware.

Each stage has one async method, ``handle(exchange, call_next) -> Reply``: it may act before
the call, after it, or around it (retry, fallback), and a reader sees the whole order in one
list (:func:`ferryman.pipeline.build`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ferryman.exchange import Exchange, Reply

Handler = Callable[[Exchange], Awaitable[Reply]]


class Stage(Protocol):
    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply: ...


def _link(stage: Stage, call_next: Handler) -> Handler:
    async def handler(exchange: Exchange) -> Reply:
        return await stage.handle(exchange, call_next)

    return handler


class Pipeline:
    """``stages`` in order (outermost first) around ``terminal`` (the upstream)."""

    def __init__(self, stages: Sequence[Stage], terminal: Handler) -> None:
        self.stages = list(stages)
        self.terminal = terminal
        handler = terminal
        for stage in reversed(self.stages):
            handler = _link(stage, handler)
        self._entry = handler

    async def __call__(self, exchange: Exchange) -> Reply:
        return await self._entry(exchange)

    def stage(self, kind: type) -> object | None:
        """The first stage of a type (for tests and the admin API)."""
        return next((s for s in self.stages if isinstance(s, kind)), None)
